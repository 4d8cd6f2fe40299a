"""`flock-llm reviews --model local[:NAME]`: a small model served on this machine for the run (see
`flock_llm.testing.local_server`), started before the first review and stopped after the last.

The run owns the server's process: if it exits mid-run (killed, crashed, out of memory), nothing will answer
again, so the calls in flight and every later one fail at once with what happened (`UntilServerExits`), instead
of waiting behind the circuit breaker for a provider that cannot come back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ..artifact import Artifact
from ..engines import Engine, EngineContext, EvalInputs, EvalResult, ItemFailure, Usage, cancelled_usage
from ..errors import ProviderUnavailableError

__all__ = ["LOCAL", "LOCAL_REQUEST_TIMEOUT_S", "UntilServerExits", "estimate_settings", "serve_local", "watched"]

LOCAL = "local"
LOCAL_REQUEST_TIMEOUT_S = 600.0
"""The least --request-timeout with --model local (a small model on a CPU: a batched request may take minutes)."""
WATCH_INTERVAL_S = 0.2
"""How often a call in flight checks that the local server still runs."""

log = logging.getLogger("flock_llm.cli")

Exited = Callable[[], "str | None"]
"""None while the server runs; once it has exited, how (`LocalModel.exited`)."""


def local_name(model: str | None) -> str | None:
    """The local model a `--model` value asks for ("local" is the default one), or None."""
    if model == LOCAL:
        from ..testing.local_server import DEFAULT_LOCAL_MODEL

        return DEFAULT_LOCAL_MODEL
    if model and model.startswith(LOCAL + ":"):
        return model[len(LOCAL) + 1 :]
    return None


def estimate_settings(model: str | None) -> tuple[str | None, dict[str, Any]]:
    """(model, LLMEngine settings) that render and count a run's prompts as a run of `model` sends them, with no
    server started: for `local[:NAME]`, the name its server serves and the local engine settings."""
    name = local_name(model)
    if name is None:
        return model, {}
    from ..testing.local_server import ENGINE_SETTINGS, served_name

    return f"openai/{served_name(name)}", dict(ENGINE_SETTINGS)


@contextlib.contextmanager
def serve_local(
    model: str | None, *, needed: bool = True
) -> Iterator[tuple[str | None, dict[str, Any], Exited | None]]:
    """(model, LLMEngine settings, the server's `exited` check) for the run: for `local[:NAME]` a running local
    server's (none is started when the run has nothing to send, `needed=False`), else `model` as is."""
    name = local_name(model)
    if name is None:
        yield model, {}, None
        return
    if not needed:
        yield estimate_settings(model) + (None,)
        return
    from ..testing.local_server import local_model

    with local_model(name) as server:
        said: list[bool] = []

        def exited() -> str | None:
            reason = server.exited()
            if reason is not None and not said:
                said.append(True)
                log.warning("%s; its log's last lines: %s", reason, server.last_log_lines())
            return reason

        yield server.model, server.settings, exited


class UntilServerExits(Engine):
    """Passes calls to `inner` while the local server runs; once it has exited, the call in flight is cancelled
    and it and every later call fail at once (stage "provider_unavailable", the error saying how it exited)."""

    def __init__(self, inner: Engine, exited: Exited, interval: float = WATCH_INTERVAL_S) -> None:
        self.inner = inner
        self.exited = exited
        self.interval = interval
        self._calls: set[asyncio.Future[EvalResult]] = set()

    def item_tokens(self, ctx: EngineContext, artifact: Artifact) -> int:
        return self.inner.item_tokens(ctx, artifact)

    def batch_token_budget(self, ctx: EngineContext, size: int | None) -> int | None:
        return self.inner.batch_token_budget(ctx, size)

    async def evaluate(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self._watched(inputs, self.inner.evaluate(ctx, inputs))

    async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
        return await self._watched(inputs, self.inner.evaluate_batch(ctx, inputs))

    async def _watched(self, inputs: EvalInputs, call: Coroutine[Any, Any, EvalResult]) -> EvalResult:
        reason = self.exited()
        if reason is not None:
            call.close()
            return self._failed(inputs, reason, "nothing was sent", Usage())
        with cancelled_usage() as lost:  # what the call used if it is cancelled (the task sees this block's)
            task = asyncio.ensure_future(call)
        self._calls.add(task)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.interval)
                if not task.done() and self.exited() is not None:
                    self._cancel_all()
                    await asyncio.wait({task})  # (a cancellation of this call itself still propagates)
        except BaseException:  # cancelled (Ctrl-C, shutdown): the call goes with it
            task.cancel()
            raise
        finally:
            self._calls.discard(task)
        reason = self.exited()
        if reason is None or not (task.cancelled() or task.exception() is not None):
            return task.result()  # answered before the server went (or the server runs)
        # whatever the dead server's call ended with (cancelled, or an error of its own) is superseded
        return self._failed(inputs, reason, "its call was in flight", lost)

    def _cancel_all(self) -> None:
        """The server is gone: every call on it is cancelled at once. One at a time, a call waiting for the request
        slot (one request at a time) would take the slot a cancelled call leaves and start a request to the dead
        server before its own watch looks: counted as sent, and cancelled inside litellm, which drops the request
        it was building (a "coroutine ... was never awaited" warning)."""
        for task in self._calls:
            task.cancel()

    @staticmethod
    def _failed(inputs: EvalInputs, reason: str, what: str, usage: Usage) -> EvalResult:
        """The inputs fail with how the server exited; `usage` is what the cancelled call had used (its requests
        went out: they are counted in the run's totals like any other)."""
        error = ProviderUnavailableError(f"{reason} during the run; {what}, and it cannot answer any more")
        ids = [a.id for a in inputs.artifacts]
        usage.items = usage.failed_items = len(ids)
        failure = ItemFailure.from_exception(error, ids, stage="provider_unavailable")
        return EvalResult(failures=(failure,), usage=usage.as_dict())


def watched(engine: Engine, exited: Exited | None) -> Engine:
    """`engine`, failing its calls at once once the run's local model server has exited (`exited`: the server's
    check, None when no local server runs: `engine` as it is)."""
    return engine if exited is None else UntilServerExits(engine, exited)
