"""One model call, from "I want to ask" to "recorded": the only path a call of any engine and tier takes.

    reserve   the call's worst case in every budget: its counted prompt + the `max_tokens` it is allowed
    guard     retries (RetryPolicy) behind the engine's circuit breaker and shared back-off (ProviderGuard)
    pace      each request waits for the tokens-per-minute window (prompt + max_tokens: what providers such as
              OpenAI count) and the shared requests-per-minute window, then for a slot of the engine's
              `max_concurrent_requests` / `requests_per_minute`
    send      the engine's transport (litellm, DSPy, a provider batch-job line, or yours)
    settle    the budgets with what the answers cost; a request that timed out is charged its prompt (the
              provider read it; what it generated before the timeout is unknown and not charged)
    record    usage counters, one CallRecord and one `flock.llm.call` span per call; breaker probes sent while
              the call waited are counted in its usage

The breaker's probe is a call too (`CallShell.probe`): reserved, paced and recorded, but not behind the breaker
it closes. A provider batch job's own requests (upload, create, poll, download, cancel) go through
`CallShell.request`: paced by the request limits and behind the breaker, with no tokens or cost of their own.

An engine builds one `CallShell` per run and calls `shell.call(Ask(...), send, settled)`; it composes none of
these steps itself. A batch-job line (`Ask(deferred=True)`) has no request of its own: it is reserved, settled
and recorded like any call, but not paced or guarded (providers count batch jobs apart from their per-minute
limits, and a line may wait hours for its job).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ..._error_text import local_failure, missing_key
from .._base import EngineContext
from .ask import Ask, Resend, resent, settled_of
from .breaker import ProviderGuard
from .record import CallRecord, Usage, record_call
from .retry import RequestLimiter, RetryPolicy, cancelling
from .settled import Settled, completion_choice, is_timeout
from .spend import CallCosts, Ticket

PROBE_PROMPT_TOKENS = 8
"""A probe's prompt ("ping" in a chat message), as the budget holds it."""

__all__ = [
    "PROBE_PROMPT_TOKENS",
    "Again",
    "Ask",
    "CallShell",
    "Resend",
    "Settled",
    "ShellEngine",
    "completion_choice",
    "is_timeout",
]

log = logging.getLogger("flock_llm.engines")

R = TypeVar("R")
Again = Callable[[BaseException], float | None]
"""A tier's say on a failed request: seconds to wait before sending it again (counted as a retry), None to leave
it to the retries and the breaker, or raise to stop the call (e.g. the flex tier gives up after `flex_wait`)."""


class ShellEngine(Protocol):
    """What the shell needs of an engine (LadderEngine has it all)."""

    retry: RetryPolicy
    guard: ProviderGuard
    limiter: RequestLimiter
    costs: CallCosts
    calls: deque[CallRecord]

    def redact(self, text: str) -> str: ...

    def probe_for(self, model: str) -> Callable[[], Awaitable[object]]: ...


@dataclass
class _Spent:
    """What the requests of one call consumed, summed for its settlement and record."""

    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_read: int = 0
    cached_written: int = 0
    cost_usd: float = 0.0
    charged: bool = False
    """Something is to be paid (an answer, or a timed-out prompt)."""
    unpriced: bool = False
    """Some of it has no known price."""

    def add(self, settled: Settled, cost: float | None) -> None:
        self.prompt_tokens += settled.prompt_tokens
        self.completion_tokens += settled.completion_tokens
        self.cached_read += settled.cached.read
        self.cached_written += settled.cached.written
        self.charged = True
        if cost is None:
            self.unpriced = True
        else:
            self.cost_usd += cost


@dataclass
class _OneCall(Generic[R]):
    """One call in progress: what to send, how to read its reply, and what it holds and has spent."""

    ask: Ask
    send: Callable[[], Awaitable[R]]
    settled: Callable[[R], Settled | None]
    again: Again | None
    ticket: Ticket
    spent: _Spent = field(default_factory=_Spent)
    resends: int = 0
    """`Resend`s of the current attempt."""


class CallShell:
    """One engine run's way to the model: every call of the run goes through `call`."""

    def __init__(
        self,
        engine: ShellEngine,
        ctx: EngineContext,
        usage: Usage,
        model: str,
        litellm: Any,
        *,
        label: str = "",
        note: str = "",
    ) -> None:
        """A shell for one run (engines make it with `ModelEngine.shell`).

        Args:
            engine: what the shell needs of the engine (ShellEngine: retry, guard, limiter, costs, calls, ...).
            ctx: the run's context.
            usage: the run's usage counters.
            model: the litellm model string the calls go to.
            litellm: the litellm module (for prices and error types).
            label: the engine's name on spans ("dspy").
            note: added to failed requests' errors (where the call went, never its credentials).
        """
        self.engine = engine
        self.ctx = ctx
        self.usage = usage
        self.model = model
        self.litellm = litellm
        self.label = label
        self.note = note

    async def call(
        self,
        ask: Ask,
        send: Callable[[], Awaitable[R]],
        settled: Callable[[R], Settled | None],
        *,
        again: Again | None = None,
    ) -> R:
        """Make one call (see the module docstring) and return its reply.

        Args:
            ask: what the call is (kind, items, counted prompt tokens, `max_tokens`, tier).
            send: sends the request once (the engine's transport); raise `Resend` to have it sent again at once.
            settled: reads what a reply consumed; None means nothing was answered (a batch-job line that failed):
                the call is then neither charged nor recorded.
            again: a tier's say on a failed request (seconds to wait before sending it again), if any.

        Raises:
            BudgetExceededError: the call's worst case would pass a budget (nothing was sent).
            ProviderUnavailableError: the breaker waited `max_outage` for the provider.
            Exception: the call's last error (after its retries).
        """
        return await self._recorded(ask, send, settled, again=again, guarded=not ask.deferred)

    async def _recorded(
        self,
        ask: Ask,
        send: Callable[[], Awaitable[R]],
        settled: Callable[[R], Settled | None],
        *,
        again: Again | None = None,
        guarded: bool,
    ) -> R:
        ticket = await self.engine.costs.reserve(
            self.ctx, self.model, self.litellm, ask.prompt_tokens, ask.max_tokens, ask.tier, probe=ask.kind == "probe"
        )
        call = _OneCall(ask, send, settled, again, ticket)
        spent = call.spent
        started, started_ns = time.perf_counter(), time.time_ns()
        outcome: str | None = None
        try:
            reply, outcome = await (self._guarded(call) if guarded else self._request(call, paced=not ask.deferred))
        except BaseException as exc:  # recorded (a cancelled call too: its request may have been paid), re-raised
            outcome = type(exc).__name__
            raise
        finally:
            cost = self._close(ticket, spent)
            if outcome is not None:
                record_call(
                    usage=self.usage,
                    calls=self.engine.calls,
                    ctx=self.ctx,
                    model=self.model,
                    kind=ask.kind,
                    items=ask.items,
                    started=started,
                    started_ns=started_ns,
                    attempts=spent.attempts,
                    outcome=outcome,
                    prompt_tokens=spent.prompt_tokens,
                    completion_tokens=spent.completion_tokens,
                    cost=cost,
                    prompt=ask.prompt,
                    engine=self.label,
                    cached_tokens=spent.cached_read,
                    cache_write_tokens=spent.cached_written,
                )
        return reply

    async def _guarded(self, call: _OneCall[R]) -> tuple[R, str | None]:
        engine = self.engine

        def on_retry(exc: BaseException) -> None:
            self.usage.retries += 1
            text = engine.redact(f"{type(exc).__name__}: {str(exc)[:200]}")
            log.info("agent %r: retrying after %s", self.ctx.agent_name, text)

        async def attempt() -> tuple[R, str | None]:
            return await self._request(call, paced=True)

        try:
            return await engine.guard.call(engine.retry, attempt, on_retry, self.probe)
        finally:  # each probe counted once, in a run that waited for it
            self.usage.absorb(engine.guard.take_probes().as_dict())

    async def probe(self) -> object:
        """The breaker's probe (`ShellEngine.probe_for`), sent while the breaker is open: a call of its own, held in
        the budgets (its prompt and one answer token), paced by the limits, recorded as a "probe" CallRecord, but
        not behind the breaker (it is what closes it) and never retried. Its usage waits in the guard for the next
        run that waited for the breaker (`ProviderGuard.take_probes`), from when it ended: a run that took the probes
        while it was under way (it left) does not take it.

        Raises:
            BudgetExceededError: the budgets have no room for the probe (nothing was sent).
            Exception: the probe's error (the guard tells an outage from an answer).
        """
        engine, usage = self.engine, Usage()
        probe = CallShell(engine, self.ctx, usage, self.model, self.litellm, label=self.label, note=self.note)
        ask = Ask("probe", 0, prompt_tokens=PROBE_PROMPT_TOKENS, max_tokens=1)
        try:
            return await probe._recorded(ask, engine.probe_for(self.model), Settled.of_completion, guarded=False)
        finally:
            usage.probes = usage.llm_calls
            engine.guard.unclaimed.absorb(usage.as_dict())

    async def request(self, send: Callable[[], Awaitable[R]]) -> R:
        """One provider request that is not a model call (a batch job's file upload, creation, poll, download or
        cancellation): behind the breaker like a call (retried; a provider that keeps failing opens it; nothing
        goes while it is open, but a 429 is the Batch API's own limit: retried, then raised, never opening it),
        paced by `max_concurrent_requests` and `requests_per_minute` (the shared requests window too), but not held
        in the budgets or the tokens minute and not recorded as a call.

        Raises:
            ProviderUnavailableError: the breaker waited `max_outage` for the provider.
            Exception: the request's last error (after its retries).
        """
        engine = self.engine

        async def attempt() -> R:
            ticket = Ticket(0.0, [], 0)
            try:
                await engine.costs.admit(self.ctx, self.model, ticket, tokens=False)
                return await engine.limiter.run(_Sending(send))
            finally:
                await engine.costs.attempt_done(ticket, 0)

        def on_retry(exc: BaseException) -> None:
            log.info("retrying a batch job request after %s", engine.redact(f"{type(exc).__name__}: {exc}"[:200]))

        try:
            return await engine.guard.call(engine.retry, attempt, on_retry, self.probe, own_limits=True)
        finally:  # the probes it waited for, counted in this run's usage (a batch job's lines are not guarded)
            self.usage.absorb(engine.guard.take_probes().as_dict())

    async def _request(self, call: _OneCall[R], *, paced: bool) -> tuple[R, str | None]:
        """One attempt: a request (sent again while the tier says so), paced by the limits when `paced`."""
        costs = self.engine.costs
        ticket, spent, send = call.ticket, call.spent, call.send
        spent.attempts += 1
        call.resends = 0
        while True:
            await costs.make_room(ticket)
            costs.cover(ticket, spent.cost_usd)
            sending = _Sending(send)
            try:
                if paced:
                    await costs.admit(self.ctx, self.model, ticket)
                reply = await (self.engine.limiter.run(sending) if paced else sending())
            except BaseException as exc:
                if not sending.sent or self._refused_here(exc):  # cancelled, the windows failed, the HTTP
                    await costs.attempt_done(ticket, 0)  # client or litellm refused it: nothing sent, nothing counted
                    raise
                cancelled = isinstance(exc, asyncio.CancelledError)  # like a timeout: the prompt was read
                await self._unanswered(call, charged=cancelled or is_timeout(exc))
                if isinstance(exc, Resend):
                    call.resends = resent(call.resends, exc)  # raises past MAX_RESENDS in a row
                    continue
                if cancelled or not isinstance(exc, Exception):
                    raise
                if self.note:
                    exc.add_note(self.note)
                wait = call.again(exc) if call.again is not None else None
                if wait is None:
                    raise
                self.usage.retries += 1
                await asyncio.sleep(wait)
                continue
            return await self._answered(call, reply)

    async def _answered(self, call: _OneCall[R], reply: R) -> tuple[R, str | None]:
        """A request was answered: settle its window entries and count what it consumed."""
        costs, ask, ticket, spent = self.engine.costs, call.ask, call.ticket, call.spent
        try:
            used = settled_of(call.settled, reply)
        except Exception:  # answered, but not readable: the request is counted and its prompt charged
            await self._unanswered(call, charged=True)
            raise
        if used is None:
            await costs.attempt_done(ticket, 0)
            return reply, None
        self.usage.llm_calls += used.requests
        spent.add(used, self._price(ticket, used))
        await costs.attempt_done(ticket, used.prompt_tokens + ask.max_tokens * max(1, used.requests))
        return reply, used.outcome

    def _refused_here(self, exc: BaseException) -> bool:
        """The request never left: litellm had no API key, or the HTTP client refused it (see `_error_text`);
        its error says where it was going."""
        if not isinstance(exc, Exception) or not (missing_key(exc) or local_failure(exc)):
            return False
        if self.note:
            exc.add_note(self.note)
        return True

    async def _unanswered(self, call: _OneCall[R], *, charged: bool) -> None:
        """A request went out and got no answer: counted; when `charged` (it timed out, or its call was cancelled)
        the provider read its prompt and counted its `max_tokens`, so the prompt is paid and the minute keeps it."""
        self.usage.llm_calls += 1
        if charged:
            prompt = Settled(prompt_tokens=call.ask.prompt_tokens)
            call.spent.add(prompt, self._price(call.ticket, prompt))
        await self.engine.costs.attempt_done(call.ticket, call.ticket.tokens if charged else 0)

    def _price(self, ticket: Ticket, used: Settled) -> float | None:
        return self.engine.costs.price(
            ticket,
            self.model,
            self.litellm,
            prompt=used.prompt_tokens,
            completion=used.completion_tokens,
            cached=used.cached,
            litellm_cost=used.cost_usd,
        )

    def _close(self, ticket: Ticket, spent: _Spent) -> float | None:
        """Settle the budgets with what the call cost (nothing when nothing was answered); returns the cost."""
        costs = self.engine.costs
        if not spent.charged:
            costs.release(ticket)
            return None
        cost = None if spent.unpriced else spent.cost_usd
        costs.close(ticket, cost)
        return cost


class _Sending(Generic[R]):
    """An attempt's transport, noting whether its request went out (a cancelled call may never have sent it); a
    request whose task is being cancelled is refused here, before it goes."""

    def __init__(self, send: Callable[[], Awaitable[R]]) -> None:
        self.send = send
        self.sent = False

    def __call__(self) -> Awaitable[R]:
        if cancelling():  # a cancellation a wait swallowed (Python 3.11's wait_for, e.g. inside a Redis client's
            raise asyncio.CancelledError  # command while a shared minute was full): a cancelled call is never sent
        self.sent = True
        reply = self.send()
        if not inspect.isawaitable(reply):  # a plain function: its request (if any) went out, but not paced
            raise TypeError(
                f"a call's `send` must be a coroutine function (async def), it returned {type(reply).__name__}"
            )
        return reply
