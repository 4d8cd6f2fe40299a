"""`flock-llm reviews --estimate` and `--budget`, run as a user would, against the fake server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_cli import ROOT, SAMPLE, cli_env, read_jsonl

from flock_llm.testing import FakeOpenAIServer


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flock_llm", "reviews", str(SAMPLE), *args],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_the_estimate_calls_no_model_and_is_within_ten_percent_of_what_a_run_sends(tmp_path: Path) -> None:
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
        env = cli_env(OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-fake-local")
        model = ["--model", "openai/gpt-4.1-mini", "--per-item", "--batch-size", "25"]
        estimated = cli(*model, "--estimate", "--json", env=env)
        assert estimated.returncode == 0, estimated.stderr
        assert server.requests == 0  # nothing was sent
        estimate = json.loads(estimated.stdout)
        run = cli(*model, "--json", "--no-progress", "-o", str(tmp_path / "out.jsonl"), env=env)
        assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert estimate["calls"] == 12 == summary["llm_calls"] and estimate["reviews"] == 300
    assert abs(estimate["prompt_tokens"] - summary["prompt_tokens"]) <= 0.10 * summary["prompt_tokens"]
    assert estimate["cost_usd"] > 0 and "litellm: input $0.4" in estimate["prices"]


def test_a_budget_caps_the_run_and_the_rest_is_recorded_not_lost(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
        env = cli_env(OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-fake-local")
        done = cli("--model", "openai/gpt-4.1-mini", "--per-item", "--budget", "0.01", "--json", "--no-progress",
                   "-o", str(out), env=env)  # fmt: skip
    assert done.returncode == 3, done.stderr
    summary = json.loads(done.stdout)
    assert summary["budget_usd"] == 0.01 and 0 < summary["cost_usd"] <= 0.01  # each call held its worst case
    records = read_jsonl(out)
    labels = [r for r in records if r["type"] == "ReviewLabel"]
    failed = [r for r in records if r["type"] == "FailureRecord"]
    assert labels and failed and {r["data"]["stage"] for r in failed} == {"budget"}  # type: ignore[index]
    covered = sorted(i for r in records for i in r["review_ids"])  # type: ignore[union-attr]
    assert len(covered) == len(set(covered)) == 300  # every review answered or recorded, once
    assert server.requests == summary["llm_calls"] < 12


def test_the_batch_tier_from_the_command_line_labels_everything_at_half_price(tmp_path: Path) -> None:
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
        server.batches.completion_delay_s = 0.2
        env = cli_env(OPENAI_API_BASE=server.api_base, OPENAI_API_KEY="sk-fake-local", FLOCK_BATCH_POLL_S="0.1")
        common = ["--model", "openai/gpt-4.1-mini", "--per-item", "--json", "--no-progress", "--timeout", "2"]
        standard = cli(*common, "-o", str(tmp_path / "a.jsonl"), env=env)
        batch = cli(*common, "--tier", "batch", "-o", str(tmp_path / "b.jsonl"), env=env)
    assert standard.returncode == 0 and batch.returncode == 0, batch.stderr
    plain, deferred = json.loads(standard.stdout), json.loads(batch.stdout)
    assert deferred["tier"] == "batch" and deferred["jobs_submitted"] >= 1 and deferred["failed_items"] == 0
    assert deferred["cost_usd"] < 0.55 * plain["cost_usd"]
    labels = [r for r in read_jsonl(tmp_path / "b.jsonl") if r["type"] == "ReviewLabel"]
    assert len(labels) == 300 and server.batches.jobs_created == deferred["jobs_submitted"]
