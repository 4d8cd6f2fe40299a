"""Side paths of `calibrate()` found by the `atkcal` attack (see /work/wt/findings/calibrate_local.md): its
arguments are checked against the type the answers will have before anything is asked."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flock_llm.artifact import Artifact
from flock_llm.cli.review_types import Review, ReviewLabel
from flock_llm.engines import EngineContext
from flock_llm.errors import ConfigurationError
from flock_llm.quality.calibration import calibrate


class _Unreachable:
    """An engine that fails the test if it is asked anything."""

    def __init__(self, output_type: type | None = None) -> None:
        self.output_type = output_type

    async def evaluate(self, *args: Any) -> Any:
        raise AssertionError("asked before the arguments were checked")

    evaluate_batch = evaluate


def _artifacts() -> list[Artifact]:
    return [Artifact(type_name="Review", payload=Review(review_id=f"r{k}", rating=3, text="ok")) for k in range(3)]


async def test_fields_are_checked_against_the_engine_s_output_type_before_asking() -> None:
    """`LLMEngine(output_type=ReviewLabel)` on an agent that publishes nothing (the engine's error message offers
    it): `fields=["mood"]` raised only in the first comparison, after the one-item pass had been paid for."""
    ctx = EngineContext(agent_name="a", publishes=())
    with pytest.raises(ConfigurationError, match=r"ReviewLabel has no field\(s\) \['mood'\]"):
        await calibrate(_Unreachable(ReviewLabel), ctx, _artifacts(), [2], model="m", fields=["mood"])  # type: ignore[arg-type]


async def test_a_gold_field_the_answers_lack_is_refused_before_asking() -> None:
    """`gold_field="lable"` (a typo) compared `getattr(answer, "lable", None)` with every gold label: 0% accuracy
    at every size, reported as a measurement, once every call was paid for."""
    artifacts = _artifacts()
    ctx = EngineContext(agent_name="a", publishes=(ReviewLabel,))
    gold = {a.id: "positive" for a in artifacts}
    with pytest.raises(ConfigurationError, match="`gold_field` 'lable'.*'label'"):
        await calibrate(_Unreachable(), ctx, artifacts, [2], model="m", gold=gold, gold_field="lable")  # type: ignore[arg-type]


def _feed(fifo: Path, data: bytes, stop: threading.Event, served: list[int]) -> None:
    """Write `data` to the named pipe for every reader that opens it, until `stop`."""
    while not stop.is_set():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO:
                raise
            stop.wait(0.01)
            continue
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        served.append(1)


def test_gold_from_a_named_pipe_is_refused_not_a_hang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--gold` reads the input a second time for the gold column: on a named pipe that second open waited for a
    writer forever (before anything was sent, but the command never ended). It is refused as `reviews` refuses a
    pipe it must read twice (here the pipe is fed to every reader, so a second read would not hang the test)."""
    from flock_llm.cli.main import main

    fifo = tmp_path / "reviews.jsonl"
    os.mkfifo(fifo)
    rows = [json.dumps({"id": f"r{k}", "rating": 3, "text": f"review {k}", "gold": "neutral"}) for k in range(4)]
    stop, served = threading.Event(), list[int]()
    feeder = threading.Thread(target=_feed, args=(fifo, ("\n".join(rows) + "\n").encode(), stop, served))
    feeder.start()
    try:
        code = main(["calibrate", str(fifo), "--sample", "4", "--sizes", "1,2", "--gold", "gold", "--estimate"])
    finally:
        stop.set()
        feeder.join()
    assert code == 2
    assert "named pipe" in capsys.readouterr().err and served == []  # refused before reading it


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_still_writes_the_report_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`flock-llm calibrate ... --report c.html | head -c 0`: printing the table raised BrokenPipeError out of the
    command (a traceback, exit 1) and the page was never written, after the whole calibration was paid for
    (`reviews` says "cannot write the outputs: Broken pipe" and exits 3)."""
    from flock_llm.cli.main import main

    monkeypatch.delenv("FLOCK_LLM_MODEL", raising=False)  # the offline model: nothing leaves the machine
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{k}", "rating": 3, "text": f"ok {k}"}) + "\n" for k in range(4)))
    report = tmp_path / "c.html"
    monkeypatch.setattr("sys.stdout", _ClosedPipe())
    assert main(["calibrate", str(path), "--sizes", "1,2", "--sample", "4", "--report", str(report)]) == 3
    assert "Recommended batch size" in report.read_text(encoding="utf-8")
    assert "cannot print the result" in capsys.readouterr().err
    assert main(["calibrate", str(path), "--sizes", "1,2", "--sample", "4", "--estimate"]) == 3


@pytest.mark.parametrize(("fields", "ignore"), [(None, None), ("label", ()), (None, "review_id")])
async def test_fields_or_ignore_that_are_not_lists_of_names_are_refused(fields: Any, ignore: Any) -> None:
    """`ignore=None` (as `fields=None` means "the default") raised TypeError from inside the check; a string was
    taken letter by letter ("no field(s) ['l', 'a', 'b', 'e', 'l']")."""
    ctx = EngineContext(agent_name="a", publishes=(ReviewLabel,))
    with pytest.raises(ConfigurationError, match="must be a list of field names"):
        await calibrate(_Unreachable(), ctx, _artifacts(), [2], model="m", fields=fields, ignore=ignore)  # type: ignore[arg-type]


@pytest.mark.usefixtures("litellm_clients_closed")
def test_a_local_model_costs_nothing_in_the_run_as_in_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--estimate` priced `--model local` at $0, the run itself showed "-" (cost unknown: litellm has no price
    for the served name) and `cost_usd: null` in the JSON. The fake server stands in for llama.cpp's."""
    from flock_llm.cli.main import main
    from flock_llm.testing import FakeOpenAIServer

    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{k}", "rating": 3, "text": f"ok {k}"}) + "\n" for k in range(4)))
    with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as fake:

        @contextlib.contextmanager
        def fake_local(name: str) -> Iterator[SimpleNamespace]:
            settings = {"api_base": fake.api_base, "api_key": "sk-local-model", "structured_output": "json_object",
                        "max_concurrent_requests": 1}  # fmt: skip
            yield SimpleNamespace(model="openai/SmolLM2-135M-Instruct.Q4_1", settings=settings, exited=lambda: None,
                                  last_log_lines=lambda: "(empty log)")  # fmt: skip

        monkeypatch.setattr("flock_llm.testing.local_server.local_model", fake_local)
        args = ["calibrate", str(path), "--model", "local", "--sizes", "2", "--sample", "4", "--json"]
        assert main([*args, "--estimate"]) == 0
        assert json.loads(capsys.readouterr().out)["cost_usd"] == 0
        assert main(args) == 0
        rows = json.loads(capsys.readouterr().out)["sizes"]
        assert fake.requests > 0 and [row["failed"] for row in rows] == [0, 0]
    assert [(row["cost_usd"], row["cost_per_item_usd"]) for row in rows] == [(0.0, 0.0), (0.0, 0.0)]
