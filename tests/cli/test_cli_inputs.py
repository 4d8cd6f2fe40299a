"""`flock-llm reviews` with bad input and bad output paths: reported, never a traceback after paid-for work."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import ROOT, cli_env, read_jsonl, run_cli

from flock_llm.cli.rows import MAX_FIELD_CHARS, read_reviews
from flock_llm.testing import FakeOpenAIServer

GOOD = [{"id": f"r{n}", "rating": 4, "text": "fine"} for n in range(3)]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- 10, 11: the output path is checked before any work -------------------------------------------------


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("missing-dir/out.jsonl", "does not exist"),
        (".", "is a directory"),
        ("INPUT", "is the input file"),
    ],
)
def test_an_unusable_output_path_is_refused_before_any_call(tmp_path: Path, output: str, message: str) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", GOOD)
    before = source.read_bytes()
    target = str(source) if output == "INPUT" else str(tmp_path / output)
    started = time.monotonic()
    done = run_cli("reviews", str(source), "--output", target, "--no-progress")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # refused up front: no model was loaded or called
    assert source.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".check"))]


def test_a_read_only_output_directory_is_refused_up_front(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", GOOD)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: a directory cannot be made read-only here")
    else:
        locked.chmod(0o555)
    try:
        done = run_cli("reviews", str(source), "--output", str(locked / "out.jsonl"), "--no-progress")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=False)
        locked.chmod(0o755)
    assert done.returncode == 2 and "cannot be written" in done.stderr, done.stderr


# -- 12, 13, 14: rows that cannot be used are reported, the rest is read ------------------------------------


def test_bad_bytes_huge_numbers_boms_and_suspicious_values_are_reported_by_line(tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    lines = [
        b'\xef\xbb\xbf{"id": "a1", "rating": 5, "text": "BOM on the first line"}',
        '{"id": "a2", "rating": 4, "text": "caf\xe9 in Latin-1"}'.encode("latin-1"),
        b"\x00\xff\xfe\x89PNG binary garbage",
        b'{"id": "a3", "rating": ' + b"9" * 5000 + b', "text": "huge"}',
        b'{"id": null, "rating": 3, "text": "null id"}',
        b'{"id": {"nested": 1}, "rating": 3, "text": "object id"}',
        b'{"id": "a4", "rating": true, "text": "boolean rating"}',
        b'{"id": "a1", "rating": 2, "text": "duplicate"}',
        b'{"id": "a5", "rating": 2, "text": "' + b"x" * (MAX_FIELD_CHARS + 10) + b'"}',
        b"[" * 5000,
        b'{"id": 6, "rating": 1, "text": "integer ids are fine"}',
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    reviews, bad = read_reviews(source)
    assert [r.review_id for r in reviews] == ["a1", "6"]
    problems = {b.line: b.error for b in bad}
    assert set(problems) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert "not valid UTF-8" in problems[2] and "not valid UTF-8" in problems[3]
    assert "not readable JSON" in problems[4]
    assert "got null" in problems[5] and "got dict" in problems[6]
    assert "rating" in problems[7]
    assert "duplicate id 'a1' (first on line 1)" in problems[8]
    assert "longer than" in problems[9]
    assert "JSON" in problems[10]


def test_csv_with_a_bom_latin1_bytes_and_an_oversized_field(tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    source.write_bytes(
        b"\xef\xbb\xbfid,rating,text\n"
        b"c1,5,great\n"
        b"c2,4,caf\xe9\n"
        b"c3,3," + b"y" * (MAX_FIELD_CHARS + 5) + b"\n"
        b"c4,2,still read\n"
        b"c5," + b"9" * 5000 + b",huge rating\n"
    )
    reviews, bad = read_reviews(source)
    assert [r.review_id for r in reviews] == ["c1", "c4"]
    problems = {b.line: b.error for b in bad}
    assert "not valid UTF-8" in problems[3]
    assert "not readable CSV" in problems[4]
    assert "rating" in problems[6]


def test_the_cli_reports_bad_rows_and_goes_on(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"id": "b1", "rating": 5, "text": "ok"}\n\xff\xfe garbage\n')
    out = tmp_path / "out.jsonl"
    done = run_cli("reviews", str(source), "--output", str(out), "--no-progress", "--json")
    assert done.returncode == 0, done.stderr
    assert f"{source}:2: skipped: not valid UTF-8" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["items"], summary["bad_rows"]) == (1, 1)
    # 15: a new output file gets the umask's mode, not the temporary file's 0600
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_existing_output_file_keeps_its_mode(tmp_path: Path) -> None:
    from flock_llm.cli.output import OutputFile

    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    with OutputFile(target) as output:
        output.write([{"a": 1}])
        output.write([{"b": 2}, {"c": 3}])
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert read_jsonl(target) == [{"a": 1}, {"b": 2}, {"c": 3}]  # started afresh, appended batch by batch


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_outputs_that_cannot_be_written_stop_the_run_and_say_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flock_llm", "reviews", str(ROOT / "examples" / "data" / "reviews.jsonl"),
         "--output", "/dev/full", "--no-progress", "--json"],
        capture_output=True, text=True, env=cli_env(), timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "cannot write the outputs: No space left on device" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["unwritten"] == summary["outputs"] > 0 and summary["interrupted"] is False
    assert summary["items"] < 300  # reading stopped


# -- 25, 26: exit codes, request timeout and deadline ---------------------------------------------------


def test_failed_reviews_exit_non_zero_and_a_deadline_bounds_a_hanging_provider(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", GOOD)
    with FakeOpenAIServer(latency_s=0.0, fail_status=401) as refusing:
        env = cli_env(OPENAI_API_KEY="sk-test-not-real", OPENAI_API_BASE=refusing.api_base)
        done = subprocess.run(
            [sys.executable, "-m", "flock_llm", "reviews", str(source), "--model", "openai/gpt-4.1-mini",
             "--output", str(tmp_path / "o1.jsonl"), "--no-progress", "--json"],
            capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["failed_items"] == 3
    with FakeOpenAIServer(latency_s=30.0) as hanging:
        env = cli_env(OPENAI_API_KEY="sk-test-not-real", OPENAI_API_BASE=hanging.api_base)
        process = subprocess.Popen(
            [sys.executable, "-m", "flock_llm", "reviews", str(source), "--model", "openai/gpt-4.1-mini",
             "--output", str(tmp_path / "o2.jsonl"), "--no-progress", "--json", "--timeout", "0.1",
             "--request-timeout", "0.5", "--deadline", "3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while hanging.requests == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()  # its first request hangs: timed from here, not from its start-up (the import
        # of litellm takes seconds, 5-25 s measured on a busy machine)
        stdout, stderr = process.communicate(timeout=120)
        took = time.monotonic() - started
    assert process.returncode == 3, stderr
    summary = json.loads(stdout)
    assert summary["deadline_reached"] is True and summary["failed_items"] == 3
    records = read_jsonl(tmp_path / "o2.jsonl")
    assert {r["data"]["stage"] for r in records} == {"cancelled"}  # type: ignore[index]
    assert took < 25, took  # what is left of the 3 s and the exit, not 30 s x attempts
