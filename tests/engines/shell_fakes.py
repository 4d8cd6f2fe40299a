"""A fake provider that also measures what the call shell promises: requests in flight, when each started,
the `max_tokens` each asked for; and engines of every path (tier, rung, DSPy) pointed at it."""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from domain import CustomerReview, ReviewSentiment

from flock_llm import Artifact
from flock_llm.engines import EngineContext, EvalInputs
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines._ladder.engine import LadderEngine
from flock_llm.engines._tiers.jobs import DeferredPolicy
from flock_llm.engines.dspy import DSPyEngine
from flock_llm.engines.llm import LLMEngine
from flock_llm.testing import FakeOpenAIServer
from flock_llm.testing.fake_openai import _Handler, _Server

PATHS = ("standard", "flex", "batch", "repair_and_rung", "dspy")
"""standard, flex and batch tiers; repairs and the per-item rung (the provider leaves one item out of every
multi-item answer); DSPyEngine."""
FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, max_retry_after=0.05)
QUICK_JOBS = DeferredPolicy(job_size=50, job_wait=0.2, quiet=0.1, poll_interval=0.05, max_poll_interval=0.1)
MODEL = "openai/fake-model"
_ITEM = re.compile(r'<item id="[^"]+">(.*?)</item>', re.S)


@dataclass
class Provider(FakeOpenAIServer):
    """FakeOpenAIServer measuring its requests (in flight and starts: chat and batch-job requests alike); with
    `leave_one_out`, a multi-item answer lacks its last
        item (so a repair follows, then the per-item rung for that item)."""

    leave_one_out: bool = False
    long_answers: int = 0
    """Answer with this many tokens of padding (cut off at the request's max_tokens)."""
    flex_busy_s: float = 0.0
    """The flex tier is "resource unavailable" for this long from the first chat request on."""
    flex_refusals: int = 0
    """The flex tier is "resource unavailable" for this many requests (the first ones), however slowly they come
    (for one request at a time: the fake decides as it counts a request and refuses it a moment later)."""
    chat_requests: int = 0
    job_requests: int = 0
    """A batch job's own requests (file upload, batch create, retrieve, download, cancel)."""
    job_headers: list[dict[str, str]] = field(default_factory=list)
    """The HTTP headers of each of them."""
    in_flight: int = 0
    """Requests of either kind in flight."""
    peak_in_flight: int = 0
    starts: list[float] = field(default_factory=list)
    max_tokens_asked: list[Any] = field(default_factory=list)

    def __enter__(self) -> Provider:
        fake = self

        class Measured(_Handler):
            counted = False  # this request is in `in_flight`

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
                chat = self.path.split("?")[0].rstrip("/").endswith("/chat/completions")
                fake.begin(chat, {k.lower(): v for k, v in self.headers.items()})
                self.counted = True
                try:
                    super().do_POST()
                finally:
                    self.answered()

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
                fake.begin(False, {k.lower(): v for k, v in self.headers.items()})
                self.counted = True
                try:
                    super().do_GET()
                finally:
                    self.answered()

            def end_headers(self) -> None:
                self.answered()  # before the answer goes out: its client may send its next request once it has it
                super().end_headers()

            def answered(self) -> None:
                if self.counted:
                    self.counted = False
                    fake.end()

        Measured.fake = self
        self._server = _Server(("127.0.0.1", 0), Measured)  # (a client that hung up is no error)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def begin(self, chat: bool, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            if not chat and headers is not None:
                self.job_headers.append(headers)
            if chat:
                self.chat_requests += 1
            else:
                self.job_requests += 1
            if self.chat_requests == 1 and chat and self.flex_busy_s:
                self.flex_unavailable_until = time.monotonic() + self.flex_busy_s
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.starts.append(time.monotonic())

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def tally(self, **counts: int) -> None:
        super().tally(**counts)
        if counts.get("flex_requests") and self.flex_refusals:  # (the fake checks the window right after this)
            self.flex_unavailable_until = math.inf if self.flex_requests <= self.flex_refusals else 0.0

    def answer(self, request: dict[str, Any]) -> tuple[str, int]:
        with self._lock:
            self.max_tokens_asked.append(request.get("max_tokens"))
        if self.long_answers:
            return json.dumps({"results": [], "padding": "word " * self.long_answers}), 1
        content, answered = super().answer(request)
        user = next((str(m.get("content", "")) for m in request.get("messages", []) if m.get("role") == "user"), "")
        repair = any(m.get("role") == "assistant" for m in request.get("messages", []))
        if self.leave_one_out and repair:  # a repair answers nothing: the item goes on to the per-item rung
            return json.dumps({"results": []}), 0
        if self.leave_one_out and len(_ITEM.findall(user)) > 1:
            answer = json.loads(content)
            if isinstance(answer, dict) and len(answer.get("results") or []) > 1:
                answer["results"] = answer["results"][:-1]
                return json.dumps(answer), answered - 1
        return content, answered

    def gaps(self) -> list[float]:
        starts = sorted(self.starts)
        return [b - a for a, b in zip(starts, starts[1:], strict=False)]


@contextmanager
def provider(path: str) -> Iterator[Provider]:
    with Provider(latency_s=0.0, per_item_latency_s=0.0, leave_one_out=path in ("repair_and_rung", "batch")) as fake:
        fake.batches.completion_delay_s = 0.05
        if path == "flex":
            fake.flex_busy_s = 0.15  # a few refusals, waited out
        yield fake


def engine_for(path: str, fake: Provider, **limits: Any) -> LadderEngine:
    settings: dict[str, Any] = {"api_base": fake.api_base, "api_key": "sk-local-fake", "retry": FAST, **limits}
    if path == "dspy":
        return DSPyEngine(MODEL, per_item=True, **settings)
    tier = {"flex": "flex", "batch": "batch"}.get(path, "standard")
    return LLMEngine(MODEL, per_item=True, structured_output=True, tier=tier, deferred=QUICK_JOBS, **settings)


def batch(n: int, first: int = 0) -> EvalInputs:
    """`n` reviews, numbered from `first`."""
    reviews = [
        CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"review {i}: solid kettle")
        for i in range(first, first + n)
    ]
    return EvalInputs.of(*(Artifact(type_name="CustomerReview", payload=r) for r in reviews))


def context(**kwargs: Any) -> EngineContext:
    return EngineContext(**{"agent_name": "sentiment", "publishes": (ReviewSentiment,), "is_batch": True, **kwargs})


def answered_lines(usage: dict[str, Any]) -> int:
    return int(usage["deferred_requests"]) - int(usage["deferred_failed_lines"])


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait for `condition`, polling every 10 ms (counted in polls: a first call that loads the tokenizer blocks
    the loop for a while on a loaded machine)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")
