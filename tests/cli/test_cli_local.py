"""`--model local[:NAME]` names a model served on this machine; a name it does not know is a usage error before
anything starts (the real runs are in tests/e2e/test_local_model.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flock_llm.cli.local import local_name
from flock_llm.cli.main import EXIT_USAGE, main


def test_local_model_names() -> None:
    assert local_name("local") == "smollm2"
    assert local_name("local:gemma3-270m") == "gemma3-270m"
    assert local_name("local:/models/x.gguf") == "/models/x.gguf"
    assert local_name("openai/gpt-4.1-mini") is None and local_name(None) is None


def test_an_unknown_local_model_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "r.jsonl"
    source.write_text('{"id": "R1", "rating": 5, "text": "good"}\n')
    assert main(["reviews", str(source), "--model", "local:nope", "-o", str(tmp_path / "out.jsonl")]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "unknown local model 'nope'" in error and "smollm2" in error
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.usefixtures("cli_in_process")
def test_a_local_run_with_a_store_resumes_under_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store records `local:smollm2` (what the user typed), not the name the local server serves the model
    under, so the same command again resumes instead of being refused as a run of another model; with every
    review finished, it starts no server (before, it loaded the model for ~5 s to ask nothing), and with one
    review changed, it starts one and asks only about that. (The local server is the fake OpenAI server here:
    the real one is in tests/e2e/test_local_model.py.)"""
    import contextlib
    import json
    from collections.abc import Iterator
    from types import SimpleNamespace

    from flock_llm.testing import FakeOpenAIServer

    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    source = tmp_path / "r.jsonl"
    rows = (json.dumps({"id": f"R{i}", "rating": 1 + i % 5, "text": "fine"}) for i in range(4))
    source.write_text("".join(f"{row}\n" for row in rows))
    served: list[str] = []
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:

        @contextlib.contextmanager
        def fake_local(name: str) -> Iterator[SimpleNamespace]:
            served.append(name)
            settings = {"api_base": fake.api_base, "api_key": "sk-local-model", "structured_output": "json_object"}
            yield SimpleNamespace(model="openai/SmolLM2-135M-Instruct.Q4_1", settings=settings, exited=lambda: None)

        monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
        store, out = f"sqlite:///{tmp_path / 'run.db'}", tmp_path / "out.jsonl"
        command = ["reviews", str(source), "--model", "local", "--per-item", "--store", store, "--json"]
        command.append("--no-progress")
        first = main([*command, "-o", str(out)])
        first_summary = json.loads(capsys.readouterr().out)
        again = main([*command, "-o", str(tmp_path / "again.jsonl")])
        captured = capsys.readouterr()
        calls, served_again = fake.requests, list(served)
        lines = source.read_text().splitlines(keepends=True)
        source.write_text("".join(lines[:3]) + lines[3].replace("fine", "bad"))  # R3 changed
        changed = main([*command, "-o", str(tmp_path / "changed.jsonl")])
        changed_summary = json.loads(capsys.readouterr().out)
    assert (first, first_summary["items"], first_summary["failed_items"]) == (0, 4, 0)
    assert first_summary["model"] == "local:smollm2"  # as typed: the summary's advice names a model that works
    assert again == 0, captured.err
    assert "was made with model" not in captured.err
    summary = json.loads(captured.out)
    assert (summary["resumed"], summary["items"], summary["llm_calls"], summary["model"]) == (4, 0, 0, "local:smollm2")
    assert calls == first_summary["llm_calls"]  # nothing asked again
    assert served_again == ["smollm2"]  # nothing left to ask: no server started for it
    labels = [r for r in (tmp_path / "again.jsonl").read_text().splitlines() if '"ReviewLabel"' in r]
    assert len(labels) == 4
    assert (changed, changed_summary["resumed"], changed_summary["items"]) == (0, 3, 1)
    assert served == ["smollm2", "smollm2"]  # a review changed: the server is started for it


def test_a_store_holding_a_pending_review_has_something_left(tmp_path: Path) -> None:
    """A run killed with a batch still open leaves its reviews pending in the store: they are done for the input
    (not published again) but still to be asked, so a resumed local run starts its server for them; a store
    that finished its reviews has nothing left (the decision behind the test above)."""
    import asyncio
    from datetime import timedelta

    from flock_llm.artifact import Artifact
    from flock_llm.cli.resume import anything_left, fingerprint
    from flock_llm.cli.review_types import Review, ReviewLabel
    from flock_llm.cli.reviews import AGENT
    from flock_llm.orchestrator import Flock
    from flock_llm.stores.sqlite import SQLiteStore
    from flock_llm.subscription import BatchSpec

    url = f"sqlite:///{tmp_path / 'run.db'}"
    review = Review(review_id="R1", rating=3, text="fine")

    async def killed_with_an_open_batch() -> None:
        flock = Flock(store=url)
        flock.agent(AGENT).consumes(Review, batch=BatchSpec(size=10, timeout=timedelta(minutes=5))).publishes(
            ReviewLabel
        )
        await flock.start()
        await flock.publish(Artifact(type_name="Review", payload=review))
        assert isinstance(flock.store, SQLiteStore)
        flock.store.close()  # killed: the batch never flushed

    asyncio.run(killed_with_an_open_batch())
    assert anything_left(url, AGENT, {fingerprint(review)})
    assert not anything_left(url, "another_agent", {fingerprint(review)})  # pending for AGENT only


@pytest.mark.usefixtures("cli_in_process")
def test_sigterm_stops_a_run_like_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM (timeout, systemd, docker stop, a CI cancel) finishes the batch in flight, writes it, prints the
    summary and exits 130 with the local server stopped, as Ctrl-C does (before, the process died at once: no
    summary, and the server's log was left in TMPDIR)."""
    import contextlib
    import json
    import os
    import signal
    import threading
    import time
    from collections.abc import Iterator
    from types import SimpleNamespace

    from flock_llm.testing import FakeOpenAIServer

    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    source = tmp_path / "r.jsonl"
    source.write_text("".join(f'{{"id": "R{i}", "rating": 3, "text": "fine"}}\n' for i in range(8)))
    stopped: list[bool] = []
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, stall_after=1, stall_s=1.0) as fake:

        @contextlib.contextmanager
        def fake_local(name: str) -> Iterator[SimpleNamespace]:
            settings = {"api_base": fake.api_base, "api_key": "sk-local-model", "max_concurrent_requests": 1}
            try:
                yield SimpleNamespace(model="openai/SmolLM2-135M-Instruct.Q4_1", settings=settings, exited=lambda: None)
            finally:
                stopped.append(True)

        def terminate_when_the_second_call_hangs() -> None:
            deadline = time.monotonic() + 60
            while fake.requests < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
        out = tmp_path / "out.jsonl"
        killer = threading.Thread(target=terminate_when_the_second_call_hangs)

        def unhandled(signum: int, frame: object) -> None:  # a run that ignores SIGTERM fails here, not pytest
            raise AssertionError("SIGTERM reached no handler of the run")

        previous = signal.signal(signal.SIGTERM, unhandled)
        try:
            killer.start()
            code = main(["reviews", str(source), "--model", "local", "--per-item", "--batch-size", "2", "--json",
                         "--no-progress", "-o", str(out)])  # fmt: skip
            killer.join()
        finally:
            signal.signal(signal.SIGTERM, previous)
        captured = capsys.readouterr()
    assert code == 130, captured.err
    assert "interrupted" in captured.err and "Traceback" not in captured.err
    summary = json.loads(captured.out)
    assert summary["interrupted"] is True and summary["items"] >= 4
    labelled = [i for line in out.read_text().splitlines() for i in json.loads(line)["review_ids"]]
    assert labelled[:4] == ["R0", "R1", "R2", "R3"]  # the first batch, and the one in flight when stopped
    assert len(labelled) == len(set(labelled)) and set(labelled) <= {f"R{i}" for i in range(8)}
    assert stopped == [True]


def test_a_stranger_on_the_local_servers_port_is_not_taken_for_it(tmp_path: Path) -> None:
    """The port local_model() picked may be taken before its server binds it (the server then dies of "address in
    use"): whatever else answers /v1/models there is not our server (findings/local.md F3)."""
    import http.server
    import subprocess
    import sys
    import tempfile
    import threading

    from flock_llm.errors import ConfigurationError
    from flock_llm.testing.local_server import LocalModel, _wait_ready

    class Stranger(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = b'{"object": "list", "data": [{"id": "someone-else", "object": "model"}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    stranger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stranger)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    ours = subprocess.Popen(  # noqa: S603 - stands for our server, which dies of "address in use"
        [sys.executable, "-c", "import sys, time; time.sleep(0.3); print('[Errno 98] address in use'); sys.exit(1)"],
        stdout=(log := tempfile.TemporaryFile()),  # noqa: SIM115 - closed below
        stderr=subprocess.STDOUT,
    )
    try:
        server = LocalModel("smollm2", f"http://127.0.0.1:{stranger.server_address[1]}/v1", ours, log)
        with pytest.raises(ConfigurationError, match=r"exited with status 1: .*address in use"):
            _wait_ready(server, timeout=30)
    finally:
        ours.wait()
        log.close()
        stranger.shutdown()
        stranger.server_close()


def test_a_review_label_is_one_of_the_three_labels() -> None:
    """The label is an enum in the schema, so llama.cpp's grammar lets a small model write only one of the three
    (it wrote review-like sentences into a free string: findings/local.md F4), and validation sends any other
    answer of a hosted model back to the ladder."""
    import pydantic

    from flock_llm.cli.review_types import ReviewLabel
    from flock_llm.engines._ladder.formats import per_item_schema

    pinned = per_item_schema(ReviewLabel.model_json_schema(), ["i1", "i2"])
    for item in ("i1", "i2"):
        assert pinned["properties"]["results"]["properties"][item]["properties"]["label"]["enum"] == [
            "positive", "neutral", "negative"
        ]  # fmt: skip
    with pytest.raises(pydantic.ValidationError):
        ReviewLabel(review_id="R1", label="Average espresso machine, Nothing Special.", reason="")  # type: ignore[arg-type]


@pytest.mark.usefixtures("cli_in_process")
def test_ctrl_c_while_the_local_server_starts_says_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the run exited 130 saying nothing, and a second Ctrl-C killed it while it exited (F5)."""
    import contextlib
    import signal
    from collections.abc import Iterator

    @contextlib.contextmanager
    def starting(name: str) -> Iterator[None]:
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr("flock_llm.testing.local_server.local_model", starting)
    source = tmp_path / "r.jsonl"
    source.write_text('{"id": "R1", "rating": 5, "text": "good"}\n')
    previous = signal.getsignal(signal.SIGINT)
    try:
        code = main(["reviews", str(source), "--model", "local", "--no-progress", "-o", str(tmp_path / "o.jsonl")])
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and ignored
    assert "flock-llm: interrupted" in capsys.readouterr().err


def test_no_usable_temp_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only container without a writable temp dir: a ConfigurationError saying what to set (F9), before
    anything is started."""
    import importlib.util

    from flock_llm.errors import ConfigurationError
    from flock_llm.testing import local_server

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the `local` extra is not installed")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
    with (
        pytest.raises(ConfigurationError, match="set TMPDIR to a writable directory"),
        local_server.local_model(str(model)),
    ):
        pytest.fail("started without a log")


def test_the_server_is_started_by_a_thread_that_outlives_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel kills a server when the thread that started it ends (PR_SET_PDEATHSIG is per thread), so a
    local_model() entered from a worker thread must not start it from that thread (findings/local.md F7)."""
    import importlib.util
    import subprocess
    import threading

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the `local` extra is not installed")
    from flock_llm.testing import local_server

    started_by: list[threading.Thread] = []

    def popen(*args: object, **kwargs: object) -> object:
        started_by.append(threading.current_thread())
        raise OSError("not started in this test")

    monkeypatch.setattr(subprocess, "Popen", popen)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")

    def enter() -> None:
        with pytest.raises(OSError, match="not started"), local_server.local_model(str(model)):
            pass

    caller = threading.Thread(target=enter)
    caller.start()
    caller.join()
    assert len(started_by) == 1 and started_by[0] is not caller and started_by[0].is_alive()


def test_a_trends_overall_sentiment_is_one_of_three_words() -> None:
    """Like a label: an enum in the schema, so a grammar-constrained small model cannot write `", "` or a sentence
    into it (it did), and a hosted model's other answer goes back to the ladder; the offline model picks one of
    them."""
    import asyncio

    import pydantic

    from flock_llm.cli.review_types import Review, ReviewTrend
    from flock_llm.cli.reviews import run_reviews

    schema = ReviewTrend.model_json_schema()
    assert schema["properties"]["overall_sentiment"]["enum"] == ["positive", "mixed", "negative"]
    with pytest.raises(pydantic.ValidationError):
        ReviewTrend(review_count=1, average_rating=3, overall_sentiment=", ", top_themes=[], summary="")  # type: ignore[arg-type]
    records: list[dict[str, object]] = []
    reviews = [Review(review_id=f"R{i}", rating=1 + i % 5, text=t) for i, t in enumerate(["awful", "great", "ok"] * 2)]
    summary = asyncio.run(run_reviews(reviews, on_records=records.extend, batch_size=3, env={}))
    trends = [r["data"] for r in records if r["type"] == "ReviewTrend"]
    assert summary.failed_items == 0 and len(trends) == 2
    assert all(t["overall_sentiment"] in ("positive", "mixed", "negative") for t in trends)  # type: ignore[index]


@pytest.mark.usefixtures("cli_in_process")
def test_a_local_server_that_dies_mid_run_fails_the_rest_at_once_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server is killed (kill -9, the OOM killer) while a call hangs on it, and its port then refuses. Before,
    the run waited behind the circuit breaker for the whole `--max-outage` (300 s by default) and then blamed a
    generic provider outage; the CLI owns the process, so the call in flight and every later one fail at once,
    saying the local server exited, and every review is accounted for exactly once (findings/local.md F3). The
    call that was in flight went out: it is in the summary's totals (before, the cancelled call's request and
    prompt tokens were missing from them), which match the engine's call records and the server's count."""
    import contextlib
    import json
    import subprocess
    import sys
    import tempfile
    import threading
    import time
    from collections.abc import Iterator

    from flock_llm.testing import FakeOpenAIServer
    from flock_llm.testing.local_server import LocalModel

    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    source = tmp_path / "r.jsonl"
    source.write_text("".join(f'{{"id": "R{i}", "rating": 3, "text": "fine"}}\n' for i in range(6)))
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # noqa: S603 - stands in
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    log.write(b"llama_perf_context_print: total time = 1 ms\n")
    log.flush()
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, stall_after=1, stall_s=30.0) as fake:

        @contextlib.contextmanager
        def fake_local(name: str) -> Iterator[LocalModel]:
            yield LocalModel("smollm2", fake.api_base, process, log)

        def kill_while_the_second_call_hangs() -> None:
            deadline = time.monotonic() + 60
            while fake.requests < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.kill()
            killed_at.append(time.monotonic())
            assert fake._server is not None
            fake._server.shutdown()  # nothing listens on its port any more
            fake._server.server_close()

        from flock_llm.engines.llm import LLMEngine

        engines: list[LLMEngine] = []

        class Kept(LLMEngine):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                engines.append(self)

        monkeypatch.setattr("flock_llm.cli.reviews.LLMEngine", Kept)
        monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
        out = tmp_path / "out.jsonl"
        killed_at: list[float] = []
        killer = threading.Thread(target=kill_while_the_second_call_hangs)
        killer.start()
        try:
            code = main(["reviews", str(source), "--model", "local", "--per-item", "--batch-size", "2", "--json",
                         "--max-outage", "20", "--no-progress", "-o", str(out)])  # fmt: skip
        finally:
            elapsed = time.monotonic() - killed_at[0] if killed_at else -1.0
            killer.join()
            process.wait()
            log.close()
        captured = capsys.readouterr()
        requests = fake.requests
    assert 0 <= elapsed < 5, f"the dead server was reported after {elapsed:.0f} s, not at once"
    assert code == 3, captured.err
    said = [r.getMessage() for r in caplog.records if "local model server exited" in r.getMessage()]
    assert len(said) == 1 and "(killed by signal 9, SIGKILL)" in said[0], said  # once, on the terminal
    assert "llama_perf_context_print" in said[0]  # with its log's last lines
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [i for r in records for i in r["review_ids"]]
    assert sorted(ids) == [f"R{i}" for i in range(6)]  # each exactly once
    labelled = [i for r in records if r["type"] == "ReviewLabel" for i in r["review_ids"]]
    failed = [r["data"] for r in records if r["type"] == "FailureRecord"]
    assert labelled == ["R0", "R1"] and sum(len(f["input_ids"]) for f in failed) == 4, records
    for failure in failed:
        assert failure["stage"] == "provider_unavailable"
        assert "the local model server exited (killed by signal 9, SIGKILL)" in failure["error"]
        assert "max_outage" not in failure["error"] and "llama_perf" not in failure["error"]
    summary = json.loads(captured.out)
    assert (summary["items"], summary["failed_items"]) == (6, 4)
    (engine,) = engines
    sent = [c for c in engine.calls if c.prompt_tokens]  # a request that went out is charged its prompt
    assert [c.outcome for c in sent] == ["ok", "CancelledError"] and requests == 2
    assert summary["llm_calls"] == len(sent) == requests  # each request once: the answered one, the cancelled one
    assert summary["prompt_tokens"] == sum(c.prompt_tokens for c in engine.calls) > sent[0].prompt_tokens
    assert summary["completion_tokens"] == sum(c.completion_tokens for c in engine.calls)


def _no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    from collections.abc import Iterator

    @contextlib.contextmanager
    def refuse(name: str) -> Iterator[None]:
        pytest.fail(f"the local model server {name!r} was started")
        yield

    monkeypatch.setattr("flock_llm.testing.local_server.local_model", refuse)


@pytest.mark.usefixtures("cli_in_process")
def test_an_empty_input_starts_no_local_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to send: the summary of 0 reviews at once, not after loading a model for ~30 s (F8)."""
    import json

    _no_server(monkeypatch)
    source = tmp_path / "empty.jsonl"
    source.write_text("")
    out = tmp_path / "out.jsonl"
    code = main(["reviews", str(source), "--model", "local", "--per-item", "--json", "--no-progress", "-o", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and (summary["items"], summary["llm_calls"], summary["model"]) == (0, 0, "local:smollm2")
    assert out.read_text() == ""


def test_an_estimate_with_model_local_counts_without_starting_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--estimate --model local` was refused as "not a litellm model string" though --help offers `local` (F10):
    it counts the prompts a local run sends (the keyed form, as the local server is asked) and costs nothing."""
    import json

    _no_server(monkeypatch)
    source = tmp_path / "r.jsonl"
    source.write_text("".join(f'{{"id": "R{i}", "rating": 4, "text": "a fine kettle {i}"}}\n' for i in range(5)))
    command = ["reviews", str(source), "--per-item", "--batch-size", "2", "--estimate", "--json"]
    assert main([*command, "--model", "local"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*command, "--model", "openai/smollm2"]) == 0  # the same model, asked the way a hosted one is
    hosted = json.loads(capsys.readouterr().out)
    assert (local["model"], local["reviews"], local["calls"], local["cost_usd"]) == ("local:smollm2", 5, 3, 0.0)
    assert "free" in local["prices"] and local["prompt_tokens"] > 0
    assert local["prompt_tokens"] != hosted["prompt_tokens"]  # rendered with the local engine settings
    assert main(["reviews", str(source), "--estimate", "--model", "local:nope"]) == EXIT_USAGE


@pytest.mark.usefixtures("cli_in_process")
def test_sigterm_while_the_local_server_starts_stops_it_and_says_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, SIGTERM during the ready check (seconds to a minute) killed the CLI silently (status -15) where
    Ctrl-C says "interrupted" and exits 130 with the server stopped; SIGTERM during the run already did that."""
    import contextlib
    import os
    import signal
    from collections.abc import Iterator

    stopped: list[bool] = []

    @contextlib.contextmanager
    def starting(name: str) -> Iterator[None]:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # while it loads the model
            pytest.fail("SIGTERM did not stop the start-up")
            yield
        finally:
            stopped.append(True)

    def unhandled(signum: int, frame: object) -> None:  # a CLI that leaves SIGTERM to the default dies: fail here
        raise AssertionError("SIGTERM reached no handler of the CLI")

    monkeypatch.setattr("flock_llm.testing.local_server.local_model", starting)
    source = tmp_path / "r.jsonl"
    source.write_text('{"id": "R1", "rating": 5, "text": "good"}\n')
    previous = signal.signal(signal.SIGTERM, unhandled)
    before = signal.getsignal(signal.SIGINT)
    try:
        code = main(["reviews", str(source), "--model", "local", "--no-progress", "-o", str(tmp_path / "o.jsonl")])
        restored = signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, before)
    assert code == 130 and stopped == [True] and restored
    assert "flock-llm: interrupted" in capsys.readouterr().err


def test_until_server_exits_fails_a_hanging_call_and_passes_a_cancellation_on() -> None:
    """The watch around a local run's calls: a call hanging on a server that exited is cancelled and its items
    fail with how it exited; a later call fails without being made; cancelling the run (Ctrl-C) still cancels
    the call under it."""
    import asyncio

    from flock_llm.artifact import Artifact
    from flock_llm.cli.local import UntilServerExits
    from flock_llm.cli.review_types import Review
    from flock_llm.engines import Engine, EngineContext, EvalInputs, EvalResult

    class Hangs(Engine):
        def __init__(self) -> None:
            self.started = 0
            self.cancelled = 0

        async def evaluate_batch(self, ctx: EngineContext, inputs: EvalInputs) -> EvalResult:
            self.started += 1
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return EvalResult()

    async def scenario() -> None:
        inner, state = Hangs(), dict[str, str | None](reason=None)
        watched = UntilServerExits(inner, lambda: state["reason"], interval=0.01)
        ctx = EngineContext(agent_name="a", description="", publishes=(), is_batch=True)
        items = EvalInputs.of(Artifact(type_name="Review", payload=Review(review_id="R", rating=3, text="ok")))
        call = asyncio.ensure_future(watched.evaluate_batch(ctx, items))
        await asyncio.sleep(0.05)
        call.cancel()  # a Ctrl-C: the call under the watch goes too
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (inner.started, inner.cancelled) == (1, 1)
        call = asyncio.ensure_future(watched.evaluate_batch(ctx, items))
        await asyncio.sleep(0.05)
        state["reason"] = "the local model server exited (killed by signal 9, SIGKILL)"
        result = await asyncio.wait_for(call, 5)
        later = await watched.evaluate_batch(ctx, items)
        assert (inner.started, inner.cancelled) == (2, 2)  # the later call was not made
        for failed in (result, later):
            (failure,) = failed.failures
            assert failure.stage == "provider_unavailable" and "killed by signal 9" in failure.error
            assert failure.artifact_ids == tuple(a.id for a in items.artifacts) and not failed.outputs

    asyncio.run(scenario())


def test_a_labels_review_id_is_the_reviews_own_not_what_the_model_wrote() -> None:
    """A real SmolLM2 answer in the keyed form (seen on `--model local`, per item): the result under the review's
    key, rightly matched to it, but with `"review_id": "]["`; the output line said R0003 in `review_ids` and "]["
    in the label. The label now names its review."""
    from flock_llm.artifact import Artifact
    from flock_llm.cli.review_types import ReviewLabel, ReviewTrend
    from flock_llm.cli.reviews import output_record

    answer = ReviewLabel(review_id="][", label="neutral", reason="ok")
    label = Artifact(type_name="ReviewLabel", payload=answer, derived_from=("a3",))
    record = output_record(label, {"a3": "R0003"})
    assert record["review_ids"] == ["R0003"] and record["data"]["review_id"] == "R0003"
    assert record["data"]["label"] == "neutral"
    trend = ReviewTrend(review_count=2, average_rating=3, overall_sentiment="mixed", top_themes=[], summary="")
    report = Artifact(type_name="ReviewTrend", payload=trend, derived_from=("a1", "a2"))
    assert output_record(report, {"a1": "R1", "a2": "R2"})["data"] == trend.model_dump(mode="json")


@pytest.mark.usefixtures("cli_in_process")
def test_a_request_litellm_drops_when_the_server_dies_leaves_no_warning_on_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """litellm's `acompletion` builds its request in an executor thread and awaits it after; when the local server
    dies meanwhile, the call is cancelled and litellm drops the request it built: Python printed "coroutine
    'OpenAIChatCompletion.acompletion' was never awaited" on the terminal. The CLI shows no such warning (the
    request never went out); the reviews still fail naming the server."""
    import contextlib
    import json
    import subprocess
    import sys
    import tempfile
    import threading
    import warnings
    from collections.abc import Iterator

    from flock_llm.cli.local import UntilServerExits
    from flock_llm.engines import load_litellm
    from flock_llm.testing import FakeOpenAIServer
    from flock_llm.testing.local_server import LocalModel

    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = load_litellm()
    source = tmp_path / "r.jsonl"
    source.write_text("".join(f'{{"id": "R{i}", "rating": 3, "text": "fine"}}\n' for i in range(4)))
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # noqa: S603 - stands in
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    building, built, cancelled = threading.Event(), list[bool](), threading.Event()
    complete = litellm.main.completion
    cancel_all = UntilServerExits._cancel_all

    def cancel_and_tell(self: UntilServerExits) -> None:  # the run's watch saw the death and cancelled its calls
        cancel_all(self)
        cancelled.set()

    def slow_to_build(*args: Any, **kwargs: Any) -> Any:  # litellm runs it in its executor thread
        first = not building.is_set()
        building.set()
        # the server dies while this request is built: held until the run's watch has cancelled the call (not until
        # the output has a line: another batch that starts after the death fails at once and writes one first)
        cancelled.wait(30)
        if not first:  # another batch's call, started before the watch saw the death: held back and never sent
            raise ConnectionError("the stand-in server is gone")  # (it went out in ~1 run of 20 in CI)
        built.append(True)  # (not the request itself: kept here, it would never be dropped)
        return complete(*args, **kwargs)

    monkeypatch.setattr(litellm.main, "completion", slow_to_build)
    monkeypatch.setattr(UntilServerExits, "_cancel_all", cancel_and_tell)
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:

        @contextlib.contextmanager
        def fake_local(name: str) -> Iterator[LocalModel]:
            yield LocalModel("smollm2", fake.api_base, process, log)

        def kill_while_a_request_is_built() -> None:
            building.wait(60)
            process.kill()

        monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
        killer = threading.Thread(target=kill_while_a_request_is_built)
        killer.start()
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                code = main(["reviews", str(source), "--model", "local", "--per-item", "--batch-size", "2",
                             "--no-progress", "-o", str(out)])  # fmt: skip
        finally:
            killer.join()
            process.wait()
            log.close()
        requests = fake.requests
    assert code == 3 and requests == 0 and len(built) == 1  # built, never sent
    assert not [str(w.message) for w in seen if "was never awaited" in str(w.message)]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(i for r in records for i in r["review_ids"]) == ["R0", "R1", "R2", "R3"]
    assert {r["type"] for r in records} == {"FailureRecord"}
    assert all("the local model server exited (killed by signal 9, SIGKILL)" in r["data"]["error"] for r in records)
