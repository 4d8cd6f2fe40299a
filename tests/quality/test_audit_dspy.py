"""DSPyEngine audits through the shared ladder engine: the same sampling, comparison and counting."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx
import respx
from domain import CustomerReview, ReviewSentiment
from llm_fakes import OPENAI_URL, body, chat

from flock_llm import Flock
from flock_llm.engines._calls.retry import RetryPolicy
from flock_llm.engines.dspy import DSPyEngine
from flock_llm.quality.audit import Audit
from flock_llm.subscription import BatchSpec


def answer(request: httpx.Request) -> httpx.Response:
    user = "\n".join(m["content"] for m in body(request)["messages"] if m["role"] == "user")
    ids = re.findall(r'"item_id": "(i\d+)"', user)
    review_ids = re.findall(r'"review_id": "(r\d+)"', user)
    # in a batch the third item is labelled wrong; alone every item is "positive"
    labels = ["negative" if len(ids) > 1 and n == 2 else "positive" for n in range(len(ids))]
    results = [
        {"item_id": i, "output": {"review_id": r, "label": label}}
        for i, r, label in zip(ids, review_ids, labels, strict=True)
    ]
    return chat(json.dumps({"results": results}))


async def test_dspy_engine_audits_like_llm_engine(openai: respx.MockRouter) -> None:
    route = openai.post(OPENAI_URL).mock(side_effect=answer)
    engine = DSPyEngine(
        "openai/gpt-4.1-mini",
        per_item=True,
        api_key="sk-test",
        retry=RetryPolicy(attempts=1),
        audit=Audit(rate=1.0, per_call=4),
    )
    flock = Flock(env={})
    spec = BatchSpec(size=4, timeout=timedelta(seconds=30))
    flock.agent("sentiment").consumes(CustomerReview, batch=spec).publishes(ReviewSentiment).with_engines(engine)
    await flock.publish_many(CustomerReview(review_id=f"r{k}", rating=4, text=f"text {k}") for k in range(4))
    await flock.run_until_idle()
    await flock.shutdown()
    usage = flock.metrics().usage["sentiment"]
    assert (usage["audit_compared"], usage["audit_agreed"]) == (4, 3)
    assert usage["llm_calls"] == 5 == route.call_count and usage["audit_llm_calls"] == 4
    middle = flock.metrics().agreement("sentiment")["position=middle"]  # positions 1 and 2 of 4
    assert (middle.agreed, middle.n) == (1, 2)
