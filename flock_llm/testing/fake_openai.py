"""A fake OpenAI-compatible chat server on 127.0.0.1, for end-to-end tests and benchmarks.

It understands flock_llm's prompts: it finds the `<item id=...>` blocks,
answers in the requested shape (one report, or one result per item id),
takes a configurable time per request, and can inject malformed answers
and 429s at fixed rates (seeded, so runs are repeatable).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..engines._placeholder import placeholder_answer

__all__ = ["FakeOpenAIServer"]


@dataclass
class FakeOpenAIServer:
    """Start with `with FakeOpenAIServer(latency_s=0.1) as server:`; point litellm at `server.api_base`."""

    latency_s: float = 0.05
    per_item_latency_s: float = 0.002
    malformed_rate: float = 0.0
    rate_limit_rate: float = 0.0
    fail_status: int | None = None
    """Answer every request with this HTTP error status (e.g. 500 for a provider that is down, 401)."""
    seed: int = 7
    down_until: float = 0.0
    """`time.monotonic()` until which every request gets a 503 (see `outage()`)."""
    failed_sent: int = 0
    stall_after: int | None = None
    """Requests after this many hang for `stall_s` before answering (a provider that stops responding)."""
    stall_s: float = 60.0
    probes: int = 0
    """Requests of one token (circuit breaker probes), also counted in `requests`."""
    requests: int = 0
    malformed_sent: int = 0
    rate_limited_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _answered_requests: int = field(default=0, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    @property
    def api_base(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def stall(self, answered: int) -> float:
        """Extra seconds this request waits (the requests after `stall_after` hang)."""
        with self._lock:
            self._answered_requests += 1
            stalls = self.stall_after is not None and self._answered_requests > self.stall_after
        return self.stall_s if stalls and answered else 0.0

    def count_probe(self) -> None:
        with self._lock:
            self.probes += 1

    def outage(self, seconds: float) -> None:
        """Answer 503 to every request for the next `seconds`."""
        self.down_until = time.monotonic() + seconds

    def fault(self, is_repair: bool) -> str | None:
        """ "429", "malformed", an error status or None for the next request (repairs are answered properly)."""
        with self._lock:
            self.requests += 1
            if self.fail_status is not None or time.monotonic() < self.down_until:
                self.failed_sent += 1
                return str(self.fail_status or 503)
            roll = self._random.random()
            if roll < self.rate_limit_rate:
                self.rate_limited_sent += 1
                return "429"
            if not is_repair and roll < self.rate_limit_rate + self.malformed_rate:
                self.malformed_sent += 1
                return "malformed"
        return None

    def answer(self, request: dict[str, Any]) -> tuple[str, int]:
        """The answer text and how many items it answers."""
        answer = placeholder_answer(request.get("messages", []), request.get("response_format"))
        if isinstance(answer, dict) and isinstance(answer.get("results"), list):
            return json.dumps(answer), len(answer["results"])
        return json.dumps(answer), 1


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Silence per-request logging."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length) or b"{}")
        fault = self.fake.fault(is_repair=len(request.get("messages", [])) > 2)
        if request.get("max_tokens") == 1:  # a circuit breaker's probe: a tiny request, answered at once
            self.fake.count_probe()
            content, answered = ("ok", 0)
        else:
            content, answered = self.fake.answer(request)
        time.sleep(self.fake.latency_s + self.fake.per_item_latency_s * answered + self.fake.stall(answered))
        if fault == "429":
            self._send(
                429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}}, {"retry-after-ms": "50"}
            )
            return
        if fault is not None and fault.isdigit() and fault != "429":
            self._send(int(fault), {"error": {"message": "the fake provider fails", "type": "server_error"}})
            return
        if fault == "malformed":
            content = content[: len(content) // 2]
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in request.get("messages", [])) // 4
        completion_tokens = len(content) // 4
        self._send(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "fake"),
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
