"""Model resolution, the offline model end to end, and the pure parsing/placeholder pieces."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from conftest import references
from domain import CustomerReview, ReviewSentiment, SentimentTrendReport
from pydantic import BaseModel

from flock_llm import ConfigurationError, FailureRecord, Flock
from flock_llm.engines._calls.models import OFFLINE_MODEL, redact, resolve_model
from flock_llm.engines._ladder.parsing import extract_json, parse_per_item, parse_report
from flock_llm.engines.llm import LLMEngine
from flock_llm.engines.offline.answers import placeholder_for
from flock_llm.subscription import BatchSpec


def test_model_resolution_order() -> None:
    env = {"FLOCK_LLM_MODEL": "anthropic/claude-sonnet-4"}
    assert resolve_model("openai/gpt-4.1", "ollama/llama3.2", env) == "openai/gpt-4.1"
    assert resolve_model(None, "ollama/llama3.2", env) == "ollama/llama3.2"
    assert resolve_model(None, None, env) == "anthropic/claude-sonnet-4"
    assert resolve_model(None, None, {}) == OFFLINE_MODEL
    with pytest.raises(ConfigurationError, match="not a litellm model string"):
        resolve_model("llama", None, {})


async def test_offline_model_end_to_end_in_both_shapes(caplog: pytest.LogCaptureFixture) -> None:
    """No key, no FLOCK_LLM_MODEL: the default engine runs offline and says so once."""
    flock = Flock(env={})
    (
        flock.agent("trend")
        .consumes(CustomerReview, batch=BatchSpec(size=5, timeout=timedelta(seconds=30)))
        .publishes(SentimentTrendReport)
    )
    (
        flock.agent("sentiment")
        .consumes(CustomerReview, batch=BatchSpec(size=5, timeout=timedelta(seconds=30)))
        .publishes(ReviewSentiment)
        .with_engines(LLMEngine(per_item=True))
    )
    with caplog.at_level(logging.WARNING, logger="flock_llm"):
        published = await flock.publish_many(
            CustomerReview(review_id=f"r{i}", rating=i % 5 + 1, text=f"review {i}") for i in range(12)
        )
        await flock.run_until_idle()
        await flock.shutdown()
    assert len(await flock.store.get_by_type(SentimentTrendReport)) == 3  # 5 + 5 + 2 at shutdown
    assert len(await flock.store.get_by_type(ReviewSentiment)) == 12
    assert await flock.store.get_by_type(FailureRecord) == []
    for agent in ("trend", "sentiment"):
        assert await references(flock, agent) == {a.id: 1 for a in published}
        usage = flock.metrics().usage[agent]
        assert usage["model"] == OFFLINE_MODEL and usage["llm_calls"] == 3
        assert usage["prompt_tokens"] < usage["per_item_prompt_tokens"]
    offline_notes = [r for r in caplog.records if "OFFLINE model" in r.getMessage()]
    assert len(offline_notes) <= 1  # said once per process (possibly by an earlier test)


async def test_llm_engine_without_an_output_type_fails_clearly() -> None:
    flock = Flock(env={})
    flock.agent("mute").consumes(CustomerReview, batch=BatchSpec(size=1, timeout=timedelta(seconds=1)))
    published = await flock.publish(CustomerReview(review_id="r", rating=1, text="t"))
    await flock.run_until_idle()
    (record,) = await flock.store.get_by_type(FailureRecord)
    assert record.input_ids == [published.id] and "add `.publishes(YourType)`" in record.error


def test_engine_arguments_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="`num_retries` is set by LLMEngine itself"):
        LLMEngine(num_retries=3)
    with pytest.raises(ConfigurationError, match="`max_concurrent_requests` must be a whole number > 0, got 0"):
        LLMEngine(max_concurrent_requests=0)
    with pytest.raises(ConfigurationError, match="`requests_per_minute` must be a number > 0, got -1"):
        LLMEngine(requests_per_minute=-1)
    with pytest.raises(ConfigurationError, match="unknown prompt template"):
        LLMEngine(prompts={"sytem": "typo"})


def test_extract_json_finds_the_object_in_fences_and_prose() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": 2}\n```') == {"a": 2}
    assert extract_json('Here you go: {"a": 3} -- enjoy') == {"a": 3}
    with pytest.raises(ValueError, match="holds no JSON"):
        extract_json("no json here")


def test_parse_report_and_per_item_report_what_is_wrong() -> None:
    class Out(BaseModel):
        n: int

    assert parse_report('{"n": 1}', Out) == (Out(n=1), [])
    obj, errors = parse_report('{"n": "x"}', Out)
    assert obj is None and errors == ["n: Input should be a valid integer, unable to parse string as an integer"]
    results = parse_per_item(
        {
            "results": [
                {"item_id": "a", "output": {"n": 1}},
                {"item_id": "b", "output": {"n": "bad"}},
                {"item_id": "zz", "output": {"n": 3}},
            ]
        },
        ["a", "b", "c"],
        Out,
    )
    assert results.valid == {"a": Out(n=1)} and list(results.errors) == ["b"]
    assert results.missing == ["c"] and results.unknown == ["zz"]
    assert any("item b: n:" in line for line in results.feedback())


def test_placeholders_validate_against_their_schema() -> None:
    class Inner(BaseModel):
        tags: list[str]
        score: float | None = None

    class Outer(BaseModel):
        count: int
        inner: Inner
        items: list[Inner]
        mode: str = "x"

    assert Outer.model_validate(placeholder_for(Outer.model_json_schema()))
    wrapper = {
        "type": "object",
        "properties": {
            "results": {
                "type": "array",
                "items": {"type": "object", "properties": {"item_id": {"type": "string", "enum": ["i1", "i2", "i3"]}}},
            }
        },
    }
    assert [r["item_id"] for r in placeholder_for(wrapper)["results"]] == ["i1", "i2", "i3"]


def test_redact_removes_known_secrets_and_key_shapes() -> None:
    text = "bad key sk-abcdefghijklmnop and Bearer abc.def.ghi.jkl and mysecretvalue"
    cleaned = redact(text, ["mysecretvalue"])
    assert "sk-abcdefghijklmnop" not in cleaned and "mysecretvalue" not in cleaned and "abc.def" not in cleaned


async def test_requests_per_minute_spaces_calls() -> None:
    import asyncio

    from flock_llm.engines._calls.retry import RequestLimiter

    limiter = RequestLimiter(None, per_minute=1200)  # one start every 50 ms
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def call() -> None:
        starts.append(loop.time())

    await asyncio.gather(*(limiter.run(call) for _ in range(4)))
    # the k-th call starts no sooner than k slots after the first: at most k + 1 starts in any k x 50 ms. (Gaps
    # between neighbours are no measure: on a busy machine one call can wake late and the next one on time.)
    assert all(start - starts[0] >= k * 0.05 - 0.005 for k, start in enumerate(starts)), starts
