"""The fake OpenAI server keeps quiet when a client hangs up (a cancelled or timed-out request) and still prints
the traceback of a real error in its handler, so a test's output shows only what matters."""

from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from flock_llm.testing import FakeOpenAIServer

BODY = b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}'


def _post(port: int, body: bytes) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    client.sendall(head + body)
    return client


def _handlers_done(server: FakeOpenAIServer, timeout: float = 60.0) -> None:
    """Wait until this server has no request thread left (each request runs in a thread of its own; other tests'
    servers in this process may still have theirs)."""

    def ours(thread: threading.Thread) -> bool:
        target = getattr(thread, "_target", None)
        return getattr(target, "__func__", None) is ThreadingHTTPServer.process_request_thread and (
            getattr(target, "__self__", None) is server._server
        )

    deadline = time.monotonic() + timeout
    while any(ours(t) for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a request thread never finished"
        time.sleep(0.01)


def test_a_client_hanging_up_prints_nothing_and_a_real_error_still_prints(capfd: pytest.CaptureFixture[str]) -> None:
    # every request waits 0.2 s, then gets a 500 (no tokenizer to load): the client is gone by then
    with FakeOpenAIServer(latency_s=0.2, fail_status=500) as server:
        port = int(server.api_base.split(":")[2].split("/")[0])
        for _ in range(3):  # the client resets the connection before the answer is written
            client = _post(port, BODY)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        deadline = time.monotonic() + 60
        while server.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        _handlers_done(server)
        assert server.requests == 3  # the server did handle them and failed to write the answers
        quiet = capfd.readouterr().err
        assert "Traceback" not in quiet and "BrokenPipe" not in quiet and "ConnectionReset" not in quiet, quiet

        with _post(port, b"{not json") as client:  # a bug in the handler's path: its traceback must show
            client.settimeout(10)
            assert client.recv(1024) == b""  # the server closed the connection without an answer
        _handlers_done(server)
    loud = capfd.readouterr().err
    assert "Traceback" in loud and "JSONDecodeError" in loud, loud
