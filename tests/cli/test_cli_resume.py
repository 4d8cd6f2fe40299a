"""`flock-llm reviews --store`: a store remembers what it was made from, and a resumed run takes from it only what
still holds for its input (issue 26, items 19, 20, 25)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from test_cli import FakeOpenAIServer, cli_env, read_jsonl, run_cli

from flock_llm.artifact import Artifact, FailureRecord
from flock_llm.cli.review_types import Review, ReviewLabel, ReviewTrend
from flock_llm.stores.sqlite import open_database

GOOD, BAD = "wonderful, I love it, great quality", "terrible and broken, awful, I hate it"


def write_reviews(path: Path, texts: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "rating": 3, "text": t}) + "\n" for i, t in texts.items()))
    return path


def labels(path: Path) -> dict[str, str]:
    return {r["data"]["review_id"]: r["data"]["label"] for r in read_jsonl(path) if r["type"] == "ReviewLabel"}  # type: ignore[index]


def test_a_resumed_run_writes_this_inputs_results_runs_changed_reviews_again_and_drops_the_others(
    tmp_path: Path,
) -> None:
    db, out = tmp_path / "run.db", tmp_path / "out.jsonl"
    first = write_reviews(tmp_path / "a.jsonl", {f"r{n}": GOOD for n in range(10)})
    common = ["--per-item", "--batch-size", "5", "--store", f"sqlite:///{db}", "--json", "--no-progress", "-o"]
    done = run_cli("reviews", str(first), *common, str(out))
    assert done.returncode == 0, done.stderr
    assert set(labels(out).values()) == {"positive"}
    # the same ids, but r0-r2 now say the opposite, r7-r9 are gone and r10 is new
    second = write_reviews(
        tmp_path / "b.jsonl", {**{f"r{n}": BAD for n in range(3)}, **{f"r{n}": GOOD for n in (3, 4, 5, 6, 10)}}
    )
    done = run_cli("reviews", str(second), *common, str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["resumed"], summary["items"], summary["stale"]) == (4, 4, 6)
    found = labels(out)
    assert sorted(found) == sorted(["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r10"])  # nothing of r7-r9
    assert {found[i] for i in ("r0", "r1", "r2")} == {"negative"}  # the changed texts were labelled again
    assert {found[i] for i in ("r3", "r4", "r5", "r6", "r10")} == {"positive"}


def test_failed_reviews_are_run_again_on_resume(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "in.jsonl", {f"r{n}": GOOD for n in range(4)})
    db, out = tmp_path / "run.db", tmp_path / "out.jsonl"
    command = ["reviews", str(source), "--model", "openai/gpt-4.1-mini", "--per-item", "--timeout", "0.2",
               "--store", f"sqlite:///{db}", "--json", "--no-progress", "-o", str(out)]  # fmt: skip
    with FakeOpenAIServer(latency_s=0.0, fail_status=401) as refusing:
        done = run_cli(*command, env=cli_env(OPENAI_API_BASE=refusing.api_base, OPENAI_API_KEY="sk-fake-local"))
    assert done.returncode == 3 and json.loads(done.stdout)["failed_items"] == 4, done.stderr
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as working:
        done = run_cli(*command, env=cli_env(OPENAI_API_BASE=working.api_base, OPENAI_API_KEY="sk-fake-local"))
        calls = working.requests
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["retried"], summary["items"], summary["failed_items"], summary["resumed"]) == (4, 4, 0, 0)
    assert calls >= 1 and sorted(labels(out)) == ["r0", "r1", "r2", "r3"]
    assert not [r for r in read_jsonl(out) if r["type"] == "FailureRecord"]  # the old failures are not written


def test_a_store_of_another_mode_or_model_is_refused_and_the_output_is_left_alone(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "in.jsonl", {"a": GOOD, "b": BAD})
    db, out = tmp_path / "run.db", tmp_path / "out.jsonl"
    done = run_cli("reviews", str(source), "--per-item", "--store", f"sqlite:///{db}", "-o", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    kept = out.read_bytes()
    report_mode = run_cli("reviews", str(source), "--store", f"sqlite:///{db}", "-o", str(out), "--no-progress")
    assert report_mode.returncode == 2 and "holds a per-item run" in report_mode.stderr, report_mode.stderr
    assert "run with --per-item" in report_mode.stderr
    other_model = run_cli("reviews", str(source), "--per-item", "--model", "openai/gpt-4.1-mini", "--store",
                          f"sqlite:///{db}", "-o", str(out), "--no-progress")  # fmt: skip
    assert other_model.returncode == 2 and "was made with model 'flock-offline" in other_model.stderr
    assert out.read_bytes() == kept  # refused before the output was opened: not truncated
    assert "Traceback" not in report_mode.stderr + other_model.stderr


def test_stores_that_cannot_be_this_runs_are_refused_with_clear_messages(tmp_path: Path) -> None:
    source = write_reviews(tmp_path / "in.jsonl", {"a": GOOD})
    out = tmp_path / "out.jsonl"
    out.write_text("earlier outputs\n")
    (tmp_path / "dir.db").mkdir()
    bad_version = tmp_path / "version.db"
    open_database(bad_version).close()
    with sqlite3.connect(bad_version) as connection:
        connection.execute("UPDATE flock_meta SET value='abc' WHERE key='schema_version'")
    foreign = tmp_path / "other-app.db"
    open_database(foreign).close()
    with sqlite3.connect(foreign) as connection:
        connection.execute(
            "INSERT INTO artifacts (id, type_name, payload, derived_from, tags, visibility, created_at) "
            "VALUES ('x', 'Payment', '{}', '[]', '[]', '{}', 0)"
        )
    cases = {
        f"sqlite:///{tmp_path / 'dir.db'}": "is a directory",
        f"sqlite:///{bad_version}": "damaged schema version 'abc'",
        f"sqlite:///{foreign}": "store of another application",
        f"sqlite:///{out}": "--store",  # the output file itself: SQLite would overwrite the outputs
    }
    for store, message in cases.items():
        done = run_cli("reviews", str(source), "--store", store, "-o", str(out), "--no-progress")
        assert done.returncode == 2, (store, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (store, done.stderr)
    assert "is the same file as --output" in done.stderr
    assert out.read_text() == "earlier outputs\n"
    with sqlite3.connect(foreign) as connection:  # not written into
        assert connection.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 1
        assert {r[0] for r in connection.execute("SELECT name FROM sqlite_master")} >= {"artifacts"}
        assert "flock_cli_reviews" not in {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}


def _review(n: int, text: str = "fine") -> Artifact:
    return Artifact(type_name="Review", payload=Review(review_id=f"r{n}", rating=3, text=text), id=f"a{n}")


def _output(kind: str, inputs: list[Artifact]) -> Artifact:
    ids = tuple(a.id for a in inputs)
    if kind == "FailureRecord":
        payload: object = FailureRecord(
            agent="review_analyst", input_ids=list(ids), stage="engine", error_type="E", error="x"
        )
    elif kind == "ReviewTrend":
        payload = ReviewTrend(
            review_count=len(ids), average_rating=3, overall_sentiment="mixed", top_themes=[], summary=""
        )
    else:
        payload = ReviewLabel(review_id="r", label="neutral", reason="")
    return Artifact(type_name=kind, payload=payload, derived_from=ids, produced_by="review_analyst")  # type: ignore[arg-type]


def test_a_report_over_a_review_that_changed_is_not_written_and_its_other_reviews_run_again() -> None:
    from flock_llm.cli.resume import fingerprint, plan_resume

    stored = [_review(n) for n in range(6)]
    trend_1, trend_2 = _output("ReviewTrend", stored[:3]), _output("ReviewTrend", stored[3:])
    current = {fingerprint(a.as_type(Review)) for a in stored[:5]}  # r5 left the input
    current.add(fingerprint(Review(review_id="r5", rating=3, text="changed")))
    plan = plan_resume(stored, [trend_1, trend_2], consumed={a.id for a in stored}, current=current)
    assert plan.outputs == [trend_1]
    assert plan.done == {fingerprint(a.as_type(Review)) for a in stored[:3]}
    assert (plan.stale, plan.retried) == (1, 2)  # r5 as stored; r3 and r4 shared its report


def test_pending_reviews_count_as_done_and_failure_records_are_never_written() -> None:
    from flock_llm.cli.resume import fingerprint, plan_resume

    stored = [_review(n) for n in range(4)]
    failed = _output("FailureRecord", stored[:2])
    labelled = _output("ReviewLabel", stored[2:3])
    current = {fingerprint(a.as_type(Review)) for a in stored}
    plan = plan_resume(stored, [failed, labelled], consumed={"a0", "a1", "a2"}, current=current)
    assert plan.outputs == [labelled]
    assert plan.done == {fingerprint(stored[2].as_type(Review)), fingerprint(stored[3].as_type(Review))}
    assert (plan.retried, plan.stale) == (2, 0)
