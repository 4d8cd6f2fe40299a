"""Field-by-field comparison and agreement statistics, with plain numbers."""

from __future__ import annotations

import enum
from typing import Literal

import pytest
from pydantic import BaseModel

from flock_llm.errors import ConfigurationError
from flock_llm.quality import (
    ALL_FIELDS,
    AgreementTally,
    Tolerance,
    compare_answers,
    field_kinds,
    position_bucket,
    wilson,
)


class Mood(enum.Enum):
    GOOD = "good"
    BAD = "bad"


class Where(BaseModel):
    city: str
    floor: int


class Review(BaseModel):
    label: Literal["positive", "neutral", "negative"]
    mood: Mood
    urgent: bool
    score: float
    stars: int | None
    summary: str
    tags: list[Literal["price", "speed"]]
    where: Where


def review(**changes: object) -> Review:
    base: dict[str, object] = {
        "label": "positive",
        "mood": Mood.GOOD,
        "urgent": False,
        "score": 0.80,
        "stars": 4,
        "summary": "Fast delivery and a fair price.",
        "tags": ["price", "speed"],
        "where": Where(city="Oslo", floor=3),
    }
    return Review.model_validate({**base, **changes})


def test_field_kinds_follow_the_annotations() -> None:
    assert field_kinds(Review) == {
        "label": "exact",
        "mood": "exact",
        "urgent": "exact",
        "score": "number",
        "stars": "number",
        "summary": "text",
        "tags": "exact",
        "where.city": "text",
        "where.floor": "number",
    }


def test_identical_answers_agree_on_every_field() -> None:
    result = compare_answers(review(), review())
    assert result.agreed and result.disagreeing == ()
    assert len(result.fields) == 9


def test_labels_enums_and_booleans_must_match_exactly() -> None:
    assert compare_answers(review(), review(label="neutral")).disagreeing == ("label",)
    assert compare_answers(review(), review(mood=Mood.BAD)).disagreeing == ("mood",)
    assert compare_answers(review(), review(urgent=True)).disagreeing == ("urgent",)


def test_label_lists_compare_as_sets() -> None:
    assert compare_answers(review(), review(tags=["speed", "price"])).agreed
    assert compare_answers(review(), review(tags=["speed"])).disagreeing == ("tags",)


def test_numbers_agree_within_the_tolerance() -> None:
    tol = Tolerance(rel_tol=0.05, abs_tol=0.0)
    assert compare_answers(review(), review(score=0.83), tolerance=tol).agreed  # 3.6% apart
    assert compare_answers(review(), review(score=0.90), tolerance=tol).disagreeing == ("score",)  # 11% apart
    assert compare_answers(review(), review(score=0.90), tolerance=Tolerance(abs_tol=0.1)).agreed
    assert compare_answers(review(), review(stars=None)).disagreeing == ("stars",)
    assert compare_answers(review(stars=None), review(stars=None)).agreed


def test_free_text_agrees_by_similarity() -> None:
    near = compare_answers(review(), review(summary="fast delivery and a fair price"))  # case and dot only
    assert near.agreed
    far = compare_answers(review(), review(summary="Broken on arrival, refund refused."))
    assert far.disagreeing == ("summary",)
    score = next(f.score for f in far.fields if f.field == "summary")
    assert 0.0 < score < 0.8
    strict = Tolerance(text_similarity=1.0)
    assert compare_answers(review(), review(summary="Fast delivery, and a fair price."), tolerance=strict).disagreeing


def test_nested_fields_have_dotted_names() -> None:
    result = compare_answers(review(), review(where=Where(city="Oslo", floor=4)))
    assert result.disagreeing == ("where.floor",)


def test_fields_and_ignore_choose_what_is_compared() -> None:
    other = review(label="negative", summary="nothing alike at all here")
    assert compare_answers(review(), other, fields=["label"]).disagreeing == ("label",)
    assert compare_answers(review(), other, ignore=["label", "summary"]).agreed
    with pytest.raises(ConfigurationError, match="no field"):
        compare_answers(review(), other, fields=["lable"])


def test_answers_of_different_types_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="one type"):
        compare_answers(review(), Where(city="x", floor=1))


@pytest.mark.parametrize("bad", [{"rel_tol": -1}, {"abs_tol": "x"}, {"text_similarity": 1.5}])
def test_tolerance_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Tolerance(**bad)  # type: ignore[arg-type]


def test_wilson_matches_published_values() -> None:
    # 95% Wilson interval of 8 of 10: [0.490, 0.943] (Newcombe 1998, table I style figures)
    interval = wilson(8, 10)
    assert interval.rate == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-3)
    assert interval.high == pytest.approx(0.9433, abs=1e-3)
    perfect = wilson(20, 20)
    assert perfect.high == 1.0 and perfect.low == pytest.approx(0.8389, abs=1e-3)
    assert wilson(0, 0).low == 0.0 and wilson(0, 0).high == 1.0 and wilson(0, 0).rate is None
    for n in (1, 3, 10, 37, 100, 1000):  # the interval holds the point estimate, also at 0% and 100%
        for agreed in (0, n):
            interval = wilson(agreed, n)
            assert interval.low <= interval.rate <= interval.high  # type: ignore[operator]
    assert wilson(0, 10).low == 0.0
    assert wilson(95, 100, confidence=0.9).low < wilson(95, 100).high
    with pytest.raises(ConfigurationError):
        wilson(3, 2)


@pytest.mark.parametrize(
    ("position", "size", "bucket"),
    [(0, 1, "only"), (0, 10, "first"), (9, 10, "last"), (1, 10, "early"), (4, 10, "middle"), (7, 10, "late")],
)
def test_position_buckets(position: int, size: int, bucket: str) -> None:
    assert position_bucket(position, size) == bucket


def test_position_outside_the_batch_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="outside"):
        position_bucket(10, 10)


def test_tally_counts_per_field_size_and_position() -> None:
    tally = AgreementTally()
    same, off = compare_answers(review(), review()), compare_answers(review(), review(label="neutral"))
    tally.add("reviews", same, position=0, batch_size=10)
    tally.add("reviews", off, position=5, batch_size=10)
    tally.add("reviews", same, position=0, batch_size=1)
    assert tally.overall().agreed == 2 and tally.overall().n == 3
    assert tally.overall(batch_size=10).rate == 0.5
    assert tally.overall(field="label").agreed == 2
    assert tally.overall(field="summary").agreed == 3
    by_bucket = tally.by("bucket")
    assert by_bucket["middle"].rate == 0.0 and by_bucket["first"].rate == 1.0 and by_bucket["only"].n == 1
    by_field = tally.by("field")
    assert by_field["label"].rate == pytest.approx(2 / 3) and by_field[ALL_FIELDS].n == 3
    assert tally.by("batch_size")["10"].n == 2
    assert tally.overall(agent="other").n == 0


def test_tally_merges_counts_kept_elsewhere() -> None:
    first, second = AgreementTally(), AgreementTally()
    first.add("a", compare_answers(review(), review()), position=0, batch_size=5)
    second.add("a", compare_answers(review(), review(urgent=True)), position=2, batch_size=5)
    first.merge(second.counts())
    assert first.overall().n == 2 and first.overall().agreed == 1


def test_the_audit_samples_calls_and_one_item_in_each_uniformly() -> None:
    from flock_llm.quality.audit import Audit, audited_positions

    audit = Audit(rate=0.05, seed=3, warmup=4.0)
    calls = [[[f"call{c}-item{k}"] for k in range(25)] for c in range(4000)]
    normal = [audited_positions(audit, call) for call in calls]
    warm = [audited_positions(audit, call, warming=True) for call in calls]
    audited = [p for p in normal if p]
    assert 150 <= len(audited) <= 250 and {len(p) for p in audited} == {1}  # ~5% of calls, one item each
    assert 700 <= sum(map(bool, warm)) <= 900  # warming: rate x warmup of the calls
    positions = [p[0] for p in audited]
    assert min(positions) <= 2 and max(positions) >= 22 and 8 <= sum(positions) / len(positions) <= 16  # uniform
    assert normal == [audited_positions(Audit(rate=0.05, seed=3), call) for call in calls]  # seeded: repeatable
    assert normal != [audited_positions(Audit(rate=0.05, seed=4), call) for call in calls]
    two = Audit(rate=0.5, warmup=4.0)  # warming past one item a call: 2 distinct items in every call
    assert all(len(set(audited_positions(two, call, warming=True))) == 2 for call in calls[:50])
    assert audited_positions(Audit(rate=1.0, per_call=100), calls[0]) == list(range(25))
    with pytest.raises(ConfigurationError, match="warmup"):
        Audit(warmup=0.5)
    with pytest.raises(ConfigurationError, match="per_call"):
        Audit(per_call=0)


def test_the_audit_and_the_shuffle_choose_apart_under_one_seed() -> None:
    from flock_llm.quality.audit import Audit, audited_positions, shuffled_order

    firsts = 0
    for c in range(200):
        keys = [f"c{c}-{k}" for k in range(10)]
        order = shuffled_order(0, keys)
        (chosen,) = audited_positions(Audit(rate=1.0, seed=0), [[k] for k in keys])
        firsts += order[0] == chosen
    assert firsts < 60  # not always the item the shuffle puts first (1 in 10 by chance)


def test_the_public_names_of_flock_llm_quality() -> None:
    import flock_llm.quality

    assert set(flock_llm.quality.__all__) == {
        "ALL_FIELDS", "AgreementKey", "AgreementRow", "AgreementTally", "Audit", "Comparison", "ControllerState",
        "FieldAgreement", "Interval", "QualityTarget", "ReportFacts", "Shuffle", "SizeChange", "Tolerance",
        "compare_answers", "field_kinds", "observe", "position_bucket", "wilson",
    }  # fmt: skip
