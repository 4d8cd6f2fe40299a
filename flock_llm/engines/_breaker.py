"""A provider that is down or rate-limiting slows every call to it; it does not multiply them.

`ProviderGuard` is one engine's view of its provider:
- a shared back-off: a 429 that names a wait (Retry-After) pauses every call of the engine, not just the
  one retried;
- a circuit breaker: when a call has used up its retries on transient errors (5xx, timeouts, refused
  connections), the breaker opens. While it is open, calls wait (their batches stay pending; durable
  stores keep them) and the guard probes the provider with a tiny request (one token), first after
  `probe_interval`, then twice as long after each failed probe (up to `max_probe_interval`). The first
  probe that gets through closes the breaker and the waiting calls go on. A call that has waited
  `max_outage` in all gives up with ProviderUnavailableError and its items become failure records with
  stage "provider_unavailable" (the ladder does not fan out into per-item calls for transport failures).

So a batch costs at most `retry.attempts` calls before the breaker opens and one more once it closes;
the probes are the breaker's own (one at a time, a few tokens each, shared by every waiting batch).
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
State = Literal["closed", "open"]
Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """How long calls wait for a provider that is down, and how often it is probed meanwhile."""

    max_outage: float = 300.0
    """Seconds a call waits in all for the provider to come back; then its items fail ("provider_unavailable")."""
    probe_interval: float = 2.0
    """Seconds after the breaker opens until the first probe."""
    max_probe_interval: float = 15.0
    """The wait between probes doubles after each failed probe, up to this."""

    def __post_init__(self) -> None:
        for name in ("max_outage", "probe_interval", "max_probe_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"`{name}` must be a positive number of seconds, got {value!r}")


class ProviderGuard:
    """The circuit breaker and shared back-off of one engine (see the module docstring)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state: State = "closed"
        self._not_before = 0.0
        self._changed: asyncio.Event | None = None
        """Set (and replaced) whenever the state or the number of waiting calls changes."""
        self._waiting = 0
        self._probe: Probe | None = None
        self._prober: asyncio.Task[None] | None = None
        self.opened = 0
        """How many times the breaker opened."""
        self.probes = 0
        """Probe requests sent (a few tokens each)."""
        self._unclaimed = 0

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def take_probes(self) -> int:
        """Probes sent since the last call took them: each probe is counted once, in the usage of a run that
        waited for it."""
        taken, self._unclaimed = self._unclaimed, 0
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

    # -- the breaker ------------------------------------------------------------------------------

    def open(self, probe: Probe) -> None:
        """A call used up its retries on transient errors: open the breaker and start probing."""
        self._probe = probe
        if self.state == "closed":
            self.state = "open"
            self.opened += 1
            log.warning(
                "the provider keeps failing: circuit breaker open; calls wait (up to %g s), probing from %g s on",
                self.policy.max_outage,
                self.policy.probe_interval,
            )
        self._ensure_prober()

    def close(self) -> None:
        if self.state == "open":
            log.warning("the provider answers again: circuit breaker closed")
        self.state = "closed"
        self._notify()

    async def admit(self, give_up_at: float) -> None:
        """Wait while the breaker is open.

        Raises:
            ProviderUnavailableError: it stayed open until `give_up_at`.
        """
        if self.state == "closed":
            return
        self._waiting += 1
        try:
            while self.state == "open":
                remaining = give_up_at - self.now()
                if remaining <= 0:
                    raise ProviderUnavailableError(
                        f"the provider failed every call for {self.policy.max_outage:g} s (`max_outage`); "
                        "these items were not sent again"
                    )
                self._ensure_prober()
                await self._wait(remaining)
        finally:
            self._waiting -= 1
            self._notify()

    def _ensure_prober(self) -> None:
        if self._prober is None and self._probe is not None and self.state == "open":
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_closed(self._probe))

    async def _probe_until_closed(self, probe: Probe) -> None:
        """Probe with doubling waits while somebody waits; close the breaker on the first answer."""
        interval = self.policy.probe_interval
        try:
            while self.state == "open":
                deadline = self.now() + interval
                while self.state == "open" and self._waiting > 0 and self.now() < deadline:
                    await self._wait(deadline - self.now())
                if self.state != "open" or self._waiting == 0:
                    return  # closed by a call, or nobody waits: the next waiting call starts probing again
                self.probes += 1
                self._unclaimed += 1
                try:
                    await probe()
                except Exception as exc:  # noqa: BLE001 - any provider or transport error; classified here
                    if classify_error(exc) == "transient":
                        interval = min(interval * 2, self.policy.max_probe_interval)
                        log.info("probe failed (%s); next in %.1f s", type(exc).__name__, interval)
                        continue
                self.close()  # any answer, even a refusal, shows the provider is reachable again
        finally:
            self._prober = None

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
    ) -> T:
        """Run `attempt` with `retry`'s retries, behind the shared back-off and the breaker; `probe` makes a
        tiny request to the same provider (used while the breaker is open).

        Raises:
            ProviderUnavailableError: the provider stayed down for `max_outage`.
            Exception: a non-transient error of the call (auth, bad request, context, ...); or a transient one
                when the call failed again after the provider had come back (not an outage: the ladder decides).
        """
        give_up_at = self.now() + self.policy.max_outage

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
                await self.admit(give_up_at)
            except ProviderUnavailableError as exc:
                raise (exc if last is None else self._gave_up(last)) from last
            try:
                result = await retry.run(paced, on_retry)
            except Exception as exc:
                if classify_error(exc) != "transient" or last is not None and self.state == "closed":
                    raise
                last = exc
                self.open(probe)
                if self.now() >= give_up_at:
                    raise self._gave_up(exc) from exc
                continue
            self.close()
            return result

    def _gave_up(self, last: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"the provider failed every call for {self.policy.max_outage:g} s (`max_outage`); last error: "
            f"{describe_call_error(last)}",
            status_code=getattr(last, "status_code", None),
        )
