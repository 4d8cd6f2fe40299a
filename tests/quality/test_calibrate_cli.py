"""`flock-llm calibrate` against the degrading fake provider: the table, the JSON, the recommendation, gold
accuracy, the HTML page and --estimate (which sends nothing)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flock_llm.cli.main import main
from flock_llm.testing import Degradation, DegradingModel, FakeOpenAIServer

WORDS = ("good", "bad", "plain")
LABELS = {"good": "positive", "bad": "negative", "plain": "neutral"}


def truth(data: dict[str, Any]) -> dict[str, Any]:
    word = str(data.get("text", "")).rsplit(" ", 1)[-1]
    return {"label": LABELS.get(word, "neutral"), "reason": f"it says {word}"}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    model = DegradingModel(Degradation(collapse_at=6, steep=0.06), truth=truth, seed=11)
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0, degrade=model) as fake:
        monkeypatch.setenv("OPENAI_API_BASE", fake.api_base)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-local")
        monkeypatch.delenv("FLOCK_LLM_MODEL", raising=False)
        yield fake


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.jsonl"
    rows = []
    for k in range(80):
        word = WORDS[k % 3]
        # every 10th gold label disagrees with what the model says alone: accuracy is below agreement
        gold = "neutral" if k % 10 == 0 and word != "plain" else LABELS[word]
        rows.append(json.dumps({"id": f"r{k}", "rating": 3, "text": f"review {k} is {word}", "gold": gold}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.usefixtures("litellm_clients_closed")
def test_calibrate_recommends_the_largest_size_that_agrees(
    server: FakeOpenAIServer, reviews: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "calibrate.html"
    args = [
        "calibrate",
        str(reviews),
        "--model",
        "openai/gpt-4.1-mini",
        "--sizes",
        "4,8,20",
        "--sample",
        "40",
        "--tolerance",
        "0.1",
    ]
    assert main([*args, "--gold", "gold", "--json", "--report", str(report)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["size"]: row for row in result["sizes"]}
    assert sorted(rows) == [1, 4, 8, 20]
    assert rows[1]["agreement"]["rate"] == 1.0 and rows[1]["calls"] == 40
    assert rows[4]["agreement"]["rate"] >= 0.95 > rows[20]["agreement"]["rate"]
    assert rows[4]["agreement"]["low"] >= 0.9  # 40 of 40 agree: the lower bound is 91.2%
    assert rows[20]["agreement"]["low"] < rows[20]["agreement"]["rate"] < rows[20]["agreement"]["high"]
    assert result["recommended_size"] in (4, 8) and result["reason"]
    assert rows[20]["calls_per_item"] < rows[4]["calls_per_item"] < rows[1]["calls_per_item"] == 1.0
    assert rows[1]["cost_per_item_usd"] > rows[20]["cost_per_item_usd"] > 0
    assert 0.8 <= rows[1]["accuracy"]["rate"] < 1.0  # the gold column disagrees on every 10th review
    assert rows[20]["accuracy"]["rate"] < rows[1]["accuracy"]["rate"]
    assert "middle" in rows[20]["by_position"]
    assert server.requests == sum(row["calls"] for row in rows.values())
    page = report.read_text(encoding="utf-8")
    assert "Recommended batch size" in page and "<table>" in page
    assert "agreement by field at sizes 1/4/8/20:" in page and "<p>  label: 100.0%/" in page


@pytest.mark.usefixtures("litellm_clients_closed")
def test_the_table_names_each_size_and_the_recommendation(
    server: FakeOpenAIServer, reviews: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", str(reviews), "--model", "openai/gpt-4.1-mini", "--sizes", "1,5", "--sample", "20"]) == 0
    out = capsys.readouterr().out
    assert "agreement [95% CI]" in out and "recommended batch size:" in out
    assert out.splitlines()[3].startswith("1 ") and out.splitlines()[4].startswith("5 ")


@pytest.mark.usefixtures("litellm_clients_closed")
def test_estimate_sends_nothing(server: FakeOpenAIServer, reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["calibrate", str(reviews), "--model", "openai/gpt-4.1-mini", "--sizes", "1,10", "--sample", "30"]
    assert main([*args, "--estimate", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["calls"] == 30 + 3 and figures["prompt_tokens"] > 0 and figures["cost_usd"] > 0
    assert server.requests == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--sizes", "0,5"], "positive"), (["--sizes", "a"], "whole numbers"), (["--sample", "0"], "--sample")],
)
def test_bad_arguments_exit_2(
    reviews: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", str(reviews), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_gold_column_is_named(reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(reviews), "--gold", "truth"]) == 2
    assert "'truth'" in capsys.readouterr().err


@pytest.mark.usefixtures("litellm_clients_closed")
def test_calibrate_serves_a_local_model_for_the_calibration_and_stops_it(
    server: FakeOpenAIServer,
    reviews: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--model local` measures a model served on this machine (here the fake server stands in for llama.cpp's):
    the server is started once for the calibration and stopped after it, its requests are the table's calls, the
    table names `local:smollm2`; `--estimate` and an unknown local model start no server. When the server exits
    during the calibration, the calls left fail at once naming how (exit 1: nothing batched was compared)."""
    monkeypatch.delenv("OPENAI_API_BASE")
    events: list[str] = []
    exit_after: list[int] = []  # the server "exits" once it has answered this many requests

    def exited() -> str | None:
        done = bool(exit_after) and server.requests >= exit_after[0]
        return "the local model server exited (killed by signal 9, SIGKILL)" if done else None

    @contextlib.contextmanager
    def fake_local(name: str) -> Iterator[SimpleNamespace]:
        events.append(f"start {name}")
        settings = {"api_base": server.api_base, "api_key": "sk-local-model", "structured_output": "json_object",
                    "max_concurrent_requests": 1}  # fmt: skip
        try:
            yield SimpleNamespace(model="openai/SmolLM2-135M-Instruct.Q4_1", settings=settings, exited=exited,
                                  last_log_lines=lambda: "(empty log)")  # fmt: skip
        finally:
            events.append("stop")

    monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
    args = ["calibrate", str(reviews), "--model", "local", "--sizes", "4,20", "--sample", "40", "--json"]
    assert main([*args, "--gold", "gold"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["size"]: row for row in result["sizes"]}
    assert events == ["start smollm2", "stop"] and result["model"] == "local:smollm2"
    assert server.requests == sum(row["calls"] for row in rows.values()) == 40 + 10 + 2
    assert rows[4]["agreement"]["rate"] > rows[20]["agreement"]["rate"] and rows[1]["accuracy"]["n"] == 40

    assert main([*args, "--estimate"]) == 0  # counts the prompts; starts nothing, sends nothing, costs nothing
    figures = json.loads(capsys.readouterr().out)
    assert figures["calls"] == 52 and figures["cost_usd"] == 0 and figures["model"] == "local:smollm2"
    assert main(["calibrate", str(reviews), "--model", "local:nope"]) == 2
    assert "unknown local model 'nope'" in capsys.readouterr().err
    assert events == ["start smollm2", "stop"] and server.requests == 52

    exit_after.append(server.requests + 40)  # dies once the one-item answers are in
    code = main(args)
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "the local model server exited (killed by signal 9, SIGKILL) during the calibration" in captured.err
    assert "the local model server exited (killed by signal 9, SIGKILL)" in caplog.text  # said once, at once
    rows = {row["size"]: row for row in json.loads(captured.out)["sizes"]}
    assert rows[4]["failed"] == rows[20]["failed"] == 40 and rows[4]["calls"] == rows[20]["calls"] == 0
    assert server.requests == 52 + 40 and events[-2:] == ["start smollm2", "stop"]

    # dies after the size-4 pass: size 20 measured nothing, so there is no recommendation to trust (was exit 0)
    exit_after[0] = server.requests + 40 + 10
    code = main(args)
    captured = capsys.readouterr()
    rows = {row["size"]: row for row in json.loads(captured.out)["sizes"]}
    assert code == 1 and "the recommendation is not a measurement" in captured.err
    assert rows[4]["failed"] == 0 and rows[20]["failed"] == 40 and server.requests == 52 + 40 + 50


@pytest.mark.usefixtures("litellm_clients_closed")
def test_fields_choose_what_is_compared_and_each_field_s_agreement_is_shown(
    server: FakeOpenAIServer, reviews: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real model rewords its free-text reason at every call, so whole answers never agree: `--fields label`
    measures the labels alone; the table and the JSON show each compared field's agreement per size; review_id
    is compared only when named (the output's review_id is the review's own, whatever the model wrote)."""
    args = ["calibrate", str(reviews), "--model", "openai/gpt-4.1-mini", "--sizes", "20", "--sample", "40"]
    assert main([*args, "--json"]) == 0
    every = {row["size"]: row for row in json.loads(capsys.readouterr().out)["sizes"]}
    assert set(every[20]["by_field"]) == {"label", "reason"}  # review_id: the output's is the review's own
    low = min(field["rate"] for field in every[20]["by_field"].values())
    assert every[20]["agreement"]["rate"] <= low < 1.0  # a whole answer agrees when every field does
    assert main([*args, "--fields", "label", "--json"]) == 0
    labels = {row["size"]: row for row in json.loads(capsys.readouterr().out)["sizes"]}
    assert set(labels[20]["by_field"]) == {"label"}
    assert labels[20]["agreement"]["rate"] == every[20]["by_field"]["label"]["rate"]  # same answers, label only
    assert main([*args, "--fields", "label,review_id"]) == 0  # named: compared
    out = capsys.readouterr().out
    assert "agreement by field at sizes 1/20:" in out and "  label: 100.0%/" in out and "  review_id: " in out
    assert "reason" not in out
    sent = server.requests
    bad_arguments = (
        (["--fields", "mood"], "no field(s) ['mood']"),
        (["--fields", "label", "--ignore", "label"], "no field of ReviewLabel is left"),
        (["--fields", "label", "--ignore", "reason"], "`ignore` names field(s) ['reason']"),  # raised once paid
        (["--ignore", "label,reason"], "no field of ReviewLabel is left"),  # (review_id is not compared either)
        (["--fields", ","], "names no field"),
    )
    for bad, message in bad_arguments:
        assert main([*args, *bad]) == 2
        assert message in capsys.readouterr().err
    assert server.requests == sent  # checked before anything was sent


async def test_calibrate_checks_its_fields_before_asking_anything() -> None:
    from flock_llm.artifact import Artifact
    from flock_llm.cli.review_types import Review, ReviewLabel
    from flock_llm.engines import EngineContext
    from flock_llm.errors import ConfigurationError
    from flock_llm.quality.calibration import calibrate

    class Unreachable:
        async def evaluate(self, *args: Any) -> Any:
            raise AssertionError("asked")

        evaluate_batch = evaluate

    ctx = EngineContext(agent_name="a", publishes=(ReviewLabel,))
    artifacts = [Artifact(type_name="Review", payload=Review(review_id="r", rating=3, text="ok"))]
    checks = ((["mood"], ()), (["label"], ["label"]), (None, ["label", "reason", "review_id"]), (["label"], ["reason"]))
    for fields, ignore in checks:
        with pytest.raises(ConfigurationError, match="mood|no field of ReviewLabel is left|`ignore` names"):
            await calibrate(Unreachable(), ctx, artifacts, [2], model="m", fields=fields, ignore=ignore)  # type: ignore[arg-type]
