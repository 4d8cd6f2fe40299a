"""Each rung of the fallback ladder, unit-tested against a fake backend (no HTTP, no litellm calls)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from flock_llm.engines import EvalResult
from flock_llm.engines._base import Output
from flock_llm.engines._calls.record import Usage
from flock_llm.engines._ladder.ladder import Answer, FallbackLadder, LadderItem, Repair
from flock_llm.errors import ModelCallError


class Label(BaseModel):
    label: str


class Summary(BaseModel):
    count: int


Script = Callable[[Sequence[LadderItem], bool, Repair | None, int], Any]


@dataclass
class FakeBackend:
    """Answers with `script(items, per_item, repair, reduce_total)` (an Answer, content, or an exception to
    raise); `fits` says whether a prompt of that many items fits the context."""

    script: Script
    max_items: int = 1_000
    asked: list[tuple[tuple[str, ...], bool, bool, int]] = field(default_factory=list)

    def fits(self, items: Sequence[LadderItem], *, per_item: bool) -> bool:
        return len(items) <= self.max_items

    async def ask(
        self, items: Sequence[LadderItem], *, per_item: bool, repair: Repair | None = None, reduce_total: int = 0
    ) -> Answer:
        self.asked.append((tuple(i.id for i in items), per_item, repair is not None, reduce_total))
        answer = self.script(items, per_item, repair, reduce_total)
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, Answer) else Answer(answer)


def items(n: int) -> list[LadderItem]:
    return [LadderItem(f"i{k}", "{}", (f"a{k}",)) for k in range(1, n + 1)]


def labels(ids: Sequence[str], *, skip: Sequence[str] = ()) -> dict[str, Any]:
    return {"results": [{"item_id": i, "output": {"label": "ok"}} for i in ids if i not in skip]}


def ladder(backend: FakeBackend, output: type[BaseModel], fallback: Any = None, **options: Any) -> FallbackLadder:
    return FallbackLadder(backend, output, Usage(), fallback, **options)


async def test_valid_answers_are_salvaged_and_only_the_rest_is_repaired() -> None:
    backend = FakeBackend(
        lambda asked, per_item, repair, _: labels([i.id for i in asked], skip=() if repair else ["i2"])
    )
    result = await ladder(backend, Label).per_item(items(3))
    assert len(result.outputs) == 3 and not result.failures
    assert backend.asked == [(("i1", "i2", "i3"), True, False, 0), (("i2",), True, True, 0)]


async def test_what_still_fails_after_the_repair_is_split_in_halves() -> None:
    def script(asked: Sequence[LadderItem], per_item: bool, repair: Repair | None, _: int) -> Any:
        return labels([i.id for i in asked]) if len(asked) <= 2 and not repair else {"results": []}

    backend = FakeBackend(script)
    result = await ladder(backend, Label).per_item(items(4))
    assert sorted(o.derived_from for o in result.outputs) == [("a1",), ("a2",), ("a3",), ("a4",)]
    assert [len(a[0]) for a in backend.asked] == [4, 4, 2, 2]  # ask, repair, two halves


async def test_a_prompt_over_the_context_is_split_before_any_call() -> None:
    backend = FakeBackend(lambda asked, *_: labels([i.id for i in asked]), max_items=2)
    run = ladder(backend, Label)
    result = await run.per_item(items(5))
    assert len(result.outputs) == 5
    assert all(len(ids) <= 2 for ids, *_ in backend.asked) and run.usage.splits >= 2
    assert len(backend.asked) == 3  # 2 + 1 + 2: no call was made for a prompt that did not fit


async def test_a_single_item_that_never_validates_goes_to_the_per_item_fallback() -> None:
    fallen: list[str] = []

    async def fallback(item: LadderItem) -> EvalResult:
        fallen.append(item.id)
        return EvalResult(outputs=(Output(Label(label="fallback"), item.artifact_ids),), usage={"llm_calls": 1})

    backend = FakeBackend(lambda *_: {"results": [{"item_id": "i1", "output": {"wrong": 1}}]})
    run = ladder(backend, Label, fallback)
    result = await run.per_item(items(1))
    assert fallen == ["i1"] and [o.obj for o in result.outputs] == [Label(label="fallback")]
    assert run.usage.llm_calls == 1 and run.usage.fallbacks == 1  # the fallback's call is counted


async def test_without_a_fallback_the_item_becomes_a_failure_naming_its_artifact() -> None:
    backend = FakeBackend(lambda *_: {"results": []})
    result = await ladder(backend, Label).per_item(items(1))
    (failure,) = result.failures
    assert failure.artifact_ids == ("a1",) and "a1" in failure.error and "i1" not in failure.error.replace("a1", "")


async def test_a_fatal_error_stops_the_ladder_and_fails_everything_at_once() -> None:
    backend = FakeBackend(lambda *_: ModelCallError("refused", status_code=401))
    result = await ladder(backend, Label).per_item(items(6))
    assert len(backend.asked) == 1
    assert sorted(a for f in result.failures for a in f.artifact_ids) == [f"a{k}" for k in range(1, 7)]


async def test_a_complete_answer_marked_truncated_is_kept() -> None:
    backend = FakeBackend(lambda asked, *_: Answer(labels([i.id for i in asked]), truncated=True))
    result = await ladder(backend, Label).per_item(items(4))
    assert len(result.outputs) == 4 and len(backend.asked) == 1


async def test_answers_without_usable_json_stop_the_ladder_early() -> None:
    backend = FakeBackend(lambda *_: "I cannot do that.")
    result = await ladder(backend, Label).per_item(items(16))
    assert len(backend.asked) <= 8
    assert {f.stage for f in result.failures} == {"unusable_answers"}
    assert sorted(a for f in result.failures for a in f.artifact_ids) == sorted(f"a{k}" for k in range(1, 17))


async def test_the_call_budget_caps_a_batch() -> None:
    backend = FakeBackend(lambda asked, *_: {"results": [{"item_id": i.id, "output": {"no": 1}} for i in asked]})
    result = await ladder(backend, Label, max_calls_per_item=0.5).per_item(items(8))
    assert len(backend.asked) <= 2 + 4
    assert "call_budget" in {f.stage for f in result.failures}
    assert sorted(a for f in result.failures for a in f.artifact_ids) == sorted(f"a{k}" for k in range(1, 9))


async def test_report_mode_reduces_partial_reports_into_one() -> None:
    def script(asked: Sequence[LadderItem], per_item: bool, repair: Repair | None, reduce_total: int) -> Any:
        if reduce_total:
            return {"count": reduce_total}
        return {"count": len(asked)}

    backend = FakeBackend(script, max_items=3)
    result = await ladder(backend, Summary).report(items(6))
    (report,) = result.outputs
    assert report.obj == Summary(count=6) and sorted(report.derived_from or ()) == [f"a{k}" for k in range(1, 7)]
    assert backend.asked[-1][3] == 6  # the reduce call


async def test_transport_failures_that_reach_the_ladder_are_never_asked_per_item() -> None:
    import litellm

    fallen: list[str] = []

    async def fallback(item: LadderItem) -> EvalResult:
        fallen.append(item.id)
        return EvalResult(outputs=(Output(Label(label="fallback"), item.artifact_ids),))

    refused = litellm.RateLimitError(message="tokens per minute", llm_provider="openai", model="m")
    for mode in ("per_item", "report"):
        backend = FakeBackend(lambda *_: refused)
        run = ladder(backend, Label if mode == "per_item" else Summary, fallback)
        result = await (run.per_item(items(6)) if mode == "per_item" else run.report(items(6)))
        assert fallen == [] and len(backend.asked) == 1  # no split, no per-item fallback
        (failure,) = result.failures
        assert failure.stage == "provider_unavailable" and len(failure.artifact_ids) == 6
