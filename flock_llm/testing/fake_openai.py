"""A fake OpenAI-compatible chat server on 127.0.0.1, for end-to-end tests and benchmarks.

It understands flock_llm's prompts: it finds the `<item id=...>` blocks,
answers in the requested shape (one report, or one result per item id),
takes a configurable time per request, and can inject malformed answers
and 429s at fixed rates (seeded, so runs are repeatable); with `degrade=DegradingModel(...)` its answers go
wrong with batch size and position like real models' (`flock_llm.testing.degrade`).

Tokens are counted with litellm's tokenizer (cl100k_base, as flock_llm counts for models litellm does not know).
It can enforce a context window (400 `context_length_exceeded` when the prompt and the requested `max_tokens` do
not fit; answers longer than the room left are cut off with `finish_reason == "length"`), a tokens-per-minute
limit (a sliding 60 s window of prompt + completion tokens; 429 with `Retry-After`), and report
`prompt_tokens_details.cached_tokens` when a request repeats the system message and response schema of an
earlier one (that prefix, in 128-token steps, once it is at least `cache_min_tokens` long, like OpenAI).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..engines.offline import placeholder_answer
from .degrade import DegradingModel
from .fake_batches import FakeBatches

__all__ = ["FakeOpenAIServer"]


@dataclass
class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers flock_llm's prompts, with injectable faults.

    Start it with `with FakeOpenAIServer(latency_s=0.1) as server:` and point litellm at `server.api_base`
    (any `api_key`). The fields below configure it (pass them as keyword arguments) or count what it saw.
    """

    latency_s: float = 0.05
    """Seconds every answer waits."""
    per_item_latency_s: float = 0.002
    """Extra seconds per item the request carries."""
    malformed_rate: float = 0.0
    """The share of (non-repair) requests answered with JSON that does not parse."""
    rate_limit_rate: float = 0.0
    """The share of requests answered 429 with a Retry-After."""
    fail_status: int | None = None
    """Answer every request with this HTTP error status (e.g. 500 for a provider that is down, 401)."""
    refuse_calls_status: int | None = None
    """Answer every request but a one-token probe with this status (429: a quota that refuses real calls while a
    circuit breaker's probe still fits); counted in `requests` and `refused_calls`."""
    refused_calls: int = 0
    """Real calls refused with `refuse_calls_status` so far."""
    seed: int = 7
    """Seeds the random choice of malformed and rate-limited answers (runs repeat exactly)."""
    down_until: float = 0.0
    """`time.monotonic()` until which every request gets a 503 (see `outage()`)."""
    failed_sent: int = 0
    """Requests answered with `fail_status` or 503 (counted)."""
    stall_after: int | None = None
    """Requests after this many hang for `stall_s` before answering (a provider that stops responding)."""
    stall_s: float = 60.0
    """How long a stalled request hangs."""
    probes: int = 0
    """Requests of one token (circuit breaker probes), also counted in `requests`."""
    context_limit: int | None = None
    """Tokens per request (prompt + max_tokens); None: no limit."""
    tokens_per_minute: int | None = None
    """Prompt + completion tokens per sliding 60 s; None: no limit."""
    cache_min_tokens: int = 1024
    """The shortest repeated prompt prefix reported as cached (OpenAI's rule: 1,024 tokens)."""
    flex_unavailable_until: float = 0.0
    """`time.monotonic()` until which flex-tier requests get 429 "resource unavailable"."""
    flex_requests: int = 0
    """Flex-tier requests received (counted)."""
    flex_refused: int = 0
    """Flex-tier requests refused as "resource unavailable" (counted)."""
    context_rejected: int = 0
    """Requests refused with 400 `context_length_exceeded` (counted)."""
    truncated_sent: int = 0
    """Answers cut off at the room the context left (`finish_reason` "length"; counted)."""
    tpm_rejected: int = 0
    """Requests refused with 429 by the tokens-per-minute limit (counted)."""
    prompt_tokens_total: int = 0
    """Prompt tokens of every answered request (counted)."""
    cached_tokens_total: int = 0
    """Of those, the tokens reported as cached (counted)."""
    prefixes: Counter[str] = field(default_factory=Counter)
    """How many requests carried each (system message, response schema) prefix, by hash."""
    token_log: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, tokens) of every answered request: the measured load."""
    _window: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    batches: FakeBatches = field(default=None, repr=False)  # type: ignore[assignment]
    """The Batch API (`/v1/files`, `/v1/batches`): see `flock_llm.testing.fake_batches`."""
    degrade: DegradingModel | None = None
    """Answers that go wrong with batch size and position, and can drift (see `flock_llm.testing.degrade`)."""
    requests: int = 0
    """Chat requests received, probes included (counted)."""
    malformed_sent: int = 0
    """Malformed answers sent (counted)."""
    rate_limited_sent: int = 0
    """429 answers sent by `rate_limit_rate` (counted)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _answered_requests: int = field(default=0, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        if self.batches is None:
            self.batches = FakeBatches(self)

    @property
    def api_base(self) -> str:
        """The base URL to give litellm (`api_base=` or `OPENAI_API_BASE`): `http://127.0.0.1:PORT/v1`."""
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
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
        """Count a one-token request (a circuit breaker's probe)."""
        with self._lock:
            self.probes += 1

    def failing(self) -> int | None:
        """The error status every request gets now (`fail_status`, or 503 during an outage), else None."""
        if self.fail_status is not None:
            return self.fail_status
        return 503 if time.monotonic() < self.down_until else None

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

    def tally(self, **counts: int) -> None:
        """Add to counters (from the server's threads)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    # -- tokens ------------------------------------------------------------------------------------------

    @staticmethod
    def count(messages: list[dict[str, Any]] | None = None, text: str | None = None) -> int:
        """Tokens of chat `messages` or of a `text`, as the server counts them (the offline model's tokenizer).

        Args:
            messages: the request's chat messages.
            text: a text, counted instead of `messages` when given.
        """
        from ..engines import load_litellm
        from ..engines.offline import OFFLINE_TOKEN_MODEL

        litellm = load_litellm()
        if text is not None:
            return len(litellm.encode(model=OFFLINE_TOKEN_MODEL, text=text))
        return int(litellm.token_counter(model=OFFLINE_TOKEN_MODEL, messages=messages or []))

    def cached(self, request: dict[str, Any]) -> int:
        """The prompt tokens served from cache: the system message and schema, if an earlier request had them."""
        system = next((str(m.get("content", "")) for m in request.get("messages", []) if m.get("role") == "system"), "")
        prefix = system + json.dumps(request.get("response_format"), sort_keys=True)
        key = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        with self._lock:
            seen = self.prefixes[key] > 0
            self.prefixes[key] += 1
        tokens = self.count(text=prefix)
        return (tokens // 128) * 128 if seen and tokens >= self.cache_min_tokens else 0

    def admit(self, tokens: int) -> float:
        """Charge `tokens` to the minute window; 0.0 when admitted, else the seconds until they would fit."""
        if self.tokens_per_minute is None:
            return 0.0
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0][0] <= now - 60.0:
                self._window.popleft()
            used = sum(t for _, t in self._window)
            if used + tokens <= self.tokens_per_minute:
                self._window.append((now, tokens))
                return 0.0
            self.tpm_rejected += 1
            freed, wait = used + tokens - self.tokens_per_minute, 1.0
            for at, spent in self._window:
                freed -= spent
                if freed <= 0:
                    wait = at + 60.0 - now
                    break
            return max(0.05, wait)

    def settle(self, charged: int, actual: int) -> None:
        """Replace a request's charge with its real tokens, and log them.

        Args:
            charged: the tokens the request was charged in the sliding minute when it came in.
            actual: the tokens it really used (prompt + answer).
        """
        with self._lock:
            if self.tokens_per_minute is not None and charged != actual:
                self._window.append((time.monotonic(), actual - charged))
            self.token_log.append((time.monotonic(), actual))

    def peak_tokens_per_minute(self) -> int:
        """The most tokens answered within any 60 s of the log."""
        log = sorted(self.token_log)
        best = start = total = 0
        for end in range(len(log)):
            total += log[end][1]
            while log[end][0] - log[start][0] > 60.0:
                total -= log[start][1]
                start += 1
            best = max(best, total)
        return best

    def complete(self, request: dict[str, Any], content: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The HTTP answer (status, body, headers) to a chat request whose answer text is `content`: the
        context limit, cutting off at the room left, the tokens-per-minute limit, cached tokens.

        Args:
            request: the chat request's JSON body.
            content: the answer text the server would give with no limits.
        """
        prompt_tokens = self.count(request.get("messages", []))
        asked = request.get("max_tokens") or request.get("max_completion_tokens")
        room = self.context_limit - prompt_tokens if self.context_limit is not None else None
        if room is not None and (room <= 0 or (isinstance(asked, int) and asked > room)):
            self.tally(context_rejected=1)
            message = (
                f"This model's maximum context length is {self.context_limit} tokens. However, you requested "
                f"{prompt_tokens + (asked or 0)} tokens ({prompt_tokens} in the messages, {asked or 0} in the "
                "completion). Please reduce the length of the messages or completion."
            )
            error = {"message": message, "type": "invalid_request_error", "code": "context_length_exceeded"}
            return 400, {"error": error}, {}
        limits = [x for x in (asked if isinstance(asked, int) else None, room) if x is not None]
        limit = min(limits) if limits else None
        completion_tokens, finish = self.count(text=content), "stop"
        if limit is not None and completion_tokens > limit:
            content = _cut(content, limit)
            completion_tokens, finish = limit, "length"
            self.tally(truncated_sent=1)
        charged = prompt_tokens + completion_tokens  # (OpenAI also counts max_tokens; this fake counts real use)
        wait = self.admit(charged)
        if wait:
            error = {"message": "Rate limit reached for tokens per min", "type": "tokens"}
            return 429, {"error": error}, {"retry-after": f"{wait:.2f}"}
        cached = self.cached(request)
        self.settle(charged, prompt_tokens + completion_tokens)
        self.tally(prompt_tokens_total=prompt_tokens, cached_tokens_total=cached)
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
        return 200, body, {}

    def answer(self, request: dict[str, Any]) -> tuple[str, int]:
        """The answer text and how many items it answers."""
        answer = placeholder_answer(request.get("messages", []), request.get("response_format"))
        if self.degrade is not None:
            answer = self.degrade.apply(answer, request.get("messages", []))
        if isinstance(answer, dict) and isinstance(answer.get("results"), (list, dict)):
            return json.dumps(answer), len(answer["results"])
        return json.dumps(answer), 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a cancelled or timed-out request) is no error; anything else still prints."""
        if not isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset, ConnectionAborted
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Silence per-request logging."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        length = int(self.headers.get("content-length", 0))
        raw = self.rfile.read(length)
        path = self.path.split("?")[0].rstrip("/")
        if not path.endswith("/chat/completions"):
            self._send(*self.fake.batches.post(path, raw, self.headers.get("content-type", "")))
            return
        request = json.loads(raw or b"{}")
        if request.get("service_tier") == "flex":
            self.fake.tally(flex_requests=1)
            if time.monotonic() < self.fake.flex_unavailable_until:
                self.fake.tally(flex_refused=1)
                error = {"message": "Resource unavailable: flex capacity", "code": "resource_unavailable"}
                self._send(429, {"error": {**error, "type": "rate_limit"}}, {"retry-after": "0.05"})
                return
        refuse = self.fake.refuse_calls_status
        if refuse is not None and request.get("max_tokens") != 1:
            self.fake.tally(requests=1, refused_calls=1)
            error = {"message": "the fake provider refuses this call", "type": "rate_limit", "code": str(refuse)}
            self._send(refuse, {"error": error}, {"retry-after-ms": "20"})
            return
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
        self._send(*self.fake.complete(request, content))

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        status, payload, headers = self.fake.batches.get(self.path.split("?")[0].rstrip("/"))
        if isinstance(payload, bytes):
            self.send_response(status)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _cut(text: str, tokens: int) -> str:
    """The first `tokens` tokens of `text` (an answer cut off at the length limit)."""
    from ..engines import load_litellm
    from ..engines.offline import OFFLINE_TOKEN_MODEL

    litellm = load_litellm()
    return str(
        litellm.decode(model=OFFLINE_TOKEN_MODEL, tokens=litellm.encode(model=OFFLINE_TOKEN_MODEL, text=text)[:tokens])
    )
