"""A provider that is down or rate-limiting slows every call to it; it does not multiply them.

`ProviderGuard` is one engine's view of its provider:
- a shared back-off: a 429 that names a wait (Retry-After) pauses every call of the engine, not just the
  one retried;
- one outage clock: it starts at the first transport failure (429, 5xx, timeout, refused connection) after the
  provider last answered a real call, and only a real answer stops it (a probe's answer does not);
- a circuit breaker: when a call has used up its retries on transport failures, the breaker opens. While it
  is open, calls wait (their batches stay pending; durable stores keep them) and the guard probes the
  provider with a tiny request (one token), first after `probe_interval`, then twice as long after each
  failed probe (up to `max_probe_interval`). A probe that gets through releases the waiting calls, and
  each sends ONE attempt: a probe can be answered while real calls are still refused (a quota that counts
  `max_tokens`), so a failure then opens the breaker again without retries;
- when the outage clock reaches `max_outage`, every waiting call fails at once with
  ProviderUnavailableError (its items become failure records with stage "provider_unavailable"), and so
  does every later call, without sending anything, until a probe gets through (a later call that comes
  when no probe ran for a probe interval sends one itself first, and goes on if it is answered);
- a provider that has never answered this guard and refuses the connection (nothing listens there, the
  host name does not resolve, no network) is a configuration problem, not an outage: the first such call
  fails at once with ProviderUnreachableError, which says what to set. A provider that answered once and
  then refuses connections is an outage (the breaker waits).

So a batch costs at most `retry.attempts` calls before the breaker opens and one more per recovery; the
probes are the breaker's own (one at a time, a few tokens each, shared by every waiting batch). Transport
failures never reach the ladder's per-item rung (see `_ladder`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from ..._error_text import connect_failure, describe_transport, provider_answered
from ..._numbers import number
from ...errors import BudgetExceededError, ProviderUnavailableError, ProviderUnreachableError
from .record import Usage
from .retry import UNREACHABLE_HINT, RetryPolicy, cancelling, classify_error, describe_call_error, retry_after_seconds

__all__ = ["BreakerPolicy", "BreakerStats", "ProviderGuard"]

log = logging.getLogger("flock_llm.engines")

T = TypeVar("T")
State = Literal["closed", "open", "down"]
"""closed: calls go; open: calls wait for a probe; down: the outage clock ran out, calls fail at once."""
Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """How long calls wait for a provider that is down, and how often it is probed meanwhile."""

    max_outage: float = 300.0
    """Seconds the provider may fail every call (one clock per engine, shared by every call) before the waiting
    calls' items fail ("provider_unavailable"); later calls then fail at once until a probe gets through."""
    probe_interval: float = 2.0
    """Seconds after the breaker opens until the first probe."""
    max_probe_interval: float = 15.0
    """The wait between probes doubles after each failed probe, up to this."""

    def __post_init__(self) -> None:
        for name in ("max_outage", "probe_interval", "max_probe_interval"):
            number(name, getattr(self, name), unit="seconds", fix=f"e.g. BreakerPolicy({name}=30)")


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot of one guard (`ProviderGuard.stats()`)."""

    state: State
    """"closed" (calls go), "open" (calls wait for a probe) or "down" (the outage clock ran out)."""
    opened: int
    """How many times the breaker opened."""
    probes: int
    """Probe requests sent (a few tokens each)."""
    recoveries: int
    """Probes that got through (each lets every waiting call send one attempt)."""
    failing_for_s: float | None
    """How long the outage clock has been running (None: the provider answers)."""


class _Stop(Exception):  # noqa: N818 - internal signal, never leaves this module
    """Raised inside an attempt to end `RetryPolicy.run` early (not a provider error: never retried)."""

    def __init__(self, cause: BaseException | None = None) -> None:
        super().__init__("stopped")
        self.cause = cause


class ProviderGuard:
    """The circuit breaker, outage clock and shared back-off of one engine (see the module docstring)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state: State = "closed"
        self._not_before = 0.0
        self._changed: asyncio.Event | None = None
        """Set (and replaced) whenever the state or the number of waiting calls changes."""
        self._waiting = 0
        self._probe: Probe | None = None
        self._prober: asyncio.Task[None] | None = None
        self._interval = policy.probe_interval
        self._next_probe_at = 0.0
        self._probing = False
        self.failing_since: float | None = None
        """Loop time of the first transport failure since the provider last answered a real call."""
        self.recovering = False
        """A probe got through but no real call has since: each call sends one attempt."""
        self.answered = False
        """The provider answered (anything, errors included) at least once."""
        self.last_error: BaseException | None = None
        self.opened = 0
        """How many times the breaker opened."""
        self.probes = 0
        """Probe requests sent (a few tokens each)."""
        self.recoveries = 0
        self.unclaimed = Usage()
        """What the probes sent since a run last took them cost (`take_probes`): each probe is a call of its own
        (see `CallShell.probe`), counted in the usage of a run that waited for it."""

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def stats(self) -> BreakerStats:
        failing = None if self.failing_since is None else max(0.0, self.now() - self.failing_since)
        return BreakerStats(self.state, self.opened, self.probes, self.recoveries, failing)

    def take_probes(self) -> Usage:
        """The usage of the probes sent since the last call took them: each probe is counted once, in the usage of
        a run that waited for it."""
        taken, self.unclaimed = self.unclaimed, Usage()
        return taken

    # -- the shared back-off ---------------------------------------------------------------------

    def back_off(self, seconds: float) -> None:
        """Every call of this engine waits `seconds` from now (a 429's Retry-After)."""
        self._not_before = max(self._not_before, self.now() + seconds)

    async def pause(self) -> None:
        """Wait out the shared back-off, if any."""
        delay = self._not_before - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- the outage clock and the breaker -------------------------------------------------------------

    def is_closed(self) -> bool:
        return self.state == "closed"

    def _give_up_at(self) -> float:
        start = self.now() if self.failing_since is None else self.failing_since
        return start + self.policy.max_outage

    def _failed(self, exc: BaseException) -> None:
        """A real call got a transport failure: the outage clock runs (from now, if it was not running)."""
        self.last_error = exc
        if self.failing_since is None:
            self.failing_since = self.now()

    def _succeeded(self) -> None:
        """A real call got an answer: the provider is back; the clock stops."""
        self.answered = True
        self.failing_since = None
        self.recovering = False
        self._interval = self.policy.probe_interval
        if self.state != "closed":
            self.close()

    def open(self, probe: Probe) -> None:
        """A call used up its retries on transport failures: open the breaker and start probing."""
        self._probe = probe
        self.recovering = False
        if self.failing_since is None:
            self.failing_since = self.now()
        if self.state == "closed":
            self.state = "open"
            self.opened += 1
            log.warning(
                "the provider keeps failing: circuit breaker open; calls wait (the provider has failed for %.1f s of "
                "at most %g s), probing from %g s on",
                self.now() - self.failing_since,
                self.policy.max_outage,
                self._interval,
            )
            self._notify()
        self._ensure_prober()

    def close(self) -> None:
        """A probe or a call got through: calls go again."""
        if self.state != "closed":
            log.warning("the provider answers again: circuit breaker closed")
        self.state = "closed"
        self._notify()

    def _go_down(self) -> None:
        if self.state != "down":
            self.state = "down"
            log.warning(
                "the provider failed every call for %g s (`max_outage`): waiting calls fail now, and later ones at "
                "once until a probe gets through",
                self.policy.max_outage,
            )
            self._notify()

    def _unavailable(self, *, sent: bool) -> ProviderUnavailableError:
        last = self.last_error
        detail = f"; last error: {describe_call_error(last)}" if last is not None else ""
        what = "" if sent else "; no further request was sent for these items"
        return ProviderUnavailableError(
            f"the provider failed every call for {self.policy.max_outage:g} s (`max_outage`){what}{detail}",
            status_code=None if last is None or describe_transport(last) else getattr(last, "status_code", None),
        )

    async def admit(self, give_up_at: float | None = None) -> None:
        """Return when calls may go; wait while the breaker is open.

        Raises:
            ProviderUnavailableError: the outage clock ran out (or `give_up_at`, loop time, passed) first.
        """
        if self.state == "closed":
            return
        self._waiting += 1
        try:
            while not self.is_closed():  # (a method: the state changes while this waits)
                deadline = self._give_up_at() if give_up_at is None else min(give_up_at, self._give_up_at())
                if self.state == "open" and self.now() >= self._give_up_at():
                    self._go_down()
                if self.state == "down" and await self._probe_when_due():
                    continue  # the provider answers again
                if self.state == "down" or self.now() >= deadline:
                    raise self._unavailable(sent=False)
                self._ensure_prober()
                await self._wait(deadline - self.now())
        finally:
            self._waiting -= 1
            self._notify()
            if self._waiting == 0:
                await self._stop_prober()

    async def _stop_prober(self) -> None:
        """The last waiting call left (it gave up, or was cancelled): a probe still under way is cancelled and
        awaited (the shell records it and charges its prompt), so no probe outlives the calls that wanted it or
        holds budget after their run."""
        prober = self._prober
        if prober is None or prober.done() or prober is asyncio.current_task():
            return
        prober.cancel()
        await asyncio.wait({prober})

    async def _probe_when_due(self) -> bool:
        """Once the clock ran out: this call probes, if no probe ran for a probe interval and none is under way
        (calls meanwhile fail at once); whether it got through. The call itself probes, so that no probe task
        outlives the calls that wanted it."""
        if self._probe is None or self._probing or self.now() < self._next_probe_at:
            return False
        self._probing = True
        try:
            return await self._probe_once(self._probe)
        finally:
            self._probing = False

    def _ensure_prober(self) -> None:
        if self._prober is None and self._probe is not None and self.state == "open":
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_closed())

    async def _probe_until_closed(self) -> None:
        """While calls wait: probe with doubling waits, release the calls on the first answer (each probe is the
        one the latest waiting call gave: a call of its run's shell)."""
        try:
            while self.state == "open":
                deadline = self.now() + self._interval
                while self.state == "open" and self._waiting > 0 and self.now() < deadline:
                    await self._wait(deadline - self.now())
                if self.state != "open" or self._waiting == 0:
                    return  # closed, gone down, or nobody waits: the next waiting call starts probing again
                self._probing = True
                try:
                    if self._probe is not None and await self._probe_once(self._probe):
                        return
                finally:
                    self._probing = False
        finally:
            self._prober = None

    async def _probe_once(self, probe: Probe) -> bool:
        self.probes += 1
        try:
            await probe()
        except Exception as exc:  # noqa: BLE001 - any provider or transport error; classified here
            if classify_error(exc) == "transient" or isinstance(exc, BudgetExceededError):  # unsent: try later
                self._next_probe_at = self.now() + self._interval
                self._interval = min(self._interval * 2, self.policy.max_probe_interval)
                log.info("probe failed (%s); next in %.1f s", describe_call_error(exc), self._interval)
                return False
        self.answered = True
        self.recoveries += 1
        self.recovering = True  # any answer, even a refusal, shows the provider is reachable again
        self.close()
        return True

    async def _wait(self, seconds: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- one guarded call -----------------------------------------------------------------------------

    async def call(
        self,
        retry: RetryPolicy,
        attempt: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException], None],
        probe: Probe,
        *,
        own_limits: bool = False,
    ) -> T:
        """Run `attempt` with `retry`'s retries, behind the shared back-off, the outage clock and the breaker;
        `probe` makes a tiny request to the same provider (used while the breaker is open). `own_limits`: a 429 is
        the attempt's endpoint's own rate limit (the Batch API's), retried, then raised: no outage, no shared wait.

        Raises:
            ProviderUnavailableError: the provider failed every call for `max_outage`.
            ProviderUnreachableError: the provider never answered and refuses connections (configuration).
            Exception: a non-transient error of the call (auth, bad request, context, ...).
        """
        self._probe = probe

        async def paced() -> T:
            return await self._paced(retry, attempt, own_limits)

        while True:
            await self.admit()
            try:
                return await retry.run(paced, on_retry)
            except _Stop as stop:
                if stop.cause is None:
                    continue
                exc = stop.cause
            except Exception as error:
                if cancelling() or classify_error(error) != "transient" or (own_limits and _limited(error)):
                    raise
                exc = error
            if not self.answered and connect_failure(exc):
                raise ProviderUnreachableError(f"{describe_call_error(exc)}: {UNREACHABLE_HINT}") from exc
            self.open(probe)
            if self.now() >= self._give_up_at():
                self._go_down()
                raise self._unavailable(sent=True) from exc

    async def _paced(self, retry: RetryPolicy, attempt: Callable[[], Awaitable[T]], own_limits: bool = False) -> T:
        """One attempt behind the breaker and the shared back-off; its outcome moves the outage clock."""
        if self.state != "closed":
            raise _Stop  # another call opened the breaker: wait with the others instead of retrying
        await self.pause()
        if self.state != "closed":
            raise _Stop
        try:
            result = await attempt()
        except Exception as exc:  # noqa: BLE001 - classified and re-raised: a 429's wait is shared first
            answered = provider_answered(exc)  # an HTTP status: the provider is reachable
            self.answered = self.answered or answered
            if own_limits and _limited(exc):
                raise  # the endpoint's own rate limit (retried by `retry`): neither an outage nor a real answer
            if classify_error(exc) != "transient":
                if answered:
                    self._succeeded()  # a refusal of this request (auth, bad request, ...), not an outage
                raise
            if not self.answered and connect_failure(exc):
                raise _Stop(exc) from exc  # never answered and nothing listens: configuration, not an outage
            self._failed(exc)
            asked = retry_after_seconds(exc)
            if asked is not None:
                self.back_off(min(asked, retry.max_retry_after))
            if self.recovering:
                raise _Stop(exc) from exc  # one attempt per recovery
            raise
        self._succeeded()
        return result


def _limited(exc: BaseException) -> bool:
    return getattr(exc, "status_code", None) == 429
