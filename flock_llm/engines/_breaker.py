"""A provider that is down or rate-limiting slows every call to it; it does not multiply them.

`ProviderGuard` is one engine's view of its provider:
- a shared back-off: a 429 that names a wait (Retry-After) pauses every call of the engine, not just the
  one retried;
- a circuit breaker: when a call has used up its retries on transient errors (5xx, timeouts, refused
  connections), the breaker opens. While it is open, calls wait (their batches stay pending; durable
  stores keep them); after `probe_interval` one call goes through alone (half-open, a single attempt):
  if it succeeds the breaker closes and everyone goes on, if not it opens again for twice as long (up to
  `max_probe_interval`). A call that has waited `max_outage` in all gives up with ProviderUnavailableError,
  and its items become failure records with stage "provider_unavailable" (the ladder does not fan out
  into per-item calls for transport failures).

The clock is injectable (`time`) so the state machine can be tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from ..errors import ConfigurationError, ProviderUnavailableError
from ._limits import RetryPolicy, classify_error, describe_call_error, retry_after_seconds

__all__ = ["BreakerPolicy", "ProviderGuard"]

log = logging.getLogger("flock_llm.engines")

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """How long calls wait for a provider that is down."""

    max_outage: float = 300.0
    """Seconds a call waits in all for the provider to come back; then its items fail ("provider_unavailable")."""
    probe_interval: float = 2.0
    """Seconds after the breaker opens until one probe call is let through."""
    max_probe_interval: float = 60.0
    """The wait between probes doubles after each failed probe, up to this."""

    def __post_init__(self) -> None:
        for name in ("max_outage", "probe_interval", "max_probe_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"`{name}` must be a positive number of seconds, got {value!r}")


class ProviderGuard:
    """The circuit breaker and shared back-off of one engine (see the module docstring)."""

    def __init__(self, policy: BreakerPolicy, *, time: Callable[[], float] | None = None) -> None:
        self.policy = policy
        self._time = time
        self.state: State = "closed"
        self._reopen_at = 0.0
        self._interval = policy.probe_interval
        self._not_before = 0.0
        self._changed: asyncio.Event | None = None
        self.opened = 0
        """How many times the breaker opened."""
        self.probes = 0

    def now(self) -> float:
        return self._time() if self._time is not None else asyncio.get_running_loop().time()

    # -- the shared back-off ---------------------------------------------------------------------

    def back_off(self, seconds: float) -> None:
        """Every call of this engine waits `seconds` from now (a 429's Retry-After)."""
        self._not_before = max(self._not_before, self.now() + seconds)

    async def pause(self) -> None:
        """Wait out the shared back-off, if any."""
        delay = self._not_before - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- the breaker ------------------------------------------------------------------------------

    async def admit(self, give_up_at: float) -> bool:
        """Wait until a call may be made; True when it is the half-open probe (one attempt only).

        Raises:
            ProviderUnavailableError: the breaker stayed open until `give_up_at`.
        """
        while True:
            if self.state == "closed":
                return False
            now = self.now()
            if self.state == "open" and now >= self._reopen_at:
                self.state = "half_open"
                self.probes += 1
                return True
            wake = self._reopen_at if self.state == "open" else give_up_at
            if now >= give_up_at:
                raise ProviderUnavailableError(
                    f"the provider failed every call for {self.policy.max_outage:g} s (`max_outage`); "
                    "these items were not sent again"
                )
            await self._wait(min(wake, give_up_at) - now)

    def succeeded(self) -> None:
        if self.state != "closed":
            log.warning("the provider answers again: circuit breaker closed")
        self.state = "closed"
        self._interval = self.policy.probe_interval
        self._notify()

    def failed(self, was_probe: bool) -> None:
        """A call used up its retries (or a probe failed) on transient errors: open the breaker."""
        if was_probe:
            self._interval = min(self._interval * 2, self.policy.max_probe_interval)
        if self.state != "open":
            self.opened += 1
            log.warning("the provider keeps failing: circuit breaker open, next probe in %.1f s", self._interval)
        self.state = "open"
        self._reopen_at = self.now() + self._interval
        self._notify()

    def released(self, was_probe: bool) -> None:
        """A probe ended in an error that says nothing about availability (e.g. a bad request)."""
        if was_probe and self.state == "half_open":
            self.state = "open"
            self._reopen_at = self.now()
            self._notify()

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
        self, retry: RetryPolicy, attempt: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], None]
    ) -> T:
        """Run `attempt` with `retry`'s retries, behind the shared back-off and the breaker.

        Raises:
            ProviderUnavailableError: the provider stayed down for `max_outage`.
            Exception: a non-transient error of the call (auth, bad request, context, ...).
        """
        give_up_at = self.now() + self.policy.max_outage
        single = RetryPolicy(
            attempts=1, base_delay=retry.base_delay, max_delay=retry.max_delay, max_retry_after=retry.max_retry_after
        )

        async def paced() -> T:
            await self.pause()
            try:
                return await attempt()
            except Exception as exc:  # noqa: BLE001 - classified and re-raised: a 429's wait is shared first
                asked = retry_after_seconds(exc)
                if asked is not None and classify_error(exc) == "transient":
                    self.back_off(min(asked, retry.max_retry_after))
                raise

        last: BaseException | None = None
        while True:
            try:
                probe = await self.admit(give_up_at)
            except ProviderUnavailableError:
                if last is None:
                    raise
                raise self._gave_up(last) from last
            try:
                result = await (single if probe else retry).run(paced, on_retry)
            except Exception as exc:
                if classify_error(exc) != "transient":
                    self.released(probe)
                    raise
                self.failed(probe)
                last = exc
                if self.now() >= give_up_at:
                    raise self._gave_up(exc) from exc
                continue
            self.succeeded()
            return result

    def _gave_up(self, last: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"the provider failed every call for {self.policy.max_outage:g} s (`max_outage`); last error: "
            f"{describe_call_error(last)}",
            status_code=getattr(last, "status_code", None),
        )
