"""Secrets flock_llm holds (API keys, gateway header values, Redis passwords) are masked in the records of the
loggers litellm, DSPy, httpx and httpcore write to, with logging at DEBUG, while they are registered."""

from __future__ import annotations

import contextlib
import gc
import logging
from datetime import timedelta

import pytest
from domain import CustomerReview, SentimentTrendReport
from test_llm_engine import reviews

from flock_llm import Flock
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec
from flock_llm.testing import FakeOpenAIServer

HEADER_TOKEN = "hdr-token-5f1e9a77c3"
API_KEY = "sk-redaction-test-0a9b8c7d6e"


async def test_litellm_debug_logs_do_not_show_extra_headers_secrets_or_keys(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with FakeOpenAIServer(latency_s=0.0) as server:
        engine = LLMEngine(
            "openai/fake-model", api_key=API_KEY, api_base=server.api_base, extra_headers={"X-Api-Token": HEADER_TOKEN}
        )
        flock = Flock(env={})
        batch = BatchSpec(size=2, timeout=timedelta(seconds=30))
        flock.agent("sentiment").consumes(CustomerReview, batch=batch).publishes(SentimentTrendReport).with_engines(
            engine
        )
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="LiteLLM"):
            # the root logger at DEBUG, as when one is looking for a problem (and litellm's, which may have its own)
            await flock.publish_many(reviews(2))
            await flock.run_until_idle()
            await flock.shutdown()
        assert len(await flock.store.get_by_type(SentimentTrendReport)) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    names = {r.name for r in caplog.records}
    assert "LiteLLM" in names  # litellm did log the request at DEBUG
    assert "X-Api-Token" in logged  # ... with its headers, masked:
    printed = capfd.readouterr()  # litellm's own handler writes to stderr
    for text in (logged, printed.err, printed.out):
        assert HEADER_TOKEN not in text and API_KEY not in text


def test_records_of_child_loggers_and_tracebacks_are_masked_and_only_while_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flock_llm._redaction import register_secrets, registered_secrets

    class Owner:
        pass

    owner = Owner()
    register_secrets(owner, ["dspy-secret-77aa", "x"])
    assert "x" not in registered_secrets()  # too short to mask without mangling text
    names = ("dspy.clients.lm", "httpcore.http11", "LiteLLM Router", "my_app")
    with contextlib.ExitStack() as levels:
        for name in names:  # (libraries set their own loggers' levels when imported)
            levels.enter_context(caplog.at_level(logging.DEBUG, logger=name))
        logging.getLogger("dspy.clients.lm").debug("calling with key %s", "dspy-secret-77aa")
        logging.getLogger("httpcore.http11").debug("connect redis://:s3cret-pass@127.0.0.1:6390/0")
        try:
            raise RuntimeError("failed with dspy-secret-77aa")
        except RuntimeError:
            logging.getLogger("LiteLLM Router").exception("router error")
        logging.getLogger("my_app").debug("mine: dspy-secret-77aa")  # not a library flock_llm drives
    assert [r.name for r in caplog.records] == list(names)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records[:3])
    assert "dspy-secret-77aa" not in text and "s3cret-pass" not in text and text.count("***") >= 3
    assert "dspy-secret-77aa" in caplog.records[3].getMessage()
    del owner
    gc.collect()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="dspy"):
        logging.getLogger("dspy").debug("after: %s", "dspy-secret-77aa")
    assert "dspy-secret-77aa" in caplog.records[0].getMessage()  # the owner is gone: no longer registered
    assert "dspy-secret-77aa" not in registered_secrets()
    if not registered_secrets():  # (engines of other tests may still be alive)
        assert logging.getLogRecordFactory() is logging.LogRecord  # the record factory is restored


def test_a_secret_filter_masks_a_handler_of_your_own() -> None:
    from flock_llm._redaction import SecretFilter, register_secrets

    class Owner:
        pass

    owner = Owner()
    register_secrets(owner, ["own-secret-31337"])
    record = logging.LogRecord("my_app", logging.INFO, __file__, 1, "key=%s", ("own-secret-31337",), None)
    assert SecretFilter().filter(record) and record.getMessage() == "key=***"
    del owner
    gc.collect()


def test_a_redis_store_registers_its_password_for_as_long_as_it_lives(caplog: pytest.LogCaptureFixture) -> None:
    from flock_llm._redaction import registered_secrets
    from flock_llm.stores.redis import RedisStore

    store = RedisStore("redis://worker:pw-redis-4c2e1@127.0.0.1:6390/0?namespace=redaction")  # not connected
    assert "pw-redis-4c2e1" in registered_secrets()
    with caplog.at_level(logging.DEBUG, logger="redis.connection"):
        logging.getLogger("redis.connection").debug("AUTH worker pw-redis-4c2e1")
    assert caplog.records[0].getMessage() == "AUTH worker ***"
    del store
    gc.collect()
    assert "pw-redis-4c2e1" not in registered_secrets()
