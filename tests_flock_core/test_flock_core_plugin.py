"""flock_llm's LLM engine inside flock-core agents (run under Python 3.12 with flock-core 0.5.700)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import respx
from flock import BatchSpec, Flock, flock_type
from flock.core.artifacts import Artifact as CoreArtifact
from flock.utils.runtime import EvalInputs as CoreEvalInputs
from pydantic import BaseModel

from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.integrations.flock_core import FlockBatchLLMEngine

URL = "https://api.openai.com/v1/chat/completions"
KEY = "sk-flockcore-test-0123456789"
FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)


@flock_type
class CustomerReview(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type
class SentimentTrendReport(BaseModel):
    review_count: int
    summary: str


@flock_type
class ReviewSentiment(BaseModel):
    review_id: str
    label: str


def chat(content: Any) -> httpx.Response:
    text = content if isinstance(content, str) else json.dumps(content)
    return httpx.Response(200, json={
        "id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}})


def items_in(request: httpx.Request) -> list[tuple[str, dict[str, Any]]]:
    user = next(m["content"] for m in json.loads(request.content)["messages"] if m["role"] == "user")
    return [(i, json.loads(data)) for i, data in re.findall(r'<item id="([^"]+)">\n(.*?)\n</item>', user, re.S)]


def per_item(request: httpx.Request) -> httpx.Response:
    return chat({"results": [{"item_id": i, "output": {"review_id": d["review_id"], "label": "ok"}}
                             for i, d in items_in(request)]})


@pytest.fixture
def openai() -> Iterator[respx.MockRouter]:
    from flock_llm.engines._calls.models import load_litellm

    load_litellm().disable_aiohttp_transport = True
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


async def run_agent(engine: FlockBatchLLMEngine, output: type[BaseModel], n: int = 25) -> Flock:
    flock = Flock("openai/gpt-4.1-mini")
    # per-item outputs: flock-core needs a fan-out range, or it rejects any count but one
    fan_out = (1, 25) if engine.per_item else None
    (flock.agent("sentiment").description("Analyse customer reviews")
     .consumes(CustomerReview, batch=BatchSpec(size=25)).publishes(output, fan_out=fan_out).with_engines(engine))
    for i in range(n):
        await flock.publish(CustomerReview(review_id=f"r{i}", rating=1 + i % 5, text=f"review {i}"))
    await flock.run_until_idle()
    return flock


async def test_report_mode_makes_one_call_per_batch_of_25(openai: respx.MockRouter) -> None:
    route = openai.post(URL).mock(return_value=chat({"review_count": 25, "summary": "fine"}))
    flock = await run_agent(FlockBatchLLMEngine(model="openai/gpt-4.1-mini", api_key=KEY, retry=FAST),
                            SentimentTrendReport)
    assert route.call_count == 1 and len(items_in(route.calls[0].request)) == 25
    assert [r.review_count for r in await flock.store.get_by_type(SentimentTrendReport)] == [25]


async def test_per_item_mode_aligns_outputs_to_inputs(openai: respx.MockRouter) -> None:
    route = openai.post(URL).mock(side_effect=per_item)
    flock = await run_agent(FlockBatchLLMEngine(model="openai/gpt-4.1-mini", per_item=True, api_key=KEY,
                                                retry=FAST), ReviewSentiment)
    assert route.call_count == 1
    assert sorted(s.review_id for s in await flock.store.get_by_type(ReviewSentiment)) == sorted(
        f"r{i}" for i in range(25))


async def test_a_malformed_batch_answer_falls_back_per_item(openai: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return per_item(request) if len(items_in(request)) == 1 else chat("sorry, I cannot do JSON today")

    openai.post(URL).mock(side_effect=answer)
    flock = await run_agent(FlockBatchLLMEngine(model="openai/gpt-4.1-mini", per_item=True, api_key=KEY,
                                                retry=FAST), ReviewSentiment)
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 25


async def test_an_auth_error_names_every_input_in_flock_core_terms(openai: respx.MockRouter) -> None:
    route = openai.post(URL).mock(return_value=httpx.Response(401, json={"error": {"message": f"bad key {KEY}"}}))
    artifacts = [CoreArtifact(type=_type_name(),
                              payload={"review_id": f"r{i}", "rating": 3, "text": "t"}, produced_by="external")
                 for i in range(25)]
    engine = FlockBatchLLMEngine(model="openai/gpt-4.1-mini", api_key=KEY, retry=FAST)
    result = await engine.evaluate(
        SimpleNamespace(name="sentiment", description="d"), SimpleNamespace(is_batch=True),
        CoreEvalInputs(artifacts=artifacts),
        SimpleNamespace(outputs=[SimpleNamespace(spec=SimpleNamespace(model=SentimentTrendReport))]),
    )
    assert route.call_count == 1                      # never retried
    assert result.artifacts == []
    assert sorted(result.state["flock_llm_failed_input_ids"]) == sorted(str(a.id) for a in artifacts)
    assert result.metrics["flock_llm_failed_items"] == 25.0
    assert any("AuthenticationError" in line for line in result.logs)
    assert KEY not in json.dumps(result.logs) + json.dumps(result.state)


def _type_name() -> str:
    from flock.registry import type_registry

    return type_registry.name_for(CustomerReview)


def test_the_flock_core_example_runs_offline() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "flock_core" / "sentiment_plugin.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOCK_", "OPENAI_"))}
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 trend reports (25, 25 reviews), 50 per-review labels" in done.stdout
