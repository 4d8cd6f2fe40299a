"""Structured output per server: the mode rule, the pinned schema, the fallback after a rejection (pure), and the
engine asking again in the next mode when a server rejects one (respx)."""

from __future__ import annotations

import logging

import pytest
import respx
from conftest import references
from domain import ReviewSentiment
from llm_fakes import OPENAI_URL, body, chat, error, item_ids
from test_llm_engine import FAST_RETRY, reviews, run_batch

from flock_llm.engines._ladder.formats import (
    FormatMemory,
    as_setting,
    downgraded,
    format_rejected,
    per_item_schema,
    request_format,
    resolve_format,
)
from flock_llm.engines.llm import LLMEngine
from flock_llm.errors import ConfigurationError

LOCAL_URL = "http://127.0.0.1:8999/v1/chat/completions"
OUTPUT = ReviewSentiment.model_json_schema()


def test_settings_and_their_aliases() -> None:
    assert [as_setting(v) for v in (None, True, False, "json_object")] == [
        "auto",
        "json_schema",
        "prompt",
        "json_object",
    ]
    with pytest.raises(ConfigurationError, match=r"`structured_output` must be one of .*got 'grammar'"):
        as_setting("grammar")
    with pytest.raises(ConfigurationError):
        LLMEngine(structured_output=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "model", "api_base", "known", "expected"),
    [
        ("auto", "openai/gpt-4.1-mini", None, True, ("json_schema", False, "hosted")),  # hosted: cache-friendly
        ("auto", "openai/gpt-4.1-mini", "https://gateway.example/v1", True, ("json_schema", False, "hosted")),
        ("auto", "anthropic/claude-x", None, False, ("prompt", False, "hosted")),  # litellm says no schema
        ("auto", "openai/smollm2", "http://127.0.0.1:8080/v1", False, ("json_schema", True, "OpenAI-compatible")),
        ("auto", "ollama_chat/llama3.2", None, False, ("json_schema", True, "Ollama")),  # litellm sends `format`
        ("auto", "hosted_vllm/qwen", "http://gpu:8000/v1", False, ("json_schema", True, "vLLM")),
        ("auto", "lm_studio/phi", None, False, ("json_schema", True, "LM Studio")),
        ("auto", "llamafile/x", None, False, ("json_object", True, "llama.cpp")),
        (
            "json_object",
            "openai/smollm2",
            "http://127.0.0.1:8080/v1",
            False,
            ("json_object", True, "OpenAI-compatible"),
        ),
        ("json_schema", "openai/fake", "http://127.0.0.1:8080/v1", False, ("json_schema", False, "OpenAI-compatible")),
        ("prompt", "ollama/llama3.2", None, False, ("prompt", False, "Ollama")),
        ("auto", "flock-offline/placeholder", None, False, ("json_schema", False, "offline")),
    ],
)
def test_the_documented_rule(
    setting: str, model: str, api_base: str | None, known: bool, expected: tuple[str, bool, str]
) -> None:
    found = resolve_format(
        as_setting(setting),
        model,
        api_base=api_base,
        litellm_takes_schema=known,
        offline=model.startswith("flock-offline"),
    )
    assert (found.mode, found.pinned, found.server) == expected


def test_a_pinned_schema_requires_every_id_once_and_bounds_strings() -> None:
    pinned = per_item_schema(OUTPUT, ["i1", "i2"])
    results = pinned["properties"]["results"]
    assert results["type"] == "object" and results["required"] == ["i1", "i2"]
    assert results["additionalProperties"] is False and set(results["properties"]) == {"i1", "i2"}
    assert results["properties"]["i1"]["properties"]["label"]["maxLength"] == 160
    hosted = per_item_schema(OUTPUT, None)
    assert hosted["properties"]["results"]["type"] == "array"  # the same bytes for every batch: prompt caches hit
    assert "maxLength" not in str(hosted)


def test_fallback_order_and_the_memory_per_endpoint() -> None:
    schema = per_item_schema(OUTPUT, ["i1"])
    sent = request_format("json_schema", "ReviewSentiment_per_item", schema)
    assert sent is not None and sent["json_schema"]["schema"] == schema
    assert downgraded(sent, "json_object") == {"type": "json_object", "schema": schema}
    assert downgraded(sent, "prompt") is None
    memory = FormatMemory()
    assert memory.reject("a", "json_schema") == "json_object"
    assert memory.reject("a", "json_schema") == "json_object"  # a call that was in flight: no second step down
    assert memory.mode("a", "json_schema") == "json_object" and memory.mode("b", "json_schema") == "json_schema"
    assert memory.reject("a", "json_object") == "prompt" and memory.reject("c", "prompt") is None


@pytest.mark.parametrize(
    ("status", "message", "rejected"),
    [
        (500, "Invalid request: response_format.type 'json_schema' is not one of 'text', 'json_object'", True),
        (400, "Unrecognized request argument supplied: response_format", True),
        (422, "unknown variant `json_schema`", True),
        (500, "CUDA out of memory", False),
        (429, "rate limited: response_format", False),
        (401, "invalid api key", False),
        (None, "response_format", False),
    ],
)
def test_what_counts_as_a_rejected_format(status: int | None, message: str, rejected: bool) -> None:
    assert format_rejected(status, message) is rejected


async def test_a_server_that_rejects_json_schema_gets_json_object_once_and_for_good(
    openai: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp's server answers OpenAI's json_schema with HTTP 500: the engine asks again at once with
    `json_object` + schema, says so once, and every later batch starts there; the ids are pinned."""

    def answer(request: object) -> object:
        sent = body(request)["response_format"]  # type: ignore[arg-type]
        if sent["type"] == "json_schema":
            return error(500, "Invalid request: response_format: 'json_schema' not in ('text', 'json_object')")
        ids = item_ids(request)  # type: ignore[arg-type]
        assert sent["schema"]["properties"]["results"]["required"] == ids
        return chat({"results": {i: {"review_id": f"r-{i}", "label": "positive"} for i in ids}})

    route = openai.post(LOCAL_URL).mock(side_effect=answer)
    engine = LLMEngine(
        "openai/smollm2", per_item=True, api_base="http://127.0.0.1:8999/v1", api_key="sk-local", retry=FAST_RETRY
    )
    with caplog.at_level(logging.WARNING, logger="flock_llm.engines"):
        flock, published = await run_batch(engine, reviews(6), per_item=True, size=3)
    kinds = [body(c.request)["response_format"]["type"] for c in route.calls]
    rejected = kinds.count("json_schema")  # the two batches run at once: both may have sent it before the answer
    assert kinds[0] == "json_schema" and 1 <= rejected <= 2 and kinds.count("json_object") == 2
    assert len([r for r in caplog.records if "rejected response_format 'json_schema'" in r.message]) == 1
    usage = flock.metrics().usage["sentiment"]
    assert (usage["format_fallbacks"], usage["llm_calls"]) == (rejected, rejected + 2)
    assert (usage["retries"], usage["failed_items"]) == (0, 0)
    _, again = await run_batch(engine, reviews(3), per_item=True)  # the engine remembers: no json_schema again
    assert [body(c.request)["response_format"]["type"] for c in route.calls[len(kinds) :]] == ["json_object"]
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}


KEYED = '{"results": {"<the item\'s id>": <a ReviewSentiment object>, ...}}'
LISTED = '{"results": [{"item_id": "<the item\'s id>", "output": <a ReviewSentiment object>}, ...]}'


@pytest.mark.parametrize(
    ("setting", "model", "local", "sent", "described"),
    [
        ("json_object", "openai/smollm2", True, "json_object keyed", KEYED),
        ("auto", "openai/smollm2", True, "json_schema keyed", KEYED),
        ("json_schema", "openai/smollm2", True, "json_schema listed", LISTED),
        ("prompt", "openai/smollm2", True, "none", LISTED),
        ("auto", "hosted_vllm/smollm2", True, "json_schema keyed", KEYED),
        ("auto", "gpt-4o-mini", False, "json_schema listed", LISTED),
    ],
)
async def test_the_system_prompt_describes_the_form_the_request_asks_for(
    openai: respx.MockRouter, setting: str, model: str, local: bool, sent: str, described: str
) -> None:
    """A grammar-constrained server is sent results keyed by item id: the system prompt must ask for that form,
    not the array it asks hosted providers for (a small model told one form and forced into another does
    worse); a model answering the form it was told labels every item."""
    prompts: list[str] = []

    def answer(request: object) -> object:
        payload = body(request)  # type: ignore[arg-type]
        prompts.append(payload["messages"][0]["content"])
        ids = item_ids(request)  # type: ignore[arg-type]
        rf = payload.get("response_format")
        results = (rf or {}).get("schema") or (rf or {}).get("json_schema", {}).get("schema")
        keyed = results is not None and results["properties"]["results"]["type"] == "object"
        kind = "none" if rf is None else f"{rf['type']} {'keyed' if keyed else 'listed'}"
        assert kind == sent
        outputs = {i: {"review_id": f"r-{i}", "label": "positive"} for i in ids}
        if KEYED in prompts[-1]:
            return chat({"results": outputs})
        return chat({"results": [{"item_id": i, "output": o} for i, o in outputs.items()]})

    route = openai.post(LOCAL_URL if local else OPENAI_URL).mock(side_effect=answer)
    where = {"api_base": "http://127.0.0.1:8999/v1"} if local else {}
    engine = LLMEngine(model, per_item=True, structured_output=setting, api_key="sk-test", retry=FAST_RETRY, **where)
    flock, published = await run_batch(engine, reviews(4), per_item=True)
    assert route.call_count == 1 and len(prompts) == 1
    assert described in prompts[0] and (KEYED if described == LISTED else LISTED) not in prompts[0]
    usage = flock.metrics().usage["sentiment"]
    assert (usage["llm_calls"], usage["failed_items"]) == (1, 0)
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
