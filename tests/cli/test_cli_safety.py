"""`flock-llm reviews` on the side paths (issue 26: items 9, 14, 21-24, 26 and --max-outage): numbers that are not
numbers, text that is not text, markup in ids, a disk that fills, a report that must not read the outputs back,
an early Ctrl-C, a named pipe."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_cli import ROOT, SAMPLE, FakeOpenAIServer, cli_env, read_jsonl, run_cli

from flock_llm.cli.output import OutputFile


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# -- 9, --max-outage: numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--budget", "nan"],
        ["--budget", "inf"],
        ["--budget", "-1"],
        ["--timeout", "nan"],
        ["--request-timeout", "inf"],
        ["--deadline", "-5"],
        ["--max-outage", "nan"],
        ["--max-outage", "0"],
        ["--batch-size", "0"],
        ["--estimate", "--batch-size", "-3"],
        ["--estimate", "--budget", "nan"],
    ],
)
def test_numbers_that_are_not_positive_and_finite_are_refused(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(SAMPLE), *args, "--json", "-o", str(out), "--no-progress")
    assert done.returncode == 2, done.stderr
    assert f"argument {args[-2]}" in done.stderr and args[-1] in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_the_json_summary_is_strict_json_even_for_a_cost_that_is_not_a_number() -> None:
    from flock_llm.cli.checks import finite

    values = finite({"cost_usd": float("nan"), "budget_usd": float("inf"), "wall_s": 1.5, "items": 3})
    assert json.dumps(values, allow_nan=False) == '{"cost_usd": null, "budget_usd": null, "wall_s": 1.5, "items": 3}'


def test_the_estimate_refuses_what_a_run_refuses_and_prices_the_batch_tier_at_its_price() -> None:
    from flock_llm.cli.estimate import estimate_reviews
    from flock_llm.cli.rows import read_reviews
    from flock_llm.errors import ConfigurationError

    reviews, _ = read_reviews(SAMPLE)
    with pytest.raises(ConfigurationError, match="`batch_size` must be a positive integer, got 0"):
        estimate_reviews(reviews, batch_size=0, per_item=True, model="openai/gpt-4.1-mini", env={})
    common: dict[str, Any] = {"batch_size": 25, "per_item": True, "env": {}}
    standard = estimate_reviews(reviews, model="openai/gpt-4.1-mini", **common)
    batch = estimate_reviews(reviews, model="openai/gpt-4.1-mini", tier="batch", **common)
    assert standard.cost_usd and batch.cost_usd and batch.tier == "batch"
    assert batch.cost_usd == pytest.approx(standard.cost_usd / 2)
    assert batch.prompt_tokens == standard.prompt_tokens
    # a model that cannot go into batch jobs is sent the standard way: priced as it is paid
    claude = estimate_reviews(reviews, model="anthropic/claude-haiku-4-5", tier="batch", **common)
    claude_standard = estimate_reviews(reviews, model="anthropic/claude-haiku-4-5", **common)
    assert claude.tier == "standard" and claude.cost_usd == claude_standard.cost_usd and claude.cost_usd


def test_max_outage_bounds_the_wait_for_a_provider_that_is_down(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{n}", "rating": 4, "text": "ok"} for n in range(4)])
    with FakeOpenAIServer(latency_s=0.0, fail_status=503) as down:
        env = cli_env(OPENAI_API_BASE=down.api_base, OPENAI_API_KEY="sk-fake-local")
        done = run_cli("reviews", str(source), "--model", "openai/gpt-4.1-mini", "--max-outage", "1.5",
                       "--timeout", "0.1", "-o", str(tmp_path / "out.jsonl"), "--json", "--no-progress",
                       env=env)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "failed every call for 1.5 s (`max_outage`)" in done.stderr  # not the default 300 s
    records = read_jsonl(tmp_path / "out.jsonl")
    assert {r["data"]["stage"] for r in records} == {"provider_unavailable"}  # type: ignore[index]
    assert strict_json(done.stdout)["failed_items"] == 4


# -- 21, 22: text that is not text, ids that look like markup ---------------------------------------------


def test_lone_surrogates_are_reported_by_line_and_every_other_review_is_written(tmp_path: Path) -> None:
    rows = [{"id": f"r{n}", "rating": 4, "text": "fine"} for n in range(10)]
    rows[3]["text"] = "broken \ud800 text"
    rows[6]["id"] = "id-\udfff"
    source = write_jsonl(tmp_path / "in.jsonl", rows)  # json.dumps writes them as the escapes \ud800, \udfff
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(source), "--per-item", "--batch-size", "5", "-o", str(out), "--json", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{source}:4: skipped: text: a lone surrogate \\ud800" in done.stderr
    assert f"{source}:7: skipped: id: a lone surrogate \\udfff" in done.stderr
    summary = strict_json(done.stdout)
    assert (summary["items"], summary["bad_rows"], summary["outputs"], summary["unwritten"]) == (8, 2, 8, 0)
    assert sorted(r["data"]["review_id"] for r in read_jsonl(out)) == sorted(  # type: ignore[index]
        f"r{n}" for n in range(10) if n not in (3, 6)
    )


def test_a_record_utf8_cannot_carry_is_written_as_json_escapes_not_lost(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with OutputFile(target) as output:
        output.write([{"text": "caf\u00e9"}, {"text": "lone \ud800"}])
        output.write([{"text": "next batch"}])
    assert [json.loads(line)["text"] for line in target.read_text(encoding="utf-8").splitlines()] == [
        "caf\u00e9",
        "lone \ud800",
        "next batch",
    ]


def test_ids_that_look_like_rich_markup_are_printed_as_they_are(tmp_path: Path) -> None:
    rows = [
        {"id": "[/x]", "rating": 4, "text": "fine"},
        {"id": "[/x]", "rating": 4, "text": "duplicate"},
        {"id": "[link=https://evil.example]click[/link]", "rating": 4, "text": "fine"},
        {"id": "[link=https://evil.example]click[/link]", "rating": 4, "text": "duplicate"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    done = run_cli("reviews", str(source), "--per-item", "-o", str(tmp_path / "out.jsonl"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "MarkupError" not in done.stderr and "Traceback" not in done.stderr
    assert "duplicate id '[/x]' (first on line 1)" in done.stderr
    assert "duplicate id '[link=https://evil.example]click[/link]' (first on line 3)" in done.stderr


# -- 23: a full disk -----------------------------------------------------------------------------------------


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG (a disk that fills up)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_batch_write_that_fails_part_way_is_cut_back_to_the_last_whole_batch(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    script = (
        "import sys; from pathlib import Path; from flock_llm.cli.output import OutputFile\n"
        "out = OutputFile(Path(sys.argv[1]))\n"
        "for n in range(100):\n"
        "    try:\n"
        "        out.write([{'batch': n, 'line': i, 'text': 'x' * 50} for i in range(10)])\n"
        "    except OSError as exc:\n"
        "        print(n, exc.errno); break\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True, text=True, timeout=60, preexec_fn=_limit_file_size(4000), cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    failed_batch = int(done.stdout.split()[0])
    data = target.read_bytes()
    assert len(data) < 4000 and data.endswith(b"\n")  # no partial line
    batches = [json.loads(line)["batch"] for line in data.decode().splitlines()]
    assert batches == [n for n in range(failed_batch) for _ in range(10)]  # whole batches only


def test_the_cli_on_a_disk_that_fills_up_keeps_whole_lines_and_says_what_was_not_written(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "flock_llm", "reviews", str(SAMPLE), "--per-item", "--batch-size", "10",
         "-o", str(out), "--json", "--no-progress"],
        capture_output=True, text=True, env=cli_env(), timeout=120, cwd=ROOT, preexec_fn=_limit_file_size(20_000),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "cannot write the outputs: File too large" in done.stderr and "Traceback" not in done.stderr
    summary = strict_json(done.stdout)
    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert len(records) % 10 == 0 and len(records) + summary["unwritten"] == summary["outputs"]


# -- 24: the report -----------------------------------------------------------------------------------------


def test_the_report_cannot_replace_the_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("earlier\n")
    done = run_cli("reviews", str(SAMPLE), "-o", str(out), "--report", str(out), "--no-progress")
    assert done.returncode == 2 and "--report" in done.stderr and "same file as --output" in done.stderr
    assert out.read_text() == "earlier\n"


def test_the_report_counts_the_run_itself_even_when_the_outputs_go_nowhere(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{n}", "rating": 4, "text": "ok"} for n in range(3)])
    report = tmp_path / "report.html"
    with FakeOpenAIServer(latency_s=0.0, fail_status=401) as refusing:
        env = cli_env(OPENAI_API_BASE=refusing.api_base, OPENAI_API_KEY="sk-fake-local")
        done = run_cli("reviews", str(source), "--model", "openai/gpt-4.1-mini", "--timeout", "0.1", "-o",
                       "/dev/null", "--report", str(report), "--no-progress", env=env)  # fmt: skip
    assert done.returncode == 3, done.stderr
    page = report.read_text(encoding="utf-8")
    assert "Failures (1)" in page and "r0, r1, r2" in page  # one failure record for the batch of 3


def test_labels_are_plain_text_and_the_chart_keeps_the_most_frequent(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from flock_llm.cli.report import MAX_CATEGORIES, Figures, render_report
    from flock_llm.cli.reviews import RunSummary

    figures = Figures()
    figures.add([{"type": "ReviewLabel", "data": {"label": "$x^$"}}] * 50)
    figures.add({"type": "ReviewLabel", "data": {"label": f"label {n}"}} for n in range(5000))
    page = render_report(RunSummary(model="m", offline=False, mode="per-item", items=5050), figures)
    assert "$x^$" in page  # drawn as text, not parsed as TeX (which raised)
    assert f"other ({5001 - MAX_CATEGORIES} labels)" in page
    assert page.count("label ") <= MAX_CATEGORIES


# -- 26: an early Ctrl-C, a named pipe ---------------------------------------------------------------------


def _loading_litellm(pid: int) -> bool:
    """litellm's import is under way: aiohttp's multidict (which `import flock_llm` does not load) is mapped."""
    try:
        return "_multidict" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the child's imports in /proc")
def test_ctrl_c_while_starting_exits_130_without_a_traceback_and_leaves_the_output_alone(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("earlier outputs\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "flock_llm", "reviews", str(SAMPLE), "-o", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _loading_litellm(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # while litellm loads (seconds): before the run and its handler
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "interrupted" in stderr
    assert out.read_text() == "earlier outputs\n"


def test_a_named_pipe_is_read_as_input(tmp_path: Path) -> None:
    pipe = tmp_path / "reviews.jsonl"
    os.mkfifo(pipe)
    rows = "".join(json.dumps({"id": f"p{n}", "rating": 5, "text": "great"}) + "\n" for n in range(7))

    def feed() -> None:
        with pipe.open("w") as handle:  # blocks until the command opens the pipe for reading
            handle.write(rows)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(pipe), "--per-item", "-o", str(out), "--json", "--no-progress")
    writer.join(timeout=10)
    assert done.returncode == 0, done.stderr
    assert sorted(r["data"]["review_id"] for r in read_jsonl(out)) == [f"p{n}" for n in range(7)]  # type: ignore[index]
