"""`flock-llm reviews FILE --estimate`: what a run would send and cost, without calling a model.

The reviews are batched as a run batches them by size (`--batch-size`), each batch's prompt is rendered and
counted with the model's tokenizer exactly as the run renders it, and the answers are expected at the engine's
planned length per review (per-item mode) or per report. Splits, repairs and retries a real run may need are
not predicted: they show as the difference between the estimate and the run. With `--audit RATE`, each batch
adds RATE of a one-item call (the batch's first review asked alone): the expected audit calls and tokens, in
the totals and the cost.

With `--model local[:NAME]` no server is started: the prompts are rendered with the local engine settings and
counted as a local run counts them (litellm's default tokenizer, cl100k_base, for a model it does not know), and
the cost is 0: the model runs on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..artifact import Artifact
from ..engines import EngineContext, EvalInputs, load_litellm, resolve_model
from ..engines.llm import LLMEngine, deferrable
from ..errors import ConfigurationError
from .review_types import Review, ReviewLabel, ReviewTrend
from .reviews import AGENT, describe, review_artifact_id

__all__ = ["Estimate", "estimate_reviews", "print_estimate"]


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
    llm_settings: Mapping[str, Any] | None = None,
    local: str | None = None,
) -> Estimate:
    """Count what a run over `reviews` would send (see the module's note) and price it in `tier` (a model that
    cannot go into batch jobs is priced at the standard price, as a run pays it); no model is called. With
    `audit_rate`, the expected audit calls are counted and priced too. `llm_settings` are the run's LLMEngine
    settings; `local` names a model served on this machine (`local:smollm2`): free, in the standard tier.

    Raises:
        ConfigurationError: `batch_size` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    engine = LLMEngine(per_item=per_item, **(llm_settings or {}))
    resolved = resolve_model(None, model, env)
    ctx = EngineContext(
        agent_name=AGENT,
        description=describe(per_item),
        publishes=(ReviewLabel if per_item else ReviewTrend,),
        is_batch=True,
        model=model,
        env=env,
    )
    estimate = Estimate(model=local or resolved, mode="per-item" if per_item else "report", tier=tier)
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
    if local is not None:
        estimate.tier, estimate.cost_usd, estimate.prices = "standard", 0.0, "free: the model runs on this machine"
        return estimate
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


def print_estimate(args: argparse.Namespace) -> int:
    """--estimate: count what the run would send and cost; no model is called."""
    from rich.console import Console

    from .checks import finite
    from .local import estimate_settings, local_name
    from .rows import iter_reviews
    from .terminal import say

    console = Console(stderr=True)
    bad: list[object] = []
    reviews = iter_reviews(args.file, bad.append)
    env = {k: v for k, v in os.environ.items() if k.startswith("FLOCK_")}
    model, settings = estimate_settings(args.model)  # --model local: counted as its run counts, none started
    found = estimate_reviews(
        reviews,
        batch_size=args.batch_size,
        per_item=args.per_item,
        model=model,
        env=env,
        tier=args.tier,
        audit_rate=args.audit,
        llm_settings=settings,
        local=args.run_model if local_name(args.model) else None,  # `local:NAME`, as main() checked it
    )
    if args.json:
        found_json = json.dumps(finite({**found.as_dict(), "bad_rows": len(bad)}), indent=2, allow_nan=False)
        sys.stdout.write(found_json + "\n")
        return 0
    cost = "unknown" if found.cost_usd is None else f"${found.cost_usd:.4f}"
    audit = (
        "" if not args.audit else f" including about {found.audit_calls} audit calls ({found.audit_tokens:,} tokens)"
    )
    say(
        console,
        f"estimate for {found.reviews} reviews ({found.mode}, model {found.model}, batches of {args.batch_size}, "
        f"tier {found.tier}): {found.calls} calls{audit}, {found.prompt_tokens:,} prompt tokens, about "
        f"{found.completion_tokens:,} completion tokens, cost {cost} ({found.prices}); {len(bad)} bad rows "
        "skipped. No model was called.",
    )
    return 0
