"""`flock-llm reviews --audit RATE`: agreement with one-item answers in the summary and --json, audit calls
counted and priced by --estimate, bad rates refused before any work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flock_llm.cli.main import main
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer

WORDS = ("good", "bad", "plain")
LABELS = {"good": "positive", "bad": "negative", "plain": "neutral"}
MODEL = ["--model", "openai/gpt-4.1-mini"]


def truth(data: dict[str, Any]) -> dict[str, Any]:
    word = str(data.get("text", "")).rsplit(" ", 1)[-1]
    return {"label": LABELS.get(word, "neutral"), "reason": f"it says {word}"}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    model = DegradingModel(Degradation(collapse_at=4, steep=0.08), truth=truth, seed=3)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        monkeypatch.setenv("OPENAI_API_BASE", fake.api_base)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-local")
        monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        monkeypatch.delenv("FLOCK_LLM_MODEL", raising=False)
        monkeypatch.setenv("COLUMNS", "250")  # the summary table's rows on one line each
        yield fake


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.jsonl"
    rows = [{"id": f"r{k}", "rating": 1 + k % 5, "text": f"review {k} {WORDS[k % 3]}"} for k in range(120)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.usefixtures("litellm_clients_closed")
def test_audit_shows_agreement_with_its_interval_and_counts_its_calls(
    server: FakeOpenAIServer, reviews: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    args = ["reviews", str(reviews), *MODEL, "--per-item", "--batch-size", "12", "--no-progress"]
    assert main([*args, "--audit", "1", "--json", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    overall = summary["agreement"]["all"]
    assert summary["audit_rate"] == 1.0 and summary["audit_calls"] == 10 == overall["n"]  # one review per call
    assert summary["llm_calls"] == 10 + 10 == server.requests  # the audit calls are in the totals
    assert overall["low"] <= overall["rate"] < 1.0 and overall["rate"] <= overall["high"]  # batches of 12 degrade
    assert summary["agreement"]["size=12"]["n"] == 10 and summary["audit_tokens"] > 0
    # the label and its reason are compared; review_id is not: the output's is the review's own, not the model's
    assert {k for k in summary["agreement"] if k.startswith("field=")} == {"field=label", "field=reason"}
    assert len(out.read_text(encoding="utf-8").splitlines()) == 120  # audits publish nothing of their own

    assert main([*args, "--audit", "1", "--output", str(tmp_path / "again.jsonl")]) == 0
    table = capsys.readouterr().err
    assert "agreement (audit)" in table and "of audited items answered as when asked alone" in table
    assert "audit calls" in table and "10 of 20 calls" in table

    assert main([*args, "--output", str(tmp_path / "plain.jsonl"), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["audit_rate"] is None and plain["agreement"] == {} and plain["audit_calls"] == 0


def test_estimate_prices_the_audit(reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["reviews", str(reviews), *MODEL, "--per-item", "--batch-size", "12", "--estimate", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--audit", "0.5"]) == 0
    audited = json.loads(capsys.readouterr().out)
    assert plain["calls"] == 10 and plain["audit_calls"] == 0
    assert audited["audit_calls"] == 5 and audited["calls"] == 15  # half of the 10 calls, one review each
    assert audited["prompt_tokens"] == plain["prompt_tokens"] + audited["audit_prompt_tokens"]
    one_call = plain["prompt_tokens"] / plain["calls"]
    assert 0 < audited["audit_prompt_tokens"] < 5 * one_call  # a one-review prompt is shorter than a batch's
    assert audited["cost_usd"] > plain["cost_usd"]


@pytest.mark.parametrize("rate", ["0", "-0.1", "1.5", "nan", "inf", "two", ""])
def test_a_bad_audit_rate_is_refused_before_any_work(
    rate: str, reviews: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["reviews", str(reviews), "--per-item", "--audit", rate])
    assert exited.value.code == 2 and "--audit" in capsys.readouterr().err


def test_audit_needs_per_item(reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reviews", str(reviews), "--audit", "0.02", "--estimate"]) == 2
    assert "add --per-item" in capsys.readouterr().err
