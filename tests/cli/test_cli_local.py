"""`--model local[:NAME]` names a model served on this machine; a name it does not know is a usage error before
anything starts (the real runs are in tests/e2e/test_local_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flock_llm.cli.local import local_name
from flock_llm.cli.main import EXIT_USAGE, main


def test_local_model_names() -> None:
    assert local_name("local") == "smollm2"
    assert local_name("local:gemma3-270m") == "gemma3-270m"
    assert local_name("local:/models/x.gguf") == "/models/x.gguf"
    assert local_name("openai/gpt-4.1-mini") is None and local_name(None) is None


def test_an_unknown_local_model_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "r.jsonl"
    source.write_text('{"id": "R1", "rating": 5, "text": "good"}\n')
    assert main(["reviews", str(source), "--model", "local:nope", "-o", str(tmp_path / "out.jsonl")]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert "unknown local model 'nope'" in error and "smollm2" in error
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.usefixtures("cli_in_process")
def test_a_local_run_with_a_store_resumes_under_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store records `local:smollm2` (what the user typed), not the name the local server serves the model
    under, so the same command again resumes instead of being refused as a run of another model. (The local
    server is the fake OpenAI server here: the real one is in tests/e2e/test_local_model.py.)"""
    import contextlib
    import json
    from collections.abc import Iterator
    from types import SimpleNamespace

    from flock_llm.testing import FakeOpenAIServer

    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    source = tmp_path / "r.jsonl"
    rows = (json.dumps({"id": f"R{i}", "rating": 1 + i % 5, "text": "fine"}) for i in range(4))
    source.write_text("".join(f"{row}\n" for row in rows))
    served: list[str] = []
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:

        @contextlib.contextmanager
        def fake_local(name: str) -> Iterator[SimpleNamespace]:
            served.append(name)
            settings = {"api_base": fake.api_base, "api_key": "sk-local-model", "structured_output": "json_object"}
            yield SimpleNamespace(model="openai/SmolLM2-135M-Instruct.Q4_1", settings=settings)

        monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
        store, out = f"sqlite:///{tmp_path / 'run.db'}", tmp_path / "out.jsonl"
        command = ["reviews", str(source), "--model", "local", "--per-item", "--store", store, "--json"]
        command.append("--no-progress")
        first = main([*command, "-o", str(out)])
        first_summary = json.loads(capsys.readouterr().out)
        again = main([*command, "-o", str(tmp_path / "again.jsonl")])
        captured = capsys.readouterr()
        calls = fake.requests
    assert (first, first_summary["items"], first_summary["failed_items"]) == (0, 4, 0)
    assert again == 0, captured.err
    assert "was made with model" not in captured.err
    assert json.loads(captured.out)["resumed"] == 4 and calls == first_summary["llm_calls"]  # nothing asked again
    assert served == ["smollm2", "smollm2"]
    labels = [r for r in (tmp_path / "again.jsonl").read_text().splitlines() if '"ReviewLabel"' in r]
    assert len(labels) == 4
