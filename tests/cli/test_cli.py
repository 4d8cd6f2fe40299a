"""The `flock-llm reviews` command, run as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flock_llm.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "data" / "reviews.jsonl"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOCK_", "OPENAI_"))}
    return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flock_llm", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=120,
        cwd=ROOT,
    )


def stderr_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """What `process` wrote to its stderr up to `text` (read from the pipe itself, unbuffered: communicate() reads
    on from there)."""
    assert process.stderr is not None
    fd, seen, deadline = process.stderr.fileno(), b"", time.monotonic() + timeout
    while text.encode() not in seen and select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 65536)
        if not chunk:  # the process ended
            break
        seen += chunk
    return seen.decode()


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sample_ids() -> list[str]:
    return [json.loads(line)["id"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def test_sample_file_offline_reports_batches_and_savings(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(SAMPLE), "--json", "--output", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["offline"] is True and "OFFLINE model" in done.stderr
    assert (summary["items"], summary["batches"], summary["llm_calls"], summary["outputs"]) == (300, 12, 12, 12)
    assert summary["flush_reasons"] == {"size": 12}
    assert summary["calls_saved"] == 288 and summary["prompt_tokens_saved"] > summary["prompt_tokens"]
    records = read_jsonl(out)
    assert {r["type"] for r in records} == {"ReviewTrend"}
    covered = [i for r in records for i in r["review_ids"]]  # type: ignore[union-attr]
    assert sorted(covered) == sorted(sample_ids())
    assert all(r["data"]["review_count"] == 25 for r in records)  # type: ignore[index]


def test_per_item_mode_writes_one_label_per_review_to_stdout() -> None:
    done = run_cli("reviews", str(SAMPLE), "--per-item", "--batch-size", "50", "--no-progress")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 300 and {r["type"] for r in records} == {"ReviewLabel"}
    assert all(r["review_ids"] == [r["data"]["review_id"]] for r in records)
    assert "LLM calls" in done.stderr and "6 (per-item processing: 300; saved 294)" in done.stderr


def test_bad_rows_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_text(
        '{"id": "a", "rating": 5, "text": "great"}\n'
        '{"id": "b", "rating": 4, "text": "fine"\n'
        "\n"
        '{"id": "c", "text": "no rating"}\n'
        '{"id": "d", "rating": 9, "text": "off the scale"}\n'
        '["not", "an", "object"]\n'
        '{"id": "e", "rating": 1, "text": "awful"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(source), "--json", "-o", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"{source}:2: skipped: not valid JSON" in done.stderr
    assert f"{source}:4: skipped: rating: Field required" in done.stderr
    assert f"{source}:5: skipped: rating: Input should be less than or equal to 5" in done.stderr
    assert f"{source}:6: skipped: expected a JSON object" in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["items"], summary["bad_rows"]) == (2, 4)
    assert sorted(i for r in read_jsonl(out) for i in r["review_ids"]) == ["a", "e"]  # type: ignore[union-attr]


def test_csv_input(tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    source.write_text('id,rating,text\nx1,5,"Loved it, truly"\nx2,2,meh\nx3,zero,bad row\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(source), "--json", "-o", str(out), "--no-progress", "--per-item")
    assert done.returncode == 0, done.stderr
    assert f"{source}:4: skipped: rating" in done.stderr
    assert [r["data"]["review_id"] for r in read_jsonl(out)] == ["x1", "x2"]  # type: ignore[index]


def test_usage_errors_are_clear() -> None:
    done = run_cli("reviews", str(SAMPLE), "--json")
    assert done.returncode == 2 and "give --output FILE" in done.stderr
    done = run_cli("reviews", "no-such-file.jsonl", "--no-progress")
    assert done.returncode == 2 and "no such file" in done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupt_finishes_what_was_consumed_and_exits_non_zero(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(latency_s=0.25, per_item_latency_s=0.0) as server:
        env = cli_env(
            FLOCK_LLM_MODEL="openai/fake-model", OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-fake-local"
        )
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flock_llm",
                "reviews",
                str(SAMPLE),
                "--per-item",
                "--batch-size",
                "5",
                "--json",
                "-o",
                str(out),
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while server.requests < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and 0 < summary["items"] < 300
    records = read_jsonl(out)
    covered = sorted(i for r in records for i in r["review_ids"])  # type: ignore[union-attr]
    assert covered == sorted(sample_ids()[: summary["items"]])  # every consumed review, exactly once


def test_a_second_interrupt_cancels_what_hangs_and_still_writes_every_finished_batch(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, stall_after=3, stall_s=120) as server:
        env = cli_env(
            FLOCK_LLM_MODEL="openai/fake-model", OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-fake-local"
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "flock_llm", "reviews", str(SAMPLE), "--per-item", "--batch-size", "25",
             "--json", "-o", str(out), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while server.requests < 5 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)  # 3 batches answered, the next ones hang
        process.send_signal(signal.SIGINT)
        # the second once the run took the first in (a fixed 0.5 s: two SIGINTs still pending together are one)
        said = stderr_until(process, "interrupted: finishing")
        assert "interrupted: finishing" in said, said
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        took = time.monotonic() - started
        stderr = said + stderr
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "cancelling" in stderr
    assert took < 20, took  # not the 120 s the provider hangs
    summary = json.loads(stdout)
    records = read_jsonl(out)
    labels = [r for r in records if r["type"] == "ReviewLabel"]
    cancelled = [r for r in records if r["type"] == "FailureRecord"]
    assert len(labels) == 75  # the 3 batches that finished were written
    assert cancelled and {r["data"]["stage"] for r in cancelled} == {"cancelled"}  # type: ignore[index]
    covered = sorted(i for r in records for i in r["review_ids"])  # type: ignore[union-attr]
    assert covered == sorted(sample_ids()[: summary["items"]])  # every review read is accounted for, once


def test_a_run_killed_mid_way_resumes_from_its_store_and_pays_for_no_finished_batch_twice(tmp_path: Path) -> None:
    out, db = tmp_path / "out.jsonl", tmp_path / "run.db"
    command = [sys.executable, "-m", "flock_llm", "reviews", str(SAMPLE), "--per-item", "--batch-size", "10",
               "--store", f"sqlite:///{db}", "--json", "-o", str(out), "--no-progress"]  # fmt: skip
    with FakeOpenAIServer(latency_s=0.15, per_item_latency_s=0.0) as server:
        env = cli_env(
            FLOCK_LLM_MODEL="openai/fake-model", OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-fake-local"
        )
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while server.requests < 8 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # no chance to clean up
        first.communicate(timeout=30)
        paid_before = server.requests
        # outputs were appended batch by batch: the killed run left whole batches only, and some of them
        kept = read_jsonl(out)
        assert kept and len(kept) % 10 == 0, len(kept)
        assert sorted(i for r in kept for i in r["review_ids"]) == sorted(  # type: ignore[union-attr]
            {i for r in kept for i in r["review_ids"]}  # type: ignore[union-attr]
        )
        second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        paid_after = server.requests - paid_before
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["resumed"] > 0 and summary["resumed"] + summary["items"] == 300
    records = read_jsonl(out)
    covered = sorted(i for r in records for i in r["review_ids"])  # type: ignore[union-attr]
    assert covered == sorted(sample_ids())  # every review exactly once, across both runs
    # 30 batches in all: the second run paid only for those the first had not finished (at most the 4 whose
    # calls were in flight at the kill are paid twice: at-least-once execution)
    assert paid_before + paid_after <= 30 + 4, (paid_before, paid_after)
