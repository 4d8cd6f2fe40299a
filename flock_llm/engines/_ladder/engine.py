"""What LLMEngine and DSPyEngine share: settings, limits, model and output type, and the ladder run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from ..._numbers import number
from ...artifact import Artifact
from ...errors import ConfigurationError
from .._base import Engine, EngineContext, EvalInputs, EvalResult
from .._calls.breaker import BreakerPolicy
from .._calls.engine import ModelEngine
from .._calls.models import is_offline, load_litellm
from .._calls.prices import TokenPrices
from .._calls.record import Usage, cancelled_run
from .._calls.retry import RetryPolicy
from .ladder import (
    DEFAULT_MAX_CALLS_PER_ITEM,
    Backend,
    Fallback,
    FallbackLadder,
    LadderItem,
)
from .planning import AnswerPlan, auto_budget

if TYPE_CHECKING:
    from ...quality import Audit, QualityTarget, ReportFacts, Shuffle
    from ...subscription import BatchSpec

__all__ = ["DEFAULT_MAX_INPUT_TOKENS", "LadderBackend", "LadderEngine", "context_window", "output_limit"]


def ladder_items(inputs: EvalInputs) -> list[LadderItem]:
    """One LadderItem per batch item: ids i1..iN, the payload (or join group) as prompt-safe JSON."""
    from ...prompts.render import encode_item

    items = []
    for n, item in enumerate(inputs.items, 1):
        if len(item) == 1:
            data = encode_item(item[0].payload.model_dump(mode="json"))
        else:
            data = encode_item({a.type_name: a.payload.model_dump(mode="json") for a in item})
        items.append(LadderItem(f"i{n}", data, tuple(a.id for a in item)))
    return items


def per_item_fallback(engine: Engine, ctx: EngineContext, inputs: EvalInputs) -> Fallback:
    """The last rung for a batch: the engine's own `evaluate()` on one item."""
    single_ctx = replace(ctx, is_batch=False, batch_size=1)
    by_id = {a.id: a for a in inputs.artifacts}

    async def fallback(item: LadderItem) -> EvalResult:
        return await engine.evaluate(single_ctx, EvalInputs((tuple(by_id[i] for i in item.artifact_ids),)))

    return fallback


DEFAULT_MAX_INPUT_TOKENS = 16_000
"""Context budget when litellm does not know the model and none is configured."""


class LadderBackend(Backend, Protocol):
    """A Backend that also knows its output type, counts usage, and counts a prompt's tokens."""

    output_type: type[BaseModel]
    usage: Usage

    context: int
    """Tokens per request (prompt and answer)."""
    max_output: int
    """The longest answer the model gives."""

    def count_tokens(self, items: Sequence[LadderItem]) -> int: ...

    def item_tokens(self, item: LadderItem) -> int: ...

    def text_tokens(self, text: str) -> int: ...


def per_item_prompt_tokens(backend: LadderBackend, items: Sequence[LadderItem]) -> int:
    """What the prompts of one call per item would have taken: the fixed part of a one-item prompt per item, plus
    each item's own tokens (counting the item alone, not a whole prompt per item)."""
    if not items:
        return 0
    own = [backend.item_tokens(item) for item in items]
    fixed = max(0, backend.count_tokens([items[0]]) - own[0])
    return fixed * len(items) + sum(own)


def context_window(model: str, configured: int | None) -> int:
    """The prompt token budget: configured, else litellm's figure for the model, else the default."""
    if configured:
        return configured
    if is_offline(model):
        return 128_000
    try:
        window = load_litellm().get_model_info(model).get("max_input_tokens")
    except Exception:  # noqa: BLE001 - unknown model: litellm raises; fall back to the default budget
        window = None
    return int(window) if window else DEFAULT_MAX_INPUT_TOKENS


DEFAULT_MAX_OUTPUT_TOKENS = 4_096
"""The answer limit when litellm does not know the model and none is configured."""


def output_limit(model: str, configured: int | None) -> int:
    """The longest answer to plan for: configured, else litellm's figure for the model, else the default."""
    if configured:
        return configured
    if is_offline(model):
        return 16_384
    try:
        limit = load_litellm().get_model_info(model).get("max_output_tokens")
    except Exception:  # noqa: BLE001 - unknown model: litellm raises; fall back to the default
        limit = None
    return int(limit) if limit else DEFAULT_MAX_OUTPUT_TOKENS


class LadderEngine(ModelEngine):
    """Base of the LLM engines: a batch goes through the fallback ladder; `_backend()` makes the calls."""

    engine_name = "LadderEngine"

    def __init__(
        self,
        model: str | None,
        *,
        per_item: bool,
        output_type: type[BaseModel] | None,
        max_input_tokens: int | None,
        max_output_tokens: int | None = None,
        max_concurrent_requests: int | None = 8,
        requests_per_minute: float | None,
        retry: RetryPolicy | None,
        breaker: BreakerPolicy | None,
        timeout: float,
        max_calls_per_item: float = DEFAULT_MAX_CALLS_PER_ITEM,
        passthrough: dict[str, Any],
        reserved: Sequence[str],
        tokens_per_minute: int | None = None,
        prices: TokenPrices | Mapping[str, float] | None = None,
        budget_usd: float | None = None,
        audit: Audit | None = None,
        quality: QualityTarget | None = None,
        shuffle: Shuffle | bool | None = None,
        report_facts: ReportFacts | bool | None = None,
    ) -> None:
        from ...quality.guard import QualityGuard

        self.quality = QualityGuard.from_arguments(
            {"audit": audit, "quality": quality, "shuffle": shuffle, "report_facts": report_facts}, per_item=per_item
        )
        """Audits, the shuffle guard, the batch-size controller and report facts (`flock_llm.quality`), if any."""
        self._spec_guard: QualityGuard | None = None
        for name in reserved:
            if name in passthrough:
                raise ConfigurationError(f"`{name}` is set by {self.engine_name} itself; remove it from the arguments")
        if max_input_tokens is not None and (not isinstance(max_input_tokens, int) or max_input_tokens < 100):
            raise ConfigurationError(f"`max_input_tokens` must be an integer >= 100, got {max_input_tokens!r}")
        number("timeout", timeout, unit="seconds", fix="the seconds one request may take, e.g. timeout=60")
        for limit in ("max_tokens", "max_completion_tokens"):  # held in the budgets and the minute as it is
            if passthrough.get(limit) is not None:
                number(limit, passthrough[limit], integer=True, fix=f"the longest answer in tokens, e.g. {limit}=1024")
        self.model = model
        self.per_item = per_item
        self.output_type = output_type
        self.max_input_tokens = max_input_tokens
        if max_output_tokens is not None and (
            isinstance(max_output_tokens, bool) or not isinstance(max_output_tokens, int) or max_output_tokens < 16
        ):
            raise ConfigurationError(f"`max_output_tokens` must be an integer >= 16, got {max_output_tokens!r}")
        self.max_output_tokens = max_output_tokens
        if (
            isinstance(max_calls_per_item, bool)
            or not isinstance(max_calls_per_item, (int, float))
            or max_calls_per_item <= 0
        ):
            raise ConfigurationError(f"`max_calls_per_item` must be a positive number, got {max_calls_per_item!r}")
        self.max_calls_per_item = float(max_calls_per_item)
        super().__init__(
            max_concurrent_requests=max_concurrent_requests,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            retry=retry,
            breaker=breaker,
            prices=prices,
            budget_usd=budget_usd,
            timeout=timeout,
            settings=passthrough,
        )
        self.answer_plan: AnswerPlan | None = None
        """Expected answer lengths, learned from this engine's answers (set on first use)."""
        self._token_backends: dict[tuple[str, int, str | None], LadderBackend] = {}

    # -- token planning (BatchSpec(max_tokens=)) ---------------------------------------------------------

    def _token_backend(self, ctx: EngineContext) -> LadderBackend:
        key = (ctx.agent_name, ctx.subscription_index, ctx.model)
        found = self._token_backends.get(key)
        if found is None:
            found = self._token_backends[key] = self._backend(ctx, EvalInputs(()))
        return found

    def plan_for(self, output_type: type[BaseModel], count: Callable[[str], int]) -> AnswerPlan:
        """This engine's answer plan (started from one schema-shaped output of `output_type`, counted by
        `count`)."""
        if self.answer_plan is None:
            from ..offline.answers import placeholder_for

            one = json.dumps({"item_id": "i100", "output": placeholder_for(output_type.model_json_schema())})
            self.answer_plan = AnswerPlan.from_schema_tokens(count(one))
        return self.answer_plan

    def item_tokens(self, ctx: EngineContext, artifact: Artifact) -> int:
        """The tokens `artifact` adds to a call, counted with the model's tokenizer: its prompt tokens, and in
        per-item mode the answer expected for it."""
        from ...prompts.render import encode_item

        item = LadderItem("i1", encode_item(artifact.payload.model_dump(mode="json")), (artifact.id,))
        backend = self._token_backend(ctx)
        share = self.plan_for(backend.output_type, backend.text_tokens).item_share() if self.per_item else 0
        return backend.item_tokens(item) + share

    def estimate_call(self, ctx: EngineContext, inputs: EvalInputs) -> tuple[int, int]:
        """What one call for `inputs` would take, without making it: (prompt tokens, expected answer tokens)."""
        backend = self._token_backend(ctx)
        plan = self.plan_for(backend.output_type, backend.text_tokens)
        items = ladder_items(inputs)
        answer = plan.typical(len(items), per_item=True) if self.per_item else plan.typical(1, per_item=False)
        return backend.count_tokens(items), answer

    def batch_token_budget(self, ctx: EngineContext, size: int | None) -> int | None:
        """For BatchSpec(max_tokens="auto"): the context window minus the fixed prompt and the answer room (see
        `flock_llm.engines._ladder.planning`)."""
        backend = self._token_backend(ctx)
        plan = self.plan_for(backend.output_type, backend.text_tokens)
        room = 16 if self.per_item else plan.expected(1, per_item=False)  # per item: in each item's tokens
        return auto_budget(
            context=backend.context, fixed=backend.count_tokens([]), answer_room=room, max_output=backend.max_output
        )

    def __repr__(self) -> str:  # never shows the passthrough arguments: they may hold keys
        return f"{type(self).__name__}(model={self.model!r}, per_item={self.per_item!r})"

    def resolve_output_type(self, ctx: EngineContext) -> type[BaseModel]:
        output_type = self.output_type or (ctx.publishes[0] if ctx.publishes else None)
        if output_type is None:
            raise ConfigurationError(
                f"agent {ctx.agent_name!r} publishes nothing, so {self.engine_name} does not know what to produce; "
                f"add `.publishes(YourType)` or pass `{self.engine_name}(output_type=...)`"
            )
        return output_type

    def _backend(self, ctx: EngineContext, inputs: EvalInputs) -> LadderBackend:
        raise NotImplementedError

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self._run(ctx, inputs, fallback=False)

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self._run(ctx, inputs, fallback=True)

    def check_batch(self, agent: str, spec: BatchSpec) -> None:
        """`BatchSpec(quality=)` needs per-item answers (a report has no one-item answer to audit) and, when the
        engine has its own `quality=`, the same target; a target's `min_size` must not be above the batch size."""
        own = self.quality.target if self.quality is not None else None
        target = spec.quality or own
        if target is not None and spec.size is not None and target.min_size > spec.size:
            raise ConfigurationError(
                f"agent {agent!r}: the quality target's min_size={target.min_size} is above the batch size "
                f"{spec.size}: the size could never shrink; lower `min_size` or raise BatchSpec(size=)"
            )
        if spec.quality is None:
            return
        if not self.per_item:
            raise ConfigurationError(
                f"agent {agent!r}: BatchSpec(quality=...) steers by audits of per-item answers; a report has no "
                f"one-item answer to compare with: use {self.engine_name}(per_item=True) or drop `quality=`"
            )
        if own is not None and own != spec.quality:
            raise ConfigurationError(
                f"agent {agent!r}: the engine's quality={own!r} and BatchSpec(quality={spec.quality!r}) differ; "
                "set the target in one place (BatchSpec's, per agent; or the engine's, for every agent using it)"
            )

    def effective_batch_size(self, agent: str, subscription_index: int) -> int | None:
        """The size the batch-size controller holds the subscription at (None: no target, or not known yet)."""
        for guard in (self.quality, self._spec_guard):
            size = None if guard is None else guard.size_for(agent, subscription_index)
            if size is not None:
                return size
        return None

    async def _run(self, ctx: EngineContext, inputs: EvalInputs, *, fallback: bool) -> EvalResult:
        guard = self.quality
        if guard is None and ctx.quality is not None:  # BatchSpec(quality=) on an engine without audit=
            from ...quality.guard import QualityGuard

            guard = self._spec_guard = self._spec_guard or QualityGuard(None, None, None)
        if fallback and guard is not None:  # a flushed batch: shuffled, chunked, audited (flock_llm.quality)
            return await guard.run(self, ctx, inputs, self._ladder)
        return await self._ladder(ctx, inputs, fallback=fallback)

    async def _ladder(self, ctx: EngineContext, inputs: EvalInputs, *, fallback: bool = True) -> EvalResult:
        backend = self._backend(ctx, inputs)
        items = ladder_items(inputs)
        backend.usage.items = len(items)
        backend.usage.per_item_prompt_tokens = per_item_prompt_tokens(backend, items)
        last_rung = per_item_fallback(self, ctx, inputs) if fallback else None
        ladder = FallbackLadder(
            backend, backend.output_type, backend.usage, last_rung, max_calls_per_item=self.max_calls_per_item
        )
        try:
            result = await (ladder.per_item(items) if self.per_item else ladder.report(items))
        except asyncio.CancelledError:
            cancelled_run(backend.usage)  # its calls went out all the same (see `cancelled_usage`)
            raise
        return replace(result, failures=tuple(replace(f, error=self.redact(f.error)) for f in result.failures))
