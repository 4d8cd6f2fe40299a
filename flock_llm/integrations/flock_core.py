"""flock_llm's batch LLM engine as a flock-core `EngineComponent`.

    from flock_llm.integrations.flock_core import FlockBatchLLMEngine
    agent = (flock.agent("sentiment")
             .consumes(CustomerReview, batch=BatchSpec(size=100, timeout=...))
             .publishes(SentimentTrendReport)
             .with_engines(FlockBatchLLMEngine(model="openai/gpt-4.1-mini")))

A flushed flock-core batch (`ctx.is_batch`) becomes ONE prompt through our
LLMEngine, with its whole fallback ladder (retries, salvage, repair, split,
per-item fallback) and usage accounting. What fails is not lost silently:
the result carries the failed input artifact ids in `state["flock_llm_failed_input_ids"]`,
one line per failure in `logs`, and counts in `metrics`.

Needs flock-core (Python >= 3.12): `pip install 'flock_llm[flock]'`.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from flock.components.agent import EngineComponent
    from flock.registry import type_registry
    from flock.utils.runtime import EvalResult as CoreEvalResult
except ImportError as exc:  # pragma: no cover - exercised only without flock-core
    raise ImportError(
        "flock_llm.integrations.flock_core needs flock-core (Python >= 3.12): pip install 'flock_llm[flock]'"
    ) from exc

from pydantic import BaseModel, Field, PrivateAttr

from ..artifact import Artifact
from ..engines import EngineContext, EvalInputs
from ..engines.llm import LLMEngine

__all__ = ["FlockBatchLLMEngine"]


class FlockBatchLLMEngine(EngineComponent):  # type: ignore[misc]
    """A flock-core engine backed by flock_llm's LLMEngine.

    Args:
        model: litellm model string (default: FLOCK_LLM_MODEL, else flock_llm's offline model).
        per_item: one output per input item (aligned by id) instead of one report per batch.
        **options: any other LLMEngine argument (max_concurrent_requests, retry, api_base, api_key, ...).
    """

    llm_model: str | None = None
    per_item: bool = False
    options: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)
    _engine: LLMEngine | None = PrivateAttr(default=None)

    def __init__(self, model: str | None = None, *, per_item: bool = False, **options: Any) -> None:
        super().__init__(llm_model=model, per_item=per_item, options=options)

    def llm_engine(self) -> LLMEngine:
        if self._engine is None:
            self._engine = LLMEngine(self.llm_model, per_item=self.per_item, **self.options)
        return self._engine

    async def evaluate(self, agent: Any, ctx: Any, inputs: Any, output_group: Any) -> Any:
        is_batch = bool(getattr(ctx, "is_batch", False))
        output_types = tuple(out.spec.model for out in output_group.outputs)
        ours = EvalInputs(tuple((_artifact(a),) for a in inputs.artifacts))
        our_ctx = EngineContext(
            agent_name=agent.name,
            description=getattr(agent, "description", None) or "",
            publishes=output_types,
            is_batch=is_batch,
            flush_reason=None,  # flock-core decided the flush; its reason is not ours to name
            batch_size=len(ours),
            env={k: v for k, v in os.environ.items() if k.startswith("FLOCK_")},
        )
        engine = self.llm_engine()
        try:
            result = await (engine.evaluate_batch if is_batch else engine.evaluate)(our_ctx, ours)
        except Exception as exc:  # noqa: BLE001 - e.g. a bad configuration: report every input instead of losing them
            return _core_result(
                agent,
                inputs,
                [],
                [([str(a.id) for a in inputs.artifacts], type(exc).__name__, engine.redact(str(exc)))],
                {},
            )
        failures = [(list(f.artifact_ids), f.error_type, f.error) for f in result.failures]
        return _core_result(agent, inputs, [o.obj for o in result.outputs], failures, result.usage)


def _artifact(core: Any) -> Artifact:
    model: type[BaseModel] = type_registry.resolve(core.type)
    return Artifact(
        type_name=core.type,
        payload=model(**core.payload),
        id=str(core.id),
        correlation_id=None if core.correlation_id is None else str(core.correlation_id),
    )


def _core_result(
    agent: Any, inputs: Any, objects: list[BaseModel], failures: list[tuple[list[str], str, str]], usage: dict[str, Any]
) -> Any:
    failed_ids = [i for ids, _, _ in failures for i in ids]
    metrics = {
        f"flock_llm_{k}": float(v) for k, v in usage.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    metrics["flock_llm_failed_items"] = float(len(failed_ids))
    state = {**dict(inputs.state), "flock_llm_failed_input_ids": failed_ids}
    result = CoreEvalResult.from_objects(*objects, agent=agent, state=state, metrics=metrics)
    result.logs.extend(f"flock_llm: inputs {', '.join(ids)} failed: {kind}: {error}" for ids, kind, error in failures)
    return result
