"""Tracing: the guide's DuckDB query works as written; LLM spans carry tokens; no secrets; off means off."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import respx
from domain import CustomerReview, PaymentBatchReport, SentimentTrendReport, Transaction
from llm_fakes import MODEL, OPENAI_URL, chat

from flock_llm import Flock
from flock_llm.engines import EngineContext, EvalInputs
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FunctionEngine, ManualClock
from flock_llm.tracing import TracingConfig, tracing_config

GUIDE_ENV = {"FLOCK_AUTO_TRACE": "true", "FLOCK_TRACE_FILE": "true"}
GUIDE_QUERY = """
    SELECT
        name,
        attributes->'$.batch_size' as size,
        attributes->'$.flush_reason' as reason,
        duration_ms
    FROM spans
    WHERE name LIKE '%batch%'
    ORDER BY start_time DESC
    LIMIT 20
"""


def query(path: Path | str, sql: str) -> list[tuple[object, ...]]:
    import duckdb

    connection = duckdb.connect(str(path), read_only=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def report(ctx: EngineContext, inputs: EvalInputs) -> PaymentBatchReport:
    return PaymentBatchReport(batch_id=ctx.batch_id or "", transaction_count=len(inputs), total_amount=0.0)


def payments(flock: Flock, *, size: int, timeout_s: int) -> None:
    batch = BatchSpec(size=size, timeout=timedelta(seconds=timeout_s))
    flock.agent("payments").consumes(Transaction, batch=batch).publishes(PaymentBatchReport).with_engines(
        FunctionEngine(batch=report)
    )


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_tracing_is_configured_by_argument_or_the_guides_variables() -> None:
    assert tracing_config(None, {}) is None
    assert tracing_config(None, {"FLOCK_AUTO_TRACE": "true"}) == TracingConfig(duckdb_path=None)
    assert tracing_config(None, GUIDE_ENV) == TracingConfig(duckdb_path=".flock/traces.duckdb")
    assert tracing_config(True, {"FLOCK_TRACE_PATH": "x.duckdb"}) == TracingConfig(duckdb_path="x.duckdb")
    assert tracing_config(False, GUIDE_ENV) is None


async def test_the_guides_query_returns_size_and_timeout_flushes(in_tmp: Path) -> None:
    clock = ManualClock()
    flock = Flock(clock=clock, env=GUIDE_ENV)
    payments(flock, size=5, timeout_s=30)
    await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(7))
    clock.advance(30)
    await flock.run_until_idle()
    await flock.shutdown()
    rows = query(in_tmp / ".flock" / "traces.duckdb", GUIDE_QUERY)
    flushes = [(size, reason) for name, size, reason, _ in rows if name == "flock.batch.flush"]
    assert sorted(flushes) == [("2", '"timeout"'), ("5", '"size"')]
    assert all(isinstance(duration, float) for *_, duration in rows)
    names = {name for (name,) in query(in_tmp / ".flock" / "traces.duckdb", "SELECT DISTINCT name FROM spans")}
    assert {"flock.publish", "flock.batch.flush", "flock.engine.evaluate_batch"} <= names
    parents = query(
        in_tmp / ".flock" / "traces.duckdb",
        """
        SELECT count(*) FROM spans e JOIN spans f ON e.parent_id = f.span_id
        WHERE e.name = 'flock.engine.evaluate_batch' AND f.name = 'flock.batch.flush'""",
    )
    assert parents == [(2,)]


async def test_nothing_is_written_when_tracing_is_off(in_tmp: Path) -> None:
    flock = Flock(env={})
    payments(flock, size=2, timeout_s=1)
    await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(4))
    await flock.shutdown()
    assert not (in_tmp / ".flock").exists() and list(in_tmp.iterdir()) == []


async def test_llm_spans_carry_tokens_and_no_secret_reaches_the_file(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flock_llm.engines._calls.models import load_litellm

    secret = "sk-trace-SECRET-9876543210"
    monkeypatch.setattr(load_litellm(), "disable_aiohttp_transport", True)
    with respx.mock(assert_all_mocked=True) as router:
        router.post(OPENAI_URL).mock(
            return_value=chat(
                {"review_count": 3, "average_rating": 4.0, "summary": "good"}, prompt_tokens=321, completion_tokens=12
            )
        )
        flock = Flock(env=GUIDE_ENV)
        (
            flock.agent("sentiment")
            .consumes(CustomerReview, batch=BatchSpec(size=3, timeout=timedelta(seconds=5)))
            .publishes(SentimentTrendReport)
            .with_engines(LLMEngine(MODEL, api_key=secret, retry=RetryPolicy(attempts=1)))
        )
        await flock.publish_many(CustomerReview(review_id=f"r{i}", rating=4, text=f"text {i}") for i in range(3))
        await flock.run_until_idle()
        await flock.shutdown()
    path = in_tmp / ".flock" / "traces.duckdb"
    ((model, prompt, completion, items, outcome),) = query(
        path,
        """
        SELECT attributes->>'$.model', attributes->>'$.prompt_tokens', attributes->>'$.completion_tokens',
               attributes->>'$.items', attributes->>'$.outcome' FROM spans WHERE name = 'flock.llm.call'""",
    )
    assert (model, prompt, completion, items, outcome) == (MODEL, "321", "12", "3", "ok")
    (engine_span,) = query(path, "SELECT attributes->>'$.llm_calls' FROM spans WHERE name LIKE 'flock.engine%'")
    assert engine_span == ("1",)
    everything = " ".join(str(row) for row in query(path, "SELECT * FROM spans"))
    assert secret not in everything and "text 1" not in everything  # no keys, no prompt text by default
    assert secret.encode() not in path.read_bytes()


async def test_the_file_is_readable_by_another_process_while_a_run_is_active(in_tmp: Path) -> None:
    flock = Flock(env=GUIDE_ENV)
    payments(flock, size=2, timeout_s=60)
    await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(4))
    await flock.run_until_idle()
    flock.flush_traces()
    reader = (
        "import duckdb; c = duckdb.connect('.flock/traces.duckdb', read_only=True);"
        "print(c.execute(\"SELECT count(*) FROM spans WHERE name = 'flock.batch.flush'\").fetchone()[0])"
    )
    done = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=60, cwd=in_tmp)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    await flock.publish_many(Transaction(transaction_id=f"u{i}") for i in range(2))  # the run goes on writing
    await flock.shutdown()
    assert query(
        in_tmp / ".flock" / "traces.duckdb", "SELECT count(*) FROM spans WHERE name = 'flock.batch.flush'"
    ) == [(3,)]


def test_traces_command_prints_flushes_and_calls(in_tmp: Path) -> None:
    import asyncio

    async def run() -> None:
        flock = Flock(env=GUIDE_ENV)
        payments(flock, size=2, timeout_s=60)
        await flock.publish_many(Transaction(transaction_id=f"t{i}") for i in range(3))
        await flock.shutdown()

    asyncio.run(run())
    done = subprocess.run(
        [sys.executable, "-m", "flock_llm", "traces", "--limit", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=in_tmp,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "recent batch flushes" in done.stdout and "payments" in done.stdout
    assert "shutdown" in done.stdout and "size" in done.stdout and "50%" in done.stdout
