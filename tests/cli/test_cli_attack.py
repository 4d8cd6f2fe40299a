"""`flock-llm reviews` attacked from outside with real processes: seconds too large or too small to be a time,
two runs on one --store at once, a Ctrl-C that arrives while the command is already exiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_cli import ROOT, FakeOpenAIServer, cli_env, read_jsonl, run_cli


def write_reviews(path: Path, n: int) -> Path:
    rows = [
        {"id": f"r{i}", "rating": i % 5 + 1, "text": f"review {i} was {'great' if i % 2 else 'awful'}"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "option", [("--timeout", "1e308"), ("--timeout", "1e15"), ("--timeout", "1e-320"), ("--request-timeout", "1e-320")]
)
def test_seconds_no_clock_can_hold_are_refused_before_the_output_is_touched(
    tmp_path: Path, option: tuple[str, str]
) -> None:
    reviews = write_reviews(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    out.write_text("earlier outputs\n", encoding="utf-8")
    done = run_cli("reviews", str(reviews), *option, "-o", str(out), "--no-progress")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert option[0] in done.stderr and option[1] in done.stderr  # names the value and the option
    assert out.read_text(encoding="utf-8") == "earlier outputs\n"  # a refused run leaves every file as it was


def test_a_second_run_on_a_store_in_use_is_refused_and_no_review_is_paid_or_written_twice(tmp_path: Path) -> None:
    reviews = write_reviews(tmp_path / "in.jsonl", 30)
    store = f"sqlite:///{tmp_path / 'run.db'}"
    with FakeOpenAIServer(latency_s=0.4, per_item_latency_s=0.0) as server:
        env = cli_env(FLOCK_LLM_MODEL="openai/fake-model", OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-local")
        args = ["reviews", str(reviews), "--per-item", "--batch-size", "5", "--no-progress", "--json", "--store", store]
        first = subprocess.Popen(
            [sys.executable, "-m", "flock_llm", *args, "-o", str(tmp_path / "a.jsonl")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while server.requests == 0 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)  # the first run holds the store and is calling the model
        os.kill(first.pid, signal.SIGSTOP)  # and keeps holding it, however slowly the second run starts
        try:
            second_out = tmp_path / "b.jsonl"
            second_out.write_text("earlier outputs\n", encoding="utf-8")
            second = run_cli(*args, "-o", str(second_out), env=env)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        first.communicate(timeout=120)
        assert first.returncode == 0
        assert second.returncode == 2, second.stderr
        assert "in use" in second.stderr and "Traceback" not in second.stderr
        assert second_out.read_text(encoding="utf-8") == "earlier outputs\n"
        assert server.requests == 6  # 30 reviews in batches of 5, each paid once
        again = run_cli(*args, "-o", str(tmp_path / "c.jsonl"), env=env)  # the store was released: it resumes
    assert again.returncode == 0, again.stderr
    covered = Counter(i for r in read_jsonl(tmp_path / "c.jsonl") for i in r["review_ids"])  # type: ignore[union-attr]
    assert covered == Counter(f"r{i}" for i in range(30))  # every review once


_INTERRUPTED_TWICE = """
import os, signal, sys
import flock_llm.cli.main
cli = sys.modules["flock_llm.cli.main"]

class Stderr:
    def __init__(self, inner):
        self.inner, self.sent = inner, False
    def write(self, text):
        if not self.sent:  # a second Ctrl-C while the first one's message is being printed
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return self.inner.write(text)
    def flush(self):
        self.inner.flush()

def interrupted(argv):
    sys.stderr = Stderr(sys.stderr)
    raise KeyboardInterrupt

cli._main = interrupted
sys.exit(cli.main(["reviews", "x.jsonl"]))
"""


def test_a_second_ctrl_c_while_the_command_exits_changes_neither_the_status_nor_adds_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_TWICE], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert "interrupted" in done.stderr


@pytest.mark.parametrize("poll", ["abc", "-1", "nan"])
def test_a_bad_batch_poll_interval_is_refused_before_the_output_is_touched(tmp_path: Path, poll: str) -> None:
    reviews = write_reviews(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    out.write_text("earlier outputs\n", encoding="utf-8")
    done = run_cli(
        "reviews",
        str(reviews),
        "--tier",
        "batch",
        "-o",
        str(out),
        "--no-progress",
        env=cli_env(FLOCK_BATCH_POLL_S=poll),
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "FLOCK_BATCH_POLL_S" in done.stderr and repr(poll) in done.stderr
    assert out.read_text(encoding="utf-8") == "earlier outputs\n"


def test_json_with_outputs_to_the_same_stdout_is_refused_so_stdout_stays_strict_json(tmp_path: Path) -> None:
    reviews = write_reviews(tmp_path / "in.jsonl", 5)
    done = run_cli("reviews", str(reviews), "--json", "-o", "/dev/stdout", "--no-progress")  # stdout is a pipe
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "--json" in done.stderr and "/dev/stdout" in done.stderr
