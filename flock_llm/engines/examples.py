"""SimpleBatchEngine: the reference batch-aware engine of the guide."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..registry import flock_type
from ._base import Engine, EngineContext, EvalInputs, EvalResult

__all__ = ["BatchItem", "BatchSummary", "SimpleBatchEngine"]


@flock_type(name="BatchItem")
class BatchItem(BaseModel):
    """One value to be summarised."""

    value: int
    """The number to summarise."""


@flock_type(name="BatchSummary")
class BatchSummary(BaseModel):
    """What SimpleBatchEngine publishes: how many items a run saw, and their values."""

    batch_size: int = Field(description="number of items in the run")
    values: list[int] = Field(default_factory=list)
    """The items' values, in arrival order."""


class SimpleBatchEngine(Engine):
    """Publishes one BatchSummary per run: of one item (`evaluate`) or of a whole flush (`evaluate_batch`)."""

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        values = [item.value for item in inputs.all_as(BatchItem)]
        return EvalResult.from_object(BatchSummary(batch_size=len(values), values=values))

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self.evaluate(ctx, inputs)
