"""LLMEngine: one structured litellm call per flushed batch, with a fallback ladder that loses nothing."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .._numbers import number
from ..errors import ConfigurationError
from ..prompts.render import PromptItem, Prompts, encode_item
from ._base import EngineContext, EvalInputs
from ._calls.breaker import BreakerPolicy
from ._calls.endpoint import api_base, endpoint
from ._calls.engine import PROBE_SETTINGS
from ._calls.models import announce_offline, counting_model, is_offline, load_litellm, resolve_model
from ._calls.prices import TokenPrices, cache_points
from ._calls.record import CallRecord, Usage, prompt_text
from ._calls.retry import RetryPolicy
from ._calls.shell import Ask, CallShell, Resend, Settled, completion_choice
from ._ladder.engine import LadderEngine, context_window, output_limit
from ._ladder.formats import (
    Format,
    FormatMemory,
    Mode,
    StructuredOutput,
    as_setting,
    bounded_strings,
    format_rejected,
    in_mode,
    per_item_schema,
    request_format,
    resolve_format,
)
from ._ladder.ladder import Answer, LadderItem, Repair
from ._ladder.planning import answer_limit
from ._tiers.jobs import DeferredPolicy, DeferredQueue
from ._tiers.tiers import TIERS, ChatRequest, Tier, tier_for
from ._tiers.tiers import deferrable as deferrable  # for `flock-llm reviews --estimate`: which models go into jobs

if TYPE_CHECKING:
    from ..quality import Audit, QualityTarget, ReportFacts, Shuffle

__all__ = ["BreakerPolicy", "CallRecord", "DeferredPolicy", "LLMEngine", "RetryPolicy", "TokenPrices"]

_ANSWER_LIMITS = frozenset({"max_tokens", "max_completion_tokens"})
log = logging.getLogger("flock_llm.engines")


class LLMEngine(LadderEngine):
    """Renders a batch into one prompt, calls the model via litellm, parses the answer.

    Args:
        model: litellm model string; default: `Flock(model=)`, then `FLOCK_LLM_MODEL`, then the offline model.
        per_item: one output per input item (aligned by id) instead of one report per batch.
        output_type: the type to produce; default: the first type the agent publishes.
        instructions: extra task text appended to the agent's description.
        prompts: template overrides by name ("system", "items", "repair").
        structured_output: how the answer's JSON schema is sent: "json_schema" (OpenAI's `response_format`),
            "json_object" (llama.cpp's `{"type": "json_object", "schema": ...}`), "prompt" (in the prompt only)
            or "auto" (default; True, False and None are "json_schema", "prompt" and "auto"): hosted models as
            litellm knows them, local servers (`ollama/`, `hosted_vllm/`, `lm_studio/`, `llamafile/`, or an
            `api_base` serving a model litellm does not know) in their own form, with the ids of a per-item
            answer pinned by the schema. A server that rejects the format gets the next one (json_schema ->
            json_object -> prompt), once, with a warning. See `flock_llm.engines._ladder.formats`.
        max_input_tokens: the context window: tokens per call, prompt and answer (default: litellm's figure for
            the model, else 16,000). A batch whose prompt and expected answer do not fit is split before sending.
        max_output_tokens: the longest answer (default: litellm's figure for the model, else 4,096). Each request
            asks for `max_tokens` = twice the answer expected for it (learned from real answers; at least 256
            tokens more), within what the prompt leaves of the context and this; the expected answer must fit
            this, else the batch is split before sending. A `max_tokens=` of yours is sent as it is.
        max_concurrent_requests: how many of this engine's requests may be in flight at once.
        requests_per_minute: a limit on this engine's requests, paced evenly; with a Redis store it is shared by
            every worker process.
        tokens_per_minute: a provider's tokens-per-minute limit: each request waits until what the provider
            counts for it (counted prompt + its `max_tokens`) fits a sliding minute; with a Redis store the
            minute is shared by every worker process.
        prices: USD per million tokens (`{"input": 0.4, "output": 1.6, "cached_input": 0.1}` or a
            TokenPrices); default: litellm's price map (its `response_cost`).
        budget_usd: a cap on what this engine's calls cost: each call reserves its worst case (counted prompt +
            its `max_tokens`), waits for the calls in flight when only their holds leave it no room, and is not
            made when it would pass the budget even then (BudgetExceededError; stage "budget"); it is settled with
            its real cost after. A request that timed out (or was cancelled while out) is charged its prompt.
            `Flock(budget_usd=)` caps all engines together.
        prompt_caching: mark the static system prompt as a cache breakpoint (`cache_control`) for providers
            that take one (Anthropic, Bedrock, Vertex, Gemini, ...); OpenAI-style providers cache prefixes
            themselves. Cached prompt tokens are counted in usage either way.
        retry: how transient errors (429, 5xx, timeouts, connection errors) are retried.
        breaker: how long calls wait for a provider that is down (circuit breaker; see BreakerPolicy).
        timeout: seconds per request.
        max_calls_per_item: the fallback ladder's call budget per batch is 2 + ceil(items x this) answered calls
            (default 2.0: a batch never costs more than twice per-item processing, plus two); past it,
            and after 3 answers in a row without usable JSON, the batch's remaining items fail instead.
        tier: "standard" (answers in seconds, list price), "flex" (OpenAI flex processing: the batch price,
            slower answers, falling back to standard after `flex_wait`) or "batch" (provider batch jobs: half
            price, results within 24 h; see DeferredPolicy).
        deferred: how batch-tier jobs are filled, polled and given up on (`tier="batch"` only).
        flex_wait: seconds a flex-tier batch waits out "resource unavailable" answers before it goes the
            standard way.
        audit: ask a share of the calls' items again alone and compare (`flock_llm.quality.Audit`; per-item only).
        quality: a quality target the batch size must hold (`QualityTarget`; audits with `Audit(rate=0.25)` unless
            `audit=` is given).
        shuffle: shuffle the items' order in each call (`Shuffle` or True), a guard against position bias.
        report_facts: compute a report's countable fields from the items, give them to the model as facts and
            check its answer (`ReportFacts` or True; report output only). See docs/quality.md.
        **litellm_kwargs: passed to `litellm.acompletion` (api_base, api_key, temperature, ...).
    """

    engine_name = "LLMEngine"

    def __init__(
        self,
        model: str | None = None,
        *,
        per_item: bool = False,
        output_type: type[BaseModel] | None = None,
        instructions: str = "",
        prompts: Mapping[str, str] | None = None,
        structured_output: StructuredOutput | bool | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        max_concurrent_requests: int | None = 8,
        requests_per_minute: float | None = None,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        timeout: float = 60.0,
        max_calls_per_item: float = 2.0,
        tokens_per_minute: int | None = None,
        prices: TokenPrices | Mapping[str, float] | None = None,
        budget_usd: float | None = None,
        prompt_caching: bool = True,
        tier: str = "standard",
        deferred: DeferredPolicy | None = None,
        flex_wait: float = 600.0,
        audit: Audit | None = None,
        quality: QualityTarget | None = None,
        shuffle: Shuffle | bool | None = None,
        report_facts: ReportFacts | bool | None = None,
        **litellm_kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            per_item=per_item,
            output_type=output_type,
            max_input_tokens=max_input_tokens,
            max_output_tokens=max_output_tokens,
            max_concurrent_requests=max_concurrent_requests,
            requests_per_minute=requests_per_minute,
            retry=retry,
            breaker=breaker,
            timeout=timeout,
            max_calls_per_item=max_calls_per_item,
            passthrough=litellm_kwargs,
            reserved=("messages", "response_format", "num_retries", "max_retries", "stream"),
            tokens_per_minute=tokens_per_minute,
            prices=prices,
            budget_usd=budget_usd,
            audit=audit,
            quality=quality,
            shuffle=shuffle,
            report_facts=report_facts,
        )
        self.prompt_caching = prompt_caching
        if tier not in TIERS:
            raise ConfigurationError(f"`tier` must be one of {', '.join(TIERS)}, got {tier!r}")
        self.flex_wait = number("flex_wait", flex_wait, bound="non_negative", unit="seconds", fix="e.g. 600")
        self.tier = tier
        self.deferred = deferred or DeferredPolicy()
        self._queue: DeferredQueue | None = None
        self.route: Tier = tier_for(tier, flex_wait=self.flex_wait, queue=self.deferred_queue)
        """How this engine's requests go (the tier object; every tier calls through the call shell)."""
        self.instructions = instructions
        self.prompts = Prompts(prompts)
        self.structured_output = as_setting(structured_output)
        self.formats = FormatMemory()
        """The mode each endpoint was left with after rejecting one."""
        self.litellm_kwargs = litellm_kwargs

    def deferred_queue(self, shell: CallShell | None = None) -> DeferredQueue:
        """This engine's provider batch jobs (tier "batch"): `jobs_submitted`, `jobs_running`, `jobs_done`. The
        jobs' own requests carry the engine's endpoint and credentials (`api_base`, `api_key`, `extra_headers`,
        `organization`, ...) and go through the call shell of the latest run that used the queue (`shell`): paced
        by `max_concurrent_requests` and `requests_per_minute`, behind the circuit breaker."""
        if self._queue is None:
            settings = {k: v for k, v in self.litellm_kwargs.items() if k in PROBE_SETTINGS}
            litellm = shell.litellm if shell is not None else load_litellm()
            self._queue = DeferredQueue(self.deferred, litellm, settings, timeout=self.timeout)
        if shell is not None:  # not the first run's for good: its Flock may be gone, its budget spent (its probes')
            self._queue.requests = shell.request
        return self._queue

    def _backend(self, ctx: EngineContext, inputs: EvalInputs) -> _Call:
        return _Call(self, ctx)


class _Call:
    """The ladder's backend for one engine run: renders prompts, counts tokens, calls litellm."""

    def __init__(self, engine: LLMEngine, ctx: EngineContext) -> None:
        self.engine = engine
        self.ctx = ctx
        self.model = resolve_model(engine.model, ctx.model, ctx.env)
        self.litellm = load_litellm()
        if is_offline(self.model):
            announce_offline()
        self.output_type: type[BaseModel] = engine.resolve_output_type(ctx)
        self.schema = self.output_type.model_json_schema()
        self.usage = Usage(extra={"model": self.model})
        self.format: Format = resolve_format(
            engine.structured_output,
            self.model,
            api_base=self._api_base(),
            litellm_takes_schema=engine.structured_output == "auto" and self._supports_schema(),
            offline=is_offline(self.model),
        )
        self.context = context_window(self.model, engine.max_input_tokens)
        self.max_output = output_limit(self.model, engine.max_output_tokens)
        self.plan = engine.plan_for(self.output_type, self.text_tokens)
        self.cache_points = cache_points(self.model, self.litellm) if engine.prompt_caching else None
        self._item_frame: int | None = None
        self.shell = CallShell(engine, ctx, self.usage, self.model, self.litellm, note=self._where())

    @property
    def mode(self) -> Mode:
        """The structured-output mode of the next request (after any rejection by this endpoint)."""
        return self.engine.formats.mode(self._format_key(), self.format.mode)

    @property
    def structured(self) -> bool:
        return self.mode != "prompt"

    @property
    def keyed(self) -> bool:
        """Whether per-item results are asked for keyed by item id (the pinned schema is sent), so the prompt
        describes that form; otherwise (no schema sent, or the array schema) as an array."""
        return self.format.pinned and self.structured

    def _format_key(self) -> str:
        return f"{self.model.split('/', 1)[0]} at {self._endpoint()}"

    def _supports_schema(self) -> bool:
        try:
            return bool(self.litellm.supports_response_schema(model=self.model))
        except Exception:  # noqa: BLE001 - litellm raises assorted errors for unknown models; assume no
            return False

    # -- prompts --------------------------------------------------------------------

    def messages(
        self, items: Sequence[LadderItem], *, per_item: bool, repair: Repair | None = None, reduce_total: int = 0
    ) -> list[dict[str, str]]:
        description = "\n".join(t for t in (self.ctx.description, self.engine.instructions) if t)
        asked = repair.asked if repair is not None else items
        system = self.engine.prompts.system(
            agent_name=self.ctx.agent_name,
            description=description,
            output_name=self.output_type.__name__,
            output_schema=self.schema,
            per_item=per_item,
            reduce=reduce_total > 0,
            keyed=self.keyed,
        )
        facts: Mapping[str, Any] = {}
        if self.ctx.facts is not None and not per_item and not reduce_total:  # a reduce's parts are not items
            facts = self.ctx.facts(self.output_type, [a for i in asked for a in i.artifact_ids])
        user = self.engine.prompts.items(
            [PromptItem(i.id, i.data) for i in asked], total_items=reduce_total, facts=facts
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if repair is not None:
            previous = repair.previous if isinstance(repair.previous, str) else encode_item(repair.previous)
            messages.append({"role": "assistant", "content": previous})
            messages.append(
                {
                    "role": "user",
                    "content": self.engine.prompts.repair(
                        errors=repair.errors, per_item=per_item, ids=[i.id for i in items]
                    ),
                }
            )
        return messages

    def response_format(self, items: Sequence[LadderItem], *, per_item: bool) -> dict[str, Any] | None:
        """The request's `response_format` in this endpoint's mode (see `_formats`); None in "prompt" mode."""
        pinned = self.format.pinned
        if per_item:
            schema = per_item_schema(self.schema, [i.id for i in items] if pinned else None)
            name = f"{self.output_type.__name__}_per_item"
        else:
            schema = bounded_strings(self.schema) if pinned else self.schema
            name = self.output_type.__name__
        return request_format(self.mode, name, schema)

    async def complete(self, kwargs: dict[str, Any]) -> Any:
        """`litellm.acompletion` in this endpoint's structured-output mode; a server that rejects the requested
        format moves the endpoint to the next mode (said once, in a warning) and the call shell sends the request
        again at once (`Resend`: paced and counted like any request)."""
        kwargs = in_mode(kwargs, self.mode)
        try:
            return await self.litellm.acompletion(**kwargs)
        except Exception as exc:
            sent = kwargs.get("response_format")
            if not isinstance(sent, dict) or not format_rejected(getattr(exc, "status_code", None), str(exc)):
                raise
            rejected: Mode = "json_object" if sent.get("type") == "json_object" else "json_schema"
            key = self._format_key()
            moved = self.engine.formats.mode(key, self.format.mode) == rejected
            following = self.engine.formats.reject(key, rejected)
            if following is None:
                raise
            if moved:
                log.warning(
                    "%s rejected response_format %r (%s); using %r for it from now on",
                    key,
                    rejected,
                    self.engine.redact(f"{type(exc).__name__}: {str(exc)[:160]}"),
                    following,
                )
            self.usage.format_fallbacks += 1
            raise Resend(f"response_format {rejected!r} rejected; sent again as {following!r}") from exc

    def count_tokens(self, items: Sequence[LadderItem], *, per_item: bool | None = None) -> int:
        messages = self.messages(items, per_item=self.engine.per_item if per_item is None else per_item)
        return int(self.litellm.token_counter(model=counting_model(self.model), messages=messages))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return int(self.litellm.token_counter(model=counting_model(self.model), messages=messages))

    def text_tokens(self, text: str) -> int:
        return int(self.litellm.token_counter(model=counting_model(self.model), text=text))

    def item_tokens(self, item: LadderItem) -> int:
        """The tokens one item adds to a prompt: its id and data, and the frame around them (counted once)."""
        encode = self.litellm.encode
        counter = counting_model(self.model)
        if self._item_frame is None:
            self._item_frame = len(encode(model=counter, text=self.engine.prompts.items([PromptItem("", "")])))
        return self._item_frame + len(encode(model=counter, text=item.id)) + len(encode(model=counter, text=item.data))

    # -- Backend protocol ---------------------------------------------------------------

    def fits(self, items: Sequence[LadderItem], *, per_item: bool) -> bool:
        """Whether the prompt and the answer expected for it fit the context, and that answer the output limit."""
        answer = self.plan.expected(len(items), per_item=per_item)
        return answer <= self.max_output and self.count_tokens(items, per_item=per_item) + answer <= self.context

    def _request(
        self, items: Sequence[LadderItem], per_item: bool, repair: Repair | None, reduce_total: int
    ) -> ChatRequest:
        """One call's litellm arguments, with `max_tokens` from the answer expected for it (see `answer_limit`)."""
        kwargs: dict[str, Any] = {
            **self.engine.litellm_kwargs,
            "model": self.model,
            "messages": self.messages(items, per_item=per_item, repair=repair, reduce_total=reduce_total),
            "max_retries": 0,  # tenacity retries; the SDK's own retries would multiply ours
            "timeout": self.engine.timeout,
        }
        if self.structured:
            kwargs["response_format"] = self.response_format(items, per_item=per_item)
        if self.cache_points:
            kwargs["cache_control_injection_points"] = self.cache_points
        prompt_tokens = self.prompt_tokens(kwargs["messages"])
        answers = len(items) if per_item else 1
        given = next((int(kwargs[k]) for k in _ANSWER_LIMITS if kwargs.get(k) is not None), None)  # checked whole
        if given is None:
            expected = self.plan.expected(answers, per_item=per_item)
            given = kwargs["max_tokens"] = answer_limit(
                expected, room=self.context - prompt_tokens, max_output=self.max_output
            )
        kind = "repair" if repair else "reduce" if reduce_total else "batch"
        ask = Ask(kind, len(items), prompt_tokens, given, prompt=prompt_text(kwargs["messages"], self.engine.redact))
        return ChatRequest(kwargs, ask, answers, per_item, first=repair is None and not reduce_total)

    async def ask(
        self, items: Sequence[LadderItem], *, per_item: bool, repair: Repair | None = None, reduce_total: int = 0
    ) -> Answer:
        return await self.engine.route.ask(self, self._request(items, per_item, repair, reduce_total))

    def answer_of(self, request: ChatRequest, reply: Any) -> Answer:
        content, finish = completion_choice(reply)
        completion = Settled.of_completion(reply).completion_tokens
        if finish == "length":
            self.plan.learn_cut(request.answers, completion, per_item=request.per_item)
        else:
            self.plan.learn(request.answers, completion, per_item=request.per_item)
        return Answer(content, truncated=finish == "length")

    def _api_base(self) -> str | None:
        return api_base(self.engine.litellm_kwargs, self.model, os.environ)

    def _endpoint(self) -> str:
        return endpoint(self._api_base())

    def _where(self) -> str:
        """Where calls go, for error texts: the model and its endpoint (never its credentials)."""
        return f"model {self.model} at {self._endpoint()}"
