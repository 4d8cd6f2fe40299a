"""The breaker against errors that are not outages, found by an outside test: a request the HTTP client refuses
to send (a configuration problem) fails at once instead of being retried, probed and waited on as if the
provider were down."""

from __future__ import annotations

import asyncio

from test_llm_engine import KEY, reviews, run_batch

from flock_llm import FailureRecord
from flock_llm.engines.llm import BreakerPolicy, LLMEngine
from flock_llm.testing import FakeOpenAIServer

URL_PASSWORD = "pw-in-the-url-5be1"


async def test_a_request_the_http_client_refuses_to_send_fails_at_once_as_a_configuration_problem() -> None:
    """Credentials in api_base's URL plus an API key: the HTTP client raises ValueError before sending
    anything; litellm reports it as "InternalServerError" with status 500. Before: retried, the breaker opened and
    probed (each probe refused the same way) until `max_outage`, then "the provider failed every call"."""
    with FakeOpenAIServer(latency_s=0.0) as server:
        port = server.api_base.split(":")[2].split("/")[0]
        engine = LLMEngine(
            "openai/fake-model", api_key=KEY, api_base=f"http://gateway:{URL_PASSWORD}@127.0.0.1:{port}/v1",
            breaker=BreakerPolicy(max_outage=60, probe_interval=0.1),
        )  # fmt: skip
        flock, _ = await asyncio.wait_for(run_batch(engine, reviews(2)), timeout=30)  # not after 60 s
        assert server.requests == 0  # nothing was ever sent
    records = await flock.store.get_by_type(FailureRecord)
    assert records and all("nothing was sent" in r.error for r in records), [r.error for r in records]
    assert all("HTTP 500" not in r.error and "max_outage" not in r.error for r in records)
    assert all(URL_PASSWORD not in r.error for r in records)
    assert engine.guard.opened == 0 and engine.guard.probes == 0
    assert flock.metrics().usage["sentiment"]["retries"] == 0


def test_a_provider_error_quoting_the_request_url_does_not_carry_its_password_into_error_texts() -> None:
    """httpx's status errors quote the URL they were raised for ("... for url 'http://user:pw@host/...'"): the
    text failure records and ProviderUnavailableError are built from must not carry the URL's password."""
    from flock_llm.engines._calls.models import load_litellm
    from flock_llm.engines._calls.retry import describe_call_error

    error = load_litellm().ServiceUnavailableError(
        message=f"Server error '503' for url 'https://gateway:{URL_PASSWORD}@llm.example/v1/chat/completions'",
        llm_provider="openai",
        model="m",
    )
    text = describe_call_error(error)
    assert URL_PASSWORD not in text and "https://gateway:***@llm.example/v1" in text, text
