"""The fallback ladder shared by the LLM engines.

For a batch of items it asks a backend for answers and makes sure every
item ends up in an output or a failure:

    call (transient errors retried by the backend)
      -> salvage the valid part of the answer
      -> one repair round with the validation errors
      -> split what still fails (and what does not fit the context window) in halves
      -> per-item fallback (the engine's evaluate()) for single items
      -> failure records for what still fails

Auth, bad-request and other fatal errors stop the ladder at once: no more
calls, every unsolved item fails with that error. So do transport failures
(429, 5xx, timeouts, refused connections) that reach the ladder: the
backend's circuit breaker already waited for the provider, and per-item calls
to a provider that fails would only multiply the requests (stage
"provider_unavailable"). The ladder does no I/O of its own; the backend makes
the calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from ..._vocabulary import FailureStage
from ...errors import BudgetExceededError, ModelCallError, ModelOutputError, ProviderUnavailableError
from .._base import EvalResult, ItemFailure, Output
from .._calls.record import Usage
from .._calls.retry import classify_error, describe_call_error
from .parsing import extract_json, halves, name_artifacts, own_ids, parse_per_item, parse_report

__all__ = ["Answer", "Backend", "FallbackLadder", "Fallback", "LadderItem", "Repair", "Usage"]

log = logging.getLogger("flock_llm.engines")


@dataclass(frozen=True, slots=True)
class LadderItem:
    """One batch item: the engine-assigned id, its prompt data, and the artifacts it stands for."""

    id: str
    data: str
    artifact_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """What one model call returned: text (or already-decoded data) and whether it was cut off."""

    content: Any
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Repair:
    """A second chance: the previous answer and what was wrong with it."""

    previous: Any
    errors: Sequence[str]
    asked: Sequence[LadderItem]
    """The items of the call being repaired."""


class Backend(Protocol):
    """Makes model calls for the ladder; counts usage itself."""

    def fits(self, items: Sequence[LadderItem], *, per_item: bool) -> bool: ...

    async def ask(
        self, items: Sequence[LadderItem], *, per_item: bool, repair: Repair | None = None, reduce_total: int = 0
    ) -> Answer: ...


Fallback = Callable[[LadderItem], Awaitable[EvalResult]]

DEFAULT_MAX_CALLS_PER_ITEM = 2.0
UNUSABLE_ANSWERS_STOP = 3
"""Answers in a row without any usable JSON (one of them for a single item) after which a batch's ladder
stops asking."""


def call_budget(items: int, max_calls_per_item: float) -> int:
    """The most answered calls one batch's ladder makes: 2 + ceil(items x max_calls_per_item) (with the
    default 2.0: at most twice what per-item processing would cost, plus two)."""
    return 2 + math.ceil(items * max_calls_per_item)


class CallBudgetError(ModelCallError):
    """The batch's ladder made as many calls as its budget allows; the rest of its items fail."""


class UnusableAnswersError(ModelOutputError):
    """The model answered several times in a row without the requested format; the ladder stopped."""


def _stage_of(error: BaseException) -> FailureStage:
    if isinstance(error, ProviderUnavailableError) or isinstance(error, ModelCallError) and error.retryable:
        return "provider_unavailable"
    if isinstance(error, CallBudgetError):
        return "call_budget"
    if isinstance(error, BudgetExceededError):
        return "budget"
    if isinstance(error, UnusableAnswersError):
        return "unusable_answers"
    return "engine"


class FallbackLadder:
    """Turns items into outputs or failures, one rung at a time.

    Args:
        backend: makes the calls.
        output_type: the pydantic type to parse answers into.
        usage: counters to update.
        fallback: per-item evaluation for single items that still fail (None: they fail).
    """

    def __init__(
        self,
        backend: Backend,
        output_type: type[BaseModel],
        usage: Usage,
        fallback: Fallback | None = None,
        *,
        max_calls_per_item: float = DEFAULT_MAX_CALLS_PER_ITEM,
    ) -> None:
        self.backend = backend
        self.output_type = output_type
        self.usage = usage
        self.fallback = fallback
        self.outputs: list[Output] = []
        self.failures: list[ItemFailure] = []
        self.fatal: BaseException | None = None
        self.max_calls_per_item = max_calls_per_item
        self.batch_items = 0
        self.call_budget = 0
        self.answered = 0
        """Calls that got an answer (transport failures, which the breaker handles, do not count)."""
        self._unusable = 0
        self._unusable_single = False

    def _budget(self, items: Sequence[LadderItem]) -> None:
        self.batch_items = len(items)
        self.call_budget = call_budget(len(items), self.max_calls_per_item)

    def result(self) -> EvalResult:
        return EvalResult(tuple(self.outputs), tuple(self.failures), self.usage.as_dict())

    # -- per-item mode -------------------------------------------------------------

    async def per_item(self, items: Sequence[LadderItem]) -> EvalResult:
        self._budget(items)
        await self._items(list(items), repair_allowed=True)
        return self.result()

    async def _items(self, group: list[LadderItem], *, repair_allowed: bool) -> None:
        if self._stopped(group):
            return
        if len(group) > 1 and not self.backend.fits(group, per_item=True):
            self.usage.overflow_splits += 1
            await self._split_items(group, repair_allowed=repair_allowed)
            return
        answer = await self._ask(group, per_item=True)
        if answer is None:
            await self._recover(group, per_item=True)
            return
        pending, feedback = self._accept_items(group, answer)  # a complete answer is kept even if "length"
        if self._stopped(pending):
            return
        if pending and answer.truncated and len(pending) > 1:
            await self._split_items(pending, repair_allowed=repair_allowed)  # cut off: smaller asks, not a re-ask
            return
        if pending and repair_allowed and not answer.truncated:
            self.usage.repairs += 1
            repaired = await self._ask(pending, per_item=True, repair=Repair(answer.content, feedback, group))
            if repaired is None:
                await self._recover(pending, per_item=True)
                return
            pending, feedback = self._accept_items(pending, repaired, shown=group)
        if not pending or self._stopped(pending):
            return
        if len(pending) > 1:
            await self._split_items(pending, repair_allowed=False)
        else:
            await self._last_resort(pending[0], feedback, answer.content)

    async def _split_items(self, group: list[LadderItem], *, repair_allowed: bool) -> None:
        self.usage.splits += 1
        for half in halves(group):
            await self._items(half, repair_allowed=repair_allowed)

    def _accept_items(
        self, group: list[LadderItem], answer: Answer, shown: Sequence[LadderItem] | None = None
    ) -> tuple[list[LadderItem], list[str]]:
        """Keep the valid results of `group` in an answer (to a prompt that showed `shown`, default `group`)."""
        results = parse_per_item(
            answer.content,
            [i.id for i in group],
            self.output_type,
            shown=[i.id for i in shown or group],
            aliases={i.id: own_ids(i.data) for i in group},
        )
        self.usage.unknown_ids += len(results.unknown) + len(results.ambiguous)
        self.usage.duplicate_ids += len(results.duplicates)
        self.usage.mapped_ids += results.mapped
        self.usage.missing_ids += len(results.missing)
        self._judge_format(
            usable=bool(results.valid) or results.problem is None, problem=results.problem, asked=len(group)
        )
        for item in group:
            obj = results.valid.get(item.id)
            if obj is not None:
                self.outputs.append(Output(obj, item.artifact_ids))
        return [i for i in group if i.id not in results.valid], results.feedback()

    # -- report mode -------------------------------------------------------------

    async def report(self, items: Sequence[LadderItem]) -> EvalResult:
        self._budget(items)
        parts = await self._report(list(items), repair_allowed=True)
        if len(parts) > 1 and not self.fatal:
            parts = await self._reduce(parts, total=len(items))
        self.outputs.extend(parts)
        return self.result()

    async def _report(self, group: list[LadderItem], *, repair_allowed: bool) -> list[Output]:
        if self._stopped(group):
            return []
        if len(group) > 1 and not self.backend.fits(group, per_item=False):
            self.usage.overflow_splits += 1
            return await self._split_report(group, repair_allowed=repair_allowed)
        answer = await self._ask(group, per_item=False)
        if answer is None:
            return await self._recover(group, per_item=False)
        obj, errors = self._parse_report(answer, len(group))  # a complete answer is kept even if "length"
        if obj is None and answer.truncated and len(group) > 1 and not self._stopped([]):
            return await self._split_report(group, repair_allowed=repair_allowed)
        if obj is None and repair_allowed and not answer.truncated and not self._stopped([]):
            self.usage.repairs += 1
            repaired = await self._ask(group, per_item=False, repair=Repair(answer.content, errors, group))
            if repaired is None:
                return await self._recover(group, per_item=False)
            obj, errors = self._parse_report(repaired, len(group))
        if obj is not None:
            return [Output(obj, tuple(a for item in group for a in item.artifact_ids))]
        if self._stopped(group):
            return []
        if len(group) > 1:
            return await self._split_report(group, repair_allowed=False)
        await self._last_resort(group[0], errors, answer.content)
        return []

    async def _split_report(self, group: list[LadderItem], *, repair_allowed: bool) -> list[Output]:
        self.usage.splits += 1
        parts: list[Output] = []
        for half in halves(group):
            parts += await self._report(half, repair_allowed=repair_allowed)
        return parts

    async def _reduce(self, parts: list[Output], *, total: int) -> list[Output]:
        """Combine partial reports into one; when that fails, the partial reports stand (nothing is lost)."""
        from ...prompts.render import encode_item

        partials = [
            LadderItem(f"part{n}", encode_item(p.obj.model_dump(mode="json")), p.derived_from or ())
            for n, p in enumerate(parts, 1)
        ]
        if not self.backend.fits(partials, per_item=False):
            log.warning("%d partial reports do not fit one prompt; publishing them unreduced", len(parts))
            return parts
        self.usage.reduces += 1
        answer = await self._ask(partials, per_item=False, reduce_total=total)
        if answer is None:
            return parts
        obj, _ = parse_report(answer.content, self.output_type)
        if obj is None:
            log.warning("the reduce answer did not validate; publishing %d partial reports", len(parts))
            return parts
        return [Output(obj, tuple(a for p in parts for a in p.derived_from or ()))]

    def _parse_report(self, answer: Answer, asked: int) -> tuple[BaseModel | None, list[str]]:
        obj, errors = parse_report(answer.content, self.output_type)
        problem = None
        if obj is None and isinstance(answer.content, str):
            try:
                extract_json(answer.content)
            except ValueError as exc:
                problem = str(exc)
        self._judge_format(usable=obj is not None or problem is None, problem=problem, asked=asked)
        return obj, errors

    # -- shared rungs -------------------------------------------------------------

    def _stopped(self, group: list[LadderItem]) -> bool:
        if self.fatal is None:
            return False
        self._fail(group, self.fatal)
        return True

    def _check_budget(self) -> None:
        if self.answered >= self.call_budget and self.fatal is None:
            self.fatal = CallBudgetError(
                f"the ladder's call budget for this batch is spent ({self.answered} answered calls for "
                f"{self.batch_items} items; `max_calls_per_item`={self.max_calls_per_item:g})"
            )

    def _judge_format(self, *, usable: bool, problem: str | None, asked: int) -> None:
        """Stop descending when answer after answer holds no usable JSON at all, down to a single item: the
        model cannot produce the format, and more splits or per-item calls would only multiply the cost."""
        if usable:
            self._unusable = 0
            self._unusable_single = False
            return
        self._unusable += 1
        self._unusable_single = self._unusable_single or asked == 1
        if self._unusable >= UNUSABLE_ANSWERS_STOP and self._unusable_single and self.fatal is None:
            self.fatal = UnusableAnswersError(
                f"the model answered {self._unusable} times in a row without the requested JSON format, a "
                f"single item included; stopped asking (last problem: {problem})"
            )

    async def _ask(
        self, group: Sequence[LadderItem], *, per_item: bool, repair: Repair | None = None, reduce_total: int = 0
    ) -> Answer | None:
        """The answer, or None after recording why the call failed (see `_last_error`)."""
        self._last_error: BaseException | None = None
        self._check_budget()
        if self.fatal is not None:
            self._last_error = self.fatal
            return None
        try:
            answer = await self.backend.ask(group, per_item=per_item, repair=repair, reduce_total=reduce_total)
        except Exception as exc:  # noqa: BLE001 - provider and transport errors of any kind; classified here
            self._last_error = exc
            if classify_error(exc) != "context":  # fatal, or a transport failure: never fanned out per item
                self.fatal = exc
            return None
        self.answered += 1
        if answer.truncated:
            self.usage.truncated_answers += 1
        return answer

    async def _recover(self, group: list[LadderItem], *, per_item: bool) -> list[Output]:
        """After a failed call: split on context overflow; any other error stopped the ladder (see `_ask`)."""
        exc = self._last_error
        assert exc is not None
        if self.fatal is None and len(group) > 1:  # the prompt did not fit the provider's context
            self.usage.overflow_splits += 1
            if per_item:
                await self._split_items(group, repair_allowed=True)
                return []
            return await self._split_report(group, repair_allowed=True)
        self._fail(group, self.fatal or exc)
        return []

    async def _last_resort(self, item: LadderItem, feedback: Sequence[str], raw: Any) -> None:
        self._check_budget()
        if self.fallback is not None and self.fatal is None:
            self.usage.fallbacks += 1
            result = await self.fallback(item)
            self.usage.absorb(result.usage)  # every call counts, whichever rung made it
            self.answered += int(result.usage.get("llm_calls", 0) or 0) - int(result.usage.get("retries", 0) or 0)
            self.outputs.extend(result.outputs)
            self.failures.extend(result.failures)
            self.usage.failed_items += len(result.failures)
            return
        error = self.fatal or ModelOutputError(
            f"the model's answer for artifact {', '.join(item.artifact_ids)} did not validate: "
            + "; ".join(name_artifacts(line, item.id, item.artifact_ids) for line in feedback)[:500],
            raw=raw if isinstance(raw, str) else repr(raw),
            item_ids=[item.id],
        )
        self._fail([item], error)

    def _fail(self, group: Sequence[LadderItem], error: BaseException) -> None:
        if not group:
            return
        self.usage.failed_items += len(group)
        if not isinstance(error, (ModelOutputError, ModelCallError)):
            error = ModelCallError(
                describe_call_error(error),
                retryable=classify_error(error) == "transient",
                status_code=getattr(error, "status_code", None),
            )
        ids = [a for item in group for a in item.artifact_ids]
        self.failures.append(ItemFailure.from_exception(error, ids, stage=_stage_of(error)))
