"""Fakes for tests: a clock moved by hand, an engine backed by plain functions, a fake OpenAI server; and a real
small model served on this machine (`local_model()`, the `local` extra)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from .._runtime.timers import ManualClock
from ..engines import Engine, EngineContext, EvalInputs, EvalResult
from .degrade import Degradation, DegradingModel
from .fake_openai import FakeOpenAIServer
from .local_server import LocalModel, local_model

__all__ = [
    "Degradation",
    "DegradingModel",
    "EngineCall",
    "FakeOpenAIServer",
    "FunctionEngine",
    "LocalModel",
    "ManualClock",
    "local_model",
]

_Answer = EvalResult | BaseModel | Sequence[BaseModel] | None
_Fn = Callable[[EngineContext, EvalInputs], _Answer | Awaitable[_Answer]]


@dataclass(frozen=True, slots=True)
class EngineCall:
    """One call a FunctionEngine received."""

    kind: str
    """"item" or "batch"."""
    ctx: EngineContext
    """The context the engine was called with (flush reason, batch size, ...)."""
    inputs: EvalInputs
    """The items it got."""


def _as_result(answer: _Answer) -> EvalResult:
    if isinstance(answer, EvalResult):
        return answer
    if answer is None:
        return EvalResult.empty()
    if isinstance(answer, BaseModel):
        return EvalResult.from_object(answer)
    return EvalResult.from_objects(*answer)


@dataclass
class FunctionEngine(Engine):
    """An engine whose work is done by functions; it records every call it got.

    `item` handles `evaluate()`; `batch` handles `evaluate_batch()` (when
    omitted, the default per-item fan-out over `item` is used). Each may
    return an EvalResult, a model, a list of models or None, sync or async.
    """

    item: _Fn | None = None
    """`(ctx, inputs) -> answer` for one item; None: publish nothing."""
    batch: _Fn | None = None
    """`(ctx, inputs) -> answer` for a flushed batch; None: `item` per item."""
    calls: list[EngineCall] = field(default_factory=list)
    """Every call received, in order."""

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        self.calls.append(EngineCall("item", ctx, inputs))
        if self.item is None:
            return EvalResult.empty()
        return await self._answer(self.item, ctx, inputs)

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        if self.batch is None:
            return await super().evaluate_batch(ctx, inputs)
        self.calls.append(EngineCall("batch", ctx, inputs))
        return await self._answer(self.batch, ctx, inputs)

    @staticmethod
    async def _answer(fn: _Fn, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        answer = fn(ctx, inputs)
        if isinstance(answer, Awaitable):
            answer = await answer
        return _as_result(answer)

    @property
    def batch_calls(self) -> list[EngineCall]:
        """The `evaluate_batch()` calls handled by `batch`."""
        return [c for c in self.calls if c.kind == "batch"]
