"""Regressions from the outside attack on issue 24 (findings F1, F2, F4-F16 and three compare findings of
`atkquality`, tests adapted from its branch): side paths of audits, compare, report facts and calibrate that
lost answers, crashed, or stayed silent. Each failed on main 065fc2f. (F3 and the QualityTarget case of F2 are
the controller's: fixed with it.)"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import test_audit_engine
from pydantic import BaseModel
from test_audit_engine import Snippet, SnippetLabel, engine, snippets

from flock_llm import Flock
from flock_llm.engines.llm import LLMEngine
from flock_llm.errors import ConfigurationError
from flock_llm.quality import Audit, QualityTarget, ReportFacts, Tolerance
from flock_llm.quality.facts import check_report, compute_facts, fill_facts, valid_ids
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

degrading = test_audit_engine.degrading  # the degrading provider fixture, shared with the audit tests

# -- audit: a bad field list found only at the first audit --------------------------------------------------------


@pytest.mark.usefixtures("litellm_clients_closed")
async def test_an_unknown_audit_field_never_loses_the_batched_answers(degrading: FakeOpenAIServer) -> None:
    """Audit(fields=("labl",)) (a typo) is not checked when the engine is built; the first audited comparison raises
    ConfigurationError inside the flushed batch, after the batch's answers came back, and the whole batch becomes a
    failure record. Expected: a ConfigurationError when the engine/agent is set up, or the batch's answers published
    (and the audit counted as an error)."""
    try:
        llm = engine(degrading, audit=Audit(rate=1.0, fields=("labl",)))
        flock = Flock(env={})
        spec = BatchSpec(size=6, timeout=timedelta(seconds=30))
        flock.agent("labels").consumes(Snippet, batch=spec).publishes(SnippetLabel).with_engines(llm)
    except ConfigurationError:
        return  # checked up front: fine
    await flock.publish_many(snippets(6))
    await flock.run_until_idle()
    await flock.shutdown()
    published = await flock.store.get_by_type(SnippetLabel)
    assert flock.metrics().count("failure_records") == 0
    assert len(published) == 6


def test_audit_field_list_given_as_a_string_is_rejected() -> None:
    """Audit(fields="label") iterates the characters; expected a ConfigurationError naming the fix."""
    with pytest.raises(ConfigurationError):
        Audit(fields="label")  # type: ignore[arg-type]


# -- numeric settings: NaN / inf / wrong types -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Tolerance(abs_tol=math.nan),  # every number then disagrees (isclose with a NaN tolerance is False)
        lambda: Tolerance(rel_tol=math.inf),  # every number then agrees
        lambda: Tolerance(text_similarity=True),  # a bool taken as 1.0
        lambda: Audit(warmup=math.nan),  # min(1.0, rate*nan) == 1.0: every item audited while warming up
        lambda: Audit(warmup=math.inf),
        lambda: Audit(confidence="0.9"),  # TypeError, not ConfigurationError
        lambda: ReportFacts(rel_tol=math.nan),  # every computed number "contradicted": a re-ask per batch
        lambda: ReportFacts(abs_tol="0.1"),  # TypeError
    ],
    ids=[
        "tolerance-abs-nan",
        "tolerance-rel-inf",
        "tolerance-similarity-bool",
        "audit-warmup-nan",
        "audit-warmup-inf",
        "audit-confidence-str",
        "facts-rel-nan",
        "facts-abs-str",
    ],
)
def test_bad_numeric_settings_get_a_configuration_error(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


# -- report facts ---------------------------------------------------------------------------------------------------


class AtkReview(BaseModel):
    review_id: str
    rating: int
    price: float


class IntAverage(BaseModel):
    review_count: int
    average_rating: int  # a user may well declare an int average


class Totals(BaseModel):
    total_price: float
    average_price: float


class Cited(BaseModel):
    review_ids: list[str]


class NestedIds(BaseModel):
    top: Cited
    best_ids: list[int]


def test_a_fractional_average_for_an_int_field_does_not_crash_the_fill() -> None:
    """average_rating: int over ratings 4 and 5: compute_facts gives 4.5, check_report rejects the model's 4 or 5,
    and fill_facts raises pydantic's ValidationError (int_from_float) inside the engine's run: the report is lost.
    Expected: the fact is not computed for a field that cannot hold it (or rounded), never a crash."""
    items = [AtkReview(review_id="a", rating=4, price=1.0), AtkReview(review_id="b", rating=5, price=2.0)]
    facts = ReportFacts()
    computed = compute_facts(IntAverage, items, facts)
    answer = IntAverage(review_count=2, average_rating=4)
    fixed = fill_facts(answer, computed, valid_ids(items, 2), facts)
    assert isinstance(fixed, IntAverage)


def test_huge_item_numbers_do_not_crash_the_facts() -> None:
    """Two prices of 1e308: statistics.fmean/math.fsum raise OverflowError in compute_facts: the report batch fails."""
    items = [AtkReview(review_id="a", rating=1, price=1e308), AtkReview(review_id="b", rating=1, price=1e308)]
    computed = compute_facts(Totals, items, ReportFacts())
    assert isinstance(computed, dict)


def test_nan_item_numbers_are_not_a_contradiction() -> None:
    """A NaN price makes average/total NaN; an answer that gives NaN (or anything) is 'contradicting' forever:
    each batch is re-asked (a paid call) and then 'filled' with NaN. Expected: a NaN fact is not computed."""
    items = [AtkReview(review_id="a", rating=1, price=math.nan), AtkReview(review_id="b", rating=1, price=2.0)]
    facts = ReportFacts()
    computed = compute_facts(Totals, items, facts)
    answer = Totals(total_price=math.nan, average_price=math.nan)
    assert check_report(answer, computed, valid_ids(items, 2), facts) == []


def test_foreign_ids_in_nested_and_integer_id_lists_are_caught() -> None:
    """Only top-level list[str] fields ending in `ids` are checked: `top.review_ids=["evil"]` and
    `best_ids=[99]` (ids not in the batch) pass the validator."""
    items = [AtkReview(review_id="1", rating=1, price=1.0), AtkReview(review_id="2", rating=1, price=2.0)]
    facts = ReportFacts()
    answer = NestedIds(top=Cited(review_ids=["evil"]), best_ids=[99])
    problems = check_report(answer, {}, valid_ids(items, 2), facts)
    assert len(problems) == 2


def test_a_declared_fact_that_raises_is_a_clear_error_not_a_crash() -> None:
    """A declared fact function that raises (ZeroDivisionError on a batch without positives) propagates out of
    compute_facts, i.e. out of the engine run: the report batch fails with a bare ZeroDivisionError. Expected: a
    ConfigurationError/recorded failure naming the fact (or the fact skipped for this batch)."""

    class Share(BaseModel):
        positive_share_of_high: float

    facts = ReportFacts(declared={"positive_share_of_high": lambda items: 1 / sum(i.rating > 4 for i in items)})
    items = [AtkReview(review_id="a", rating=1, price=1.0)]
    try:
        compute_facts(Share, items, facts)
    except ConfigurationError as exc:
        assert "positive_share_of_high" in str(exc)


# -- calibrate: CLI ------------------------------------------------------------------------------------------------


def _reviews_file(tmp_path: Any, n: int = 12, extra: str = "") -> Any:
    import json

    path = tmp_path / "reviews.jsonl"
    words = ("good", "bad", "plain")
    rows = [
        json.dumps({"id": f"r{k}", "rating": 3, "text": f"review {k} is {words[k % 3]}", "gold": "positive"})
        for k in range(n)
    ]
    path.write_text("\n".join(rows) + "\n" + extra, encoding="utf-8")
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOCK_LLM_MODEL", raising=False)


@pytest.mark.usefixtures("offline")
def test_calibrate_report_onto_its_own_input_is_refused_and_the_input_kept(tmp_path: Any) -> None:
    """`flock-llm calibrate r.jsonl --report r.jsonl` runs the whole calibration, then overwrites the input data
    with the HTML page (exit 0): the user's reviews are gone. Expected: exit 2 before anything is sent."""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path)
    before = path.read_bytes()
    status = main(["calibrate", str(path), "--sizes", "1,4", "--sample", "4", "--report", str(path)])
    assert path.read_bytes() == before
    assert status == 2


@pytest.mark.usefixtures("offline")
def test_calibrate_report_to_an_unwritable_path_is_a_usage_error(tmp_path: Any) -> None:
    """`--report /missing/dir/c.html`: the calibration runs (and is paid for), then write_text raises
    FileNotFoundError out of main (traceback, exit 1). Expected: checked before the run, exit 2 with a message."""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path)
    status = main(
        ["calibrate", str(path), "--sizes", "1,4", "--sample", "4", "--report", str(tmp_path / "no" / "c.html")]
    )
    assert status == 2


@pytest.mark.usefixtures("offline")
def test_calibrate_gold_with_a_bad_json_line_is_not_a_crash(tmp_path: Any) -> None:
    """The reviews reader skips a line that is not JSON, but --gold re-reads the file with json.loads per line:
    JSONDecodeError escapes main (traceback, exit 1). A JSON line that is a list gives AttributeError
    (`row.get` before the isinstance check). Expected: the bad line skipped (or exit 2 naming the line)."""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path, extra="this is not json\n[1, 2]\n")
    status = main(["calibrate", str(path), "--sizes", "1,4", "--sample", "4", "--gold", "gold", "--estimate"])
    assert status in (0, 2)
    status = main(["calibrate", str(path), "--sizes", "1,4", "--sample", "4", "--gold", "gold"])
    assert status in (0, 2)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("timeout", ["-1", "nan", "0"])
def test_calibrate_bad_request_timeout_exits_2(tmp_path: Any, timeout: str) -> None:
    """`--request-timeout -1|nan|0`: LLMEngine raises ConfigurationError outside run()'s try: a traceback and
    exit 1 instead of the documented exit 2 (usage error, nothing sent)."""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path)
    assert main(["calibrate", str(path), "--sizes", "1,4", "--request-timeout", timeout]) == 2


@pytest.mark.usefixtures("offline")
def test_calibrate_gold_field_the_output_lacks_is_a_usage_error(tmp_path: Any, capsys: Any) -> None:
    """`--gold gold:labl` (a typo of the output field): every answer's `labl` is None, so accuracy is reported as
    0.0% with exit 0 — a silent, wrong number. Expected: exit 2 naming the output's fields."""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path)
    assert main(["calibrate", str(path), "--sizes", "1,4", "--sample", "4", "--gold", "gold:labl"]) == 2


# -- calibrate: library -----------------------------------------------------------------------------------------------


def _calibrate_setup(n: int) -> tuple[Any, Any, list[Any]]:
    from flock_llm.artifact import Artifact
    from flock_llm.engines import EngineContext

    ctx = EngineContext(agent_name="labels", description="label each snippet", publishes=(SnippetLabel,), env={})
    artifacts = [Artifact(type_name="Snippet", payload=s) for s in snippets(n)]
    return ctx, artifacts, []


@pytest.mark.parametrize("sizes", [[0], [-3], [1, 0]])
async def test_calibrate_rejects_sizes_below_one(sizes: list[int]) -> None:
    """The library's `calibrate()` does not check `sizes` (only the CLI's parse_sizes does): [0] raises a bare
    ValueError from range(), [-3] measures a row of 0 items. Expected: ConfigurationError."""
    from flock_llm.quality.calibration import calibrate

    ctx, artifacts, _ = _calibrate_setup(4)
    llm = LLMEngine(per_item=True)
    with pytest.raises(ConfigurationError):
        await calibrate(llm, ctx, artifacts, sizes, model="offline")


# -- audit / shuffle in the engine ------------------------------------------------------------------------------------


def labeller(agent_engine: LLMEngine, size: int, name: str = "labels", flock: Flock | None = None) -> Flock:
    flock = flock or Flock(env={})
    spec = BatchSpec(size=size, timeout=timedelta(seconds=30))
    flock.agent(name).consumes(Snippet, batch=spec).publishes(SnippetLabel).with_engines(agent_engine)
    return flock


@pytest.mark.usefixtures("litellm_clients_closed")
async def test_answers_from_the_per_item_fallback_are_not_counted_as_batched_agreement(
    degrading: FakeOpenAIServer,
) -> None:
    """Every multi-item answer is unusable, so the ladder answers each item alone; the audit then compares a
    one-item answer with another one-item answer and records 100% agreement "at size 8" — the controller and the
    report are told batches of 8 are perfect while no batch of 8 was ever answered. Expected: items answered by
    the fallback are not audited as batched answers (or counted under size 1)."""
    original = degrading.answer

    def break_batches(request: dict[str, Any]) -> tuple[str, int]:
        text, items = original(request)
        return ("{not json", items) if items > 1 else (text, items)

    degrading.answer = break_batches  # type: ignore[method-assign]
    flock = labeller(engine(degrading, audit=Audit(rate=1.0)), size=8)
    await flock.publish_many(snippets(8))
    await flock.run_until_idle()
    await flock.shutdown()
    assert len(await flock.store.get_by_type(SnippetLabel)) == 8  # the fallback did answer every item
    agreement = flock.metrics().agreement("labels")
    assert "size=8" not in agreement, agreement.get("size=8")


@pytest.mark.usefixtures("litellm_clients_closed")
async def test_a_one_item_batch_is_not_audited_against_itself(degrading: FakeOpenAIServer) -> None:
    """A flush of a single item (the tail of a run, a timeout) goes through the quality guard; at rate 1.0 its
    item is asked alone a second time and 'agreement' at size 1, position 'only', is counted: a paid call that
    measures nothing and dilutes the agreement figures. Expected: one-item batches are not audited."""
    flock = labeller(engine(degrading, audit=Audit(rate=1.0)), size=10)
    await flock.publish_many(snippets(1))
    await flock.run_until_idle()
    await flock.shutdown()
    assert len(await flock.store.get_by_type(SnippetLabel)) == 1
    assert degrading.requests == 1


# -- compare ------------------------------------------------------------------------------------------------------


class AtkText(BaseModel):
    summary: str


class AtkPlace(BaseModel):
    city: str
    zip: int


class AtkPlaces(BaseModel):
    places: list[AtkPlace]


def test_long_free_text_is_compared_in_bounded_time() -> None:
    """difflib's SequenceMatcher(autojunk=False) is quadratic and runs in the event loop: two different 12,000-char
    texts take ~25 s here (6,000 chars ~7 s), blocking every agent of the process. Generous bound: 5 s for 12k."""
    import random
    import time

    from flock_llm.quality.compare import compare_answers

    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(500)]
    a = " ".join(rng.choice(words) for _ in range(2000))
    b = " ".join(rng.choice(words) for _ in range(2000))
    started = time.perf_counter()
    compare_answers(AtkText(summary=a), AtkText(summary=b))
    assert time.perf_counter() - started < 5.0


def test_a_list_of_models_with_different_numbers_does_not_agree() -> None:
    """`list[Model]` is compared as JSON text by similarity: zip 1 vs 2 (or 10000 vs 20000) 'agrees' (ratio >= 0.8)."""
    from flock_llm.quality.compare import compare_answers

    left = AtkPlaces(places=[AtkPlace(city="Berlin", zip=10115)])
    right = AtkPlaces(places=[AtkPlace(city="Berlin", zip=20115)])
    assert not compare_answers(left, right).agreed


def test_comparing_no_field_at_all_is_not_full_agreement() -> None:
    """`Audit(fields=())` or `ignore=` covering every field: the comparison has no fields and `agreed` is
    all([]) == True: every audit 'agrees' (100% agreement, the controller grows). Expected: ConfigurationError."""
    from flock_llm.quality.compare import compare_answers

    with pytest.raises(ConfigurationError):
        compare_answers(
            SnippetLabel(snippet_id="a", label="positive"), SnippetLabel(snippet_id="b", label="negative"), fields=()
        )
    with pytest.raises(ConfigurationError):
        Audit(fields=())


def test_the_recommendation_says_when_items_failed_instead_of_blaming_the_sample() -> None:
    """A budget that runs out mid-calibrate: size 5 answered 10 of 20 items (10 failed), size 10 none. The reason
    reads "... its lower bound is below 95% (a larger --sample narrows the interval)": it blames the sample, not
    the 10 + 20 failed items. Expected: the reason names the failures (e.g. "10 of 20 items failed")."""
    from flock_llm.quality.calibration import SizeRow, recommend
    from flock_llm.quality.stats import wilson

    rows = [
        SizeRow(1, items=20, agreement=wilson(20, 20)),
        SizeRow(5, items=20, agreement=wilson(10, 10), failed=10),
        SizeRow(10, items=20, failed=20),
    ]
    _, reason = recommend(rows, 0.05)
    assert "fail" in reason


def test_an_audit_on_a_report_engine_is_refused_not_silently_ignored() -> None:
    """Audits are per-item only (a report has no one-item answer), yet LLMEngine(per_item=False, audit=...,
    quality=...) is accepted and then never audits nor steers: the user believes quality is measured."""
    with pytest.raises(ConfigurationError):
        LLMEngine("openai/x", per_item=False, audit=Audit(rate=0.5))
    with pytest.raises(ConfigurationError):
        LLMEngine("openai/x", per_item=False, audit=Audit(rate=0.5), quality=QualityTarget(0.95))


@pytest.mark.usefixtures("offline")
def test_calibrate_says_how_many_rows_it_skipped(tmp_path: Any, capsys: Any) -> None:
    """Ten rows sharing one id (or with a rating of 7): the reader keeps one and calibrate's `_sample` drops the
    skipped rows (`_bad`) without a word: `--sample 10` calibrates on 1 review and recommends from it. Expected: a
    line on stderr saying how many rows were skipped and why (as `flock-llm reviews` does)."""
    import json

    from flock_llm.cli.main import main

    path = tmp_path / "dup.jsonl"
    rows = [json.dumps({"id": "same", "rating": 3, "text": f"review {k} is good"}) for k in range(10)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["calibrate", str(path), "--sizes", "1,5", "--sample", "10", "--estimate"]) == 0
    assert "skip" in capsys.readouterr().err.lower()


@pytest.mark.usefixtures("litellm_clients_closed")
async def test_failing_audit_calls_keep_the_batch_answers_and_are_counted(degrading: FakeOpenAIServer) -> None:
    """Held: every one-item call (the audits) answers garbage; the batch's answers are published, the audits are
    counted as errors, nothing is compared and no failure record is written."""
    original = degrading.answer

    def break_singles(request: dict[str, Any]) -> tuple[str, int]:
        text, items = original(request)
        return ("{not json", items) if items == 1 else (text, items)

    degrading.answer = break_singles  # type: ignore[method-assign]
    flock = labeller(engine(degrading, audit=Audit(rate=1.0, per_call=6)), size=6)  # every item audited
    await flock.publish_many(snippets(6))
    await flock.run_until_idle()
    await flock.shutdown()
    assert len(await flock.store.get_by_type(SnippetLabel)) == 6
    usage = flock.metrics().usage["labels"]
    assert usage["audit_errors"] == 6 and usage.get("audit_compared", 0) == 0
    assert flock.metrics().count("failure_records") == 0


@pytest.mark.usefixtures("offline")
def test_calibrate_model_that_is_not_a_litellm_string_exits_2(tmp_path: Any) -> None:
    """A string without a provider: resolve_model raised ConfigurationError outside run()'s try: a traceback and
    exit 1. Expected: exit 2 with the message. (`--model local` is now served as in `reviews`:
    tests/quality/test_calibrate_cli.py.)"""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path)
    assert main(["calibrate", str(path), "--model", "mistral-large", "--sizes", "1,2", "--sample", "2"]) == 2


@pytest.mark.usefixtures("offline")
def test_calibrate_where_every_batched_call_fails_exits_1(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    """F27: a calibration where nothing could be compared printed a table of dashes and exited 0."""
    from flock_llm.cli.main import main

    path = _reviews_file(tmp_path)
    monkeypatch.setattr("flock_llm.cli.calibrate.calibrate", _all_failed)
    assert main(["calibrate", str(path), "--sizes", "1,4", "--sample", "4"]) == 1
    assert "every batched call failed" in capsys.readouterr().err
    assert main(["calibrate", str(path), "--sizes", "1", "--sample", "4"]) == 0  # nothing batched: nothing failed


async def _all_failed(engine: Any, ctx: Any, artifacts: Any, sizes: Any, **kwargs: Any) -> Any:
    from flock_llm.quality.calibration import Calibration, SizeRow

    n = len(artifacts)
    rows = [SizeRow(1, items=n), *(SizeRow(s, items=n, failed=n) for s in sizes if s > 1)]
    return Calibration(model="m", sample=n, tolerance=0.05, rows=rows, recommended=1, reason="nothing compared")


def test_an_ignored_field_the_output_lacks_is_named_not_silently_compared() -> None:
    """F20 addendum: `ignore=("snipet_id",)` (a typo) left `snippet_id` compared without a word."""
    from flock_llm.quality.compare import compare_answers

    a, b = SnippetLabel(snippet_id="a", label="positive"), SnippetLabel(snippet_id="b", label="positive")
    with pytest.raises(ConfigurationError, match="snipet_id"):
        compare_answers(a, b, ignore=("snipet_id",))
    assert compare_answers(a, b, ignore=("snippet_id",)).agreed
    with pytest.raises(ConfigurationError):
        Audit(ignore="snippet_id")  # type: ignore[arg-type]
