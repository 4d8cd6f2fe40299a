"""What small real models answer to a per-item request, aligned to the asked ids (pure), and the ladder keeping
the matched results and asking again only for the rest (respx)."""

from __future__ import annotations

import respx
from conftest import references
from domain import ReviewSentiment
from llm_fakes import OPENAI_URL, body, chat, item_ids
from test_llm_engine import FAST_RETRY, KEY, reviews, run_batch

from flock_llm.engines._ladder.parsing import own_ids, parse_per_item
from flock_llm.engines.llm import LLMEngine
from flock_llm.testing import FakeOpenAIServer


def out(label: str) -> dict[str, str]:
    return {"review_id": "r", "label": label}


def labels(answer: object, ids: list[str], **kwargs: object) -> dict[str, str]:
    results = parse_per_item(answer, ids, ReviewSentiment, **kwargs)  # type: ignore[arg-type]
    return {k: v.label for k, v in results.valid.items()}  # type: ignore[attr-defined]


def test_the_keyed_shape_and_a_bare_keyed_object() -> None:
    assert labels({"results": {"i1": out("a"), "i2": out("b")}}, ["i1", "i2"]) == {"i1": "a", "i2": "b"}
    assert labels('```json\n{"i2": {"review_id": "r", "label": "b"}}\n```', ["i1", "i2"]) == {"i2": "b"}


def test_a_one_item_request_takes_its_one_answer_whatever_its_id() -> None:
    for answer in (
        {"results": [{"item_id": "", "output": out("a")}]},
        {"results": [{"output": out("a")}]},
        {"results": [{"item_id": "R0020", "output": out("a")}]},
        out("a"),  # the output object itself
    ):
        results = parse_per_item(answer, ["i7"], ReviewSentiment)
        assert results.valid == {"i7": ReviewSentiment(review_id="r", label="a")} and results.mapped == 1


def test_renamed_ids_are_mapped_when_they_name_one_item() -> None:
    ids = ["i13", "i14", "i15"]
    answer = {
        "results": [
            {"item_id": "`i13`", "output": out("fenced")},
            {"item_id": "2", "output": out("position")},  # the second item shown
            {"item_id": "R0015", "output": out("own id")},
        ]
    }
    results = parse_per_item(answer, ids, ReviewSentiment, aliases={"i15": ["R0015"]})
    assert {k: v.label for k, v in results.valid.items()} == {"i13": "fenced", "i14": "position", "i15": "own id"}  # type: ignore[attr-defined]
    assert results.mapped == 3 and not results.missing


def test_ambiguous_and_repeated_ids_are_left_to_ask_again() -> None:
    ids = ["i1", "i2", "i3"]
    answer = {
        "results": [
            {"item_id": "i1", "output": out("first")},
            {"item_id": "i1", "output": out("again")},  # repeated: the first wins
            {"item_id": "1", "output": out("renamed i1")},  # names an item answered under its own id
            {"item_id": "R9", "output": out("two items")},  # both items carry this id
        ]
    }
    results = parse_per_item(answer, ids, ReviewSentiment, aliases={"i2": ["R9"], "i3": ["R9"]})
    assert {k: v.label for k, v in results.valid.items()} == {"i1": "first"}  # type: ignore[attr-defined]
    assert results.duplicates == ["i1"] and results.ambiguous == ["1", "R9"] and results.missing == ["i2", "i3"]
    assert any("names no single item" in line for line in results.feedback())


def test_an_items_own_ids_are_its_id_fields() -> None:
    assert own_ids('{"review_id": "R1", "rating": 5, "id": 7, "flag": true}') == ["R1", "7"]
    assert own_ids("[1, 2]") == [] and own_ids("not json") == []


async def test_fewer_results_keep_the_matched_and_ask_again_only_for_the_rest(openai: respx.MockRouter) -> None:
    def answer(request: object) -> object:
        ids = item_ids(request)  # type: ignore[arg-type]
        messages = body(request)["messages"]  # type: ignore[arg-type]
        if len(messages) == 2:  # the first ask: 2 of 4, one under a position number
            return chat(
                {"results": [{"item_id": "i1", "output": out("one")}, {"item_id": "3", "output": out("three")}]}
            )
        assert "no result for item ids: i2, i4" in messages[-1]["content"] and len(ids) == 4
        return chat({"results": [{"item_id": "i2", "output": out("two")}, {"item_id": "i4", "output": out("four")}]})

    route = openai.post(OPENAI_URL).mock(side_effect=answer)
    flock, published = await run_batch(
        LLMEngine("openai/gpt-4.1-mini", per_item=True, api_key=KEY, retry=FAST_RETRY), reviews(4), per_item=True
    )
    assert route.call_count == 2
    outputs = await flock.store.artifacts_by_type(ReviewSentiment)
    by_input = {o.derived_from[0]: o.as_type(ReviewSentiment).label for o in outputs}
    assert by_input == dict(zip([a.id for a in published], ["one", "two", "three", "four"], strict=True))
    usage = flock.metrics().usage["sentiment"]
    assert (usage["mapped_ids"], usage["missing_ids"], usage["repairs"], usage["llm_calls"]) == (1, 2, 1, 2)
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}


async def test_the_fake_server_answers_the_pinned_shape(litellm_clients_closed: None) -> None:
    """`auto` against an OpenAI-compatible server with a model litellm does not know pins the ids; the fake
    server (and the offline model) answer that shape, so tests of other features keep working against it."""
    with FakeOpenAIServer(latency_s=0.0) as server:
        engine = LLMEngine("openai/some-local-model", per_item=True, api_base=server.api_base, api_key="sk-x")
        flock, published = await run_batch(engine, reviews(5), per_item=True)
    usage = flock.metrics().usage["sentiment"]
    assert (usage["llm_calls"], usage["failed_items"], usage["mapped_ids"]) == (1, 0, 0)
    assert await references(flock, "sentiment") == {a.id: 1 for a in published}
