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
