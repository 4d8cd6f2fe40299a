"""`flock-llm reviews FILE --estimate`: what a run would send and cost, without calling a model.

The reviews are batched as a run batches them by size (`--batch-size`), each batch's prompt is rendered and
counted with the model's tokenizer exactly as the run renders it, and the answers are expected at the engine's
planned length per review (per-item mode) or per report. Splits, repairs and retries a real run may need are
not predicted: they show as the difference between the estimate and the run. With `--audit RATE`, each batch
adds RATE of a one-item call (the batch's first review asked alone): the expected audit calls and tokens, in
the totals and the cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..artifact import Artifact
from ..engines import EngineContext, EvalInputs, load_litellm, resolve_model
from ..engines.llm import LLMEngine, deferrable
from ..errors import ConfigurationError
from .review_types import Review, ReviewLabel, ReviewTrend
from .reviews import AGENT, describe, review_artifact_id

__all__ = ["Estimate", "estimate_reviews"]


@dataclass
class Estimate:
    model: str
    mode: str
    tier: str = "standard"
    """The tier the cost is priced in (a model that cannot go into batch jobs: "standard")."""
    reviews: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    prices: str = ""
    """Which prices the cost uses (per million tokens), or why there is none."""
    audit_calls: int = 0
    """Of `calls`: the expected one-item audit calls (--audit RATE x batches, rounded)."""
    audit_prompt_tokens: int = 0
    """Of `prompt_tokens`: the audit calls' expected prompt tokens."""
    audit_completion_tokens: int = 0
    """Of `completion_tokens`: the audit calls' expected answer tokens."""

    @property
    def audit_tokens(self) -> int:
        return self.audit_prompt_tokens + self.audit_completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_reviews(
    reviews: Iterable[Review],
    *,
    batch_size: int,
    per_item: bool,
    model: str | None,
    env: dict[str, str],
    tier: str = "standard",
    audit_rate: float | None = None,
) -> Estimate:
    """Count what a run over `reviews` would send (see the module's note) and price it in `tier` (a model that
    cannot go into batch jobs is priced at the standard price, as a run pays it); no model is called. With
    `audit_rate`, the expected audit calls are counted and priced too.

    Raises:
        ConfigurationError: `batch_size` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    engine = LLMEngine(per_item=per_item)
    resolved = resolve_model(None, model, env)
    ctx = EngineContext(
        agent_name=AGENT,
        description=describe(per_item),
        publishes=(ReviewLabel if per_item else ReviewTrend,),
        is_batch=True,
        model=model,
        env=env,
    )
    estimate = Estimate(model=resolved, mode="per-item" if per_item else "report", tier=tier)
    batch: list[Artifact] = []
    alone = replace(ctx, is_batch=False, batch_size=1)
    audit = [0.0, 0.0, 0.0]  # expected calls, prompt and answer tokens (fractions of a call per batch)

    def count() -> None:
        prompt, answer = engine.estimate_call(ctx, EvalInputs.of(*batch))
        estimate.calls += 1
        estimate.prompt_tokens += prompt
        estimate.completion_tokens += answer
        if audit_rate:
            prompt, answer = engine.estimate_call(alone, EvalInputs.of(batch[0]))
            audit[0] += audit_rate
            audit[1] += audit_rate * prompt
            audit[2] += audit_rate * answer
        batch.clear()

    for review in reviews:
        estimate.reviews += 1
        batch.append(Artifact(type_name="Review", payload=review, id=review_artifact_id(review)))
        if len(batch) >= batch_size:
            count()
    if batch:
        count()
    estimate.audit_calls, estimate.audit_prompt_tokens, estimate.audit_completion_tokens = (round(x) for x in audit)
    estimate.calls += estimate.audit_calls
    estimate.prompt_tokens += estimate.audit_prompt_tokens
    estimate.completion_tokens += estimate.audit_completion_tokens
    litellm = load_litellm()
    if tier == "batch" and deferrable(resolved, litellm) is None:
        tier = "standard"  # the run sends it the standard way, at the list price
    estimate.tier = tier
    prices = engine.costs.prices_for(resolved, litellm, tier)
    if prices is None:
        estimate.prices = f"unknown: litellm has no price for {resolved}"
    else:
        estimate.cost_usd = prices.cost(prompt=estimate.prompt_tokens, completion=estimate.completion_tokens)
        estimate.prices = f"{prices.source}: input ${prices.input:g}, output ${prices.output:g} per million tokens"
    return estimate
