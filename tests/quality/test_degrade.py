"""The degrading provider model: errors grow with batch size and past the collapse point, peak mid-batch,
are seeded and repeatable, and can drift mid-run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flock_llm.testing import Degradation, DegradingModel


def prompt(texts: list[str]) -> list[dict[str, Any]]:
    blocks = "".join(f'<item id="i{n}">\n{json.dumps({"text": t})}\n</item>\n' for n, t in enumerate(texts, 1))
    return [
        {"role": "system", "content": "..."},
        {"role": "user", "content": f"{len(texts)} item(s) follow.\n{blocks}"},
    ]


def per_item_answer(n: int) -> dict[str, Any]:
    return {"results": [{"item_id": f"i{k}", "output": {"label": "neutral"}} for k in range(1, n + 1)]}


def truth(data: dict[str, Any]) -> dict[str, Any]:
    return {"label": "positive" if "good" in data.get("text", "") else "negative"}


def run(model: DegradingModel, texts: list[str]) -> list[str]:
    answer = model.apply(per_item_answer(len(texts)), prompt(texts))
    return [r["output"]["label"] for r in answer["results"]]


def test_error_curve_has_a_collapse_point_and_a_middle_bump() -> None:
    curve = Degradation(collapse_at=20, slope=0.001, steep=0.02, middle=1.0)
    assert curve.error(1, 0) == 0.0
    assert curve.error(10, 0) == pytest.approx(0.009)
    assert curve.error(11, 5) == pytest.approx(0.02)  # the middle of the batch: twice the ends
    assert curve.error(30, 0) == pytest.approx(0.029 + 0.2)  # past the collapse point
    assert curve.agreement(5) > curve.agreement(20) > 0.96 > 0.8 > curve.agreement(40)


def test_one_item_answers_are_the_truth_and_batches_go_wrong_as_they_grow() -> None:
    model = DegradingModel(Degradation(collapse_at=10, steep=0.05), truth=truth)
    texts = [f"review {k} is {'good' if k % 2 else 'bad'}" for k in range(60)]
    alone = [run(model, [t])[0] for t in texts]
    assert alone == [truth({"text": t})["label"] for t in texts]
    small = [label for k in range(0, 60, 5) for label in run(model, texts[k : k + 5])]
    large = run(model, texts)
    assert sum(a != b for a, b in zip(small, alone, strict=True)) <= 1
    assert sum(a != b for a, b in zip(large, alone, strict=True)) >= 30
    assert model.answered == 180 and model.wrong >= 30


def test_draws_are_seeded_and_do_not_depend_on_request_order() -> None:
    texts = [f"good thing {k}" for k in range(30)]
    first = run(DegradingModel(Degradation(collapse_at=10), truth=truth, seed=1), texts)
    other = DegradingModel(Degradation(collapse_at=10), truth=truth, seed=1)
    run(other, ["unrelated", "good one"])
    assert run(other, texts) == first
    assert run(DegradingModel(Degradation(collapse_at=10), truth=truth, seed=2), texts) != first


def test_drift_after_a_number_of_items_moves_the_collapse_point() -> None:
    model = DegradingModel(
        Degradation(collapse_at=50), truth=truth, drift_after=25, drifted=Degradation(collapse_at=2, steep=0.2)
    )
    texts = [f"good {k}" for k in range(25)]
    before = run(model, texts)
    after = run(model, [f"good {k}!" for k in range(25)])
    assert before.count("positive") >= 24
    assert after.count("positive") <= 10
    model.drift(collapse_at=100, steep=0.0, slope=0.0)
    assert run(model, texts) == ["positive"] * 25


def test_report_answers_get_wrong_numbers_and_foreign_ids() -> None:
    model = DegradingModel(Degradation(wrong_numbers=1.0, foreign_ids=1.0))
    answer = model.apply({"count": 3, "mentioned_ids": ["i1"], "summary": "x"}, prompt(["a", "b", "c"]))
    assert answer["count"] != 3
    assert answer["mentioned_ids"][-1] not in {"i1", "i2", "i3"}
    assert answer["summary"] == "x"
