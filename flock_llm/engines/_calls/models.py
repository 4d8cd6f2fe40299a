"""Which model to call, loading litellm lazily, and keeping secrets out of messages."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from ..._redaction import register_secrets
from ...errors import ConfigurationError
from ..offline.tokens import OFFLINE_TOKEN_MODEL

__all__ = [
    "OFFLINE_MODEL",
    "OFFLINE_TOKEN_MODEL",
    "announce_offline",
    "counting_model",
    "engine_secrets",
    "is_offline",
    "load_litellm",
    "redact",
    "resolve_model",
]

log = logging.getLogger("flock_llm.engines")

OFFLINE_PROVIDER = "flock-offline"
OFFLINE_MODEL = f"{OFFLINE_PROVIDER}/placeholder"
"""The built-in offline model: no network, schema-valid answers derived from the items by rules."""

MODEL_ENV = "FLOCK_LLM_MODEL"


def resolve_model(engine_model: str | None, flock_model: str | None, env: Mapping[str, str]) -> str:
    """The model a call uses: the engine argument, then `Flock(model=)`, then `FLOCK_LLM_MODEL`, then the offline
    model (DESIGN's precedence, in one place).

    Args:
        engine_model: the engine's `model=` argument, or None.
        flock_model: `Flock(model=)`, or None.
        env: the environment to read `FLOCK_LLM_MODEL` from (tests pass a dict).

    Raises:
        ConfigurationError: the chosen value is not a litellm model string.
    """
    for candidate in (engine_model, flock_model, env.get(MODEL_ENV)):
        if candidate:
            if not isinstance(candidate, str) or "/" not in candidate and not candidate.startswith("gpt"):
                raise ConfigurationError(
                    f"model {candidate!r} is not a litellm model string; use e.g. 'openai/gpt-4.1-mini' or "
                    "'ollama/llama3.2'"
                )
            return candidate
    return OFFLINE_MODEL


def is_offline(model: str) -> bool:
    return model.startswith(OFFLINE_PROVIDER + "/")


def counting_model(model: str) -> str:
    """The model whose tokenizer counts `model`'s tokens."""
    return OFFLINE_TOKEN_MODEL if is_offline(model) else model


@functools.cache
def announce_offline() -> None:
    """Say once per process, plainly, that answers come from rules, not from an LLM."""
    log.warning(
        "flock_llm is using its built-in OFFLINE model: answers are derived from the items by rules (counts, "
        "averages, lexicon sentiment, extracted keywords and sentences; placeholders elsewhere), not real LLM "
        "output. Set FLOCK_LLM_MODEL (e.g. openai/gpt-4.1-mini) and the provider's API key, or pass model= to "
        "Flock or LLMEngine, to use a real model."
    )


def load_litellm() -> ModuleType:
    """Import litellm on first use, offline-safe, with our offline provider registered."""
    # litellm fetches a price list at import unless told to use its bundled copy
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # deferred: `import flock_llm` must stay fast

    litellm.suppress_debug_info = True
    providers = list(getattr(litellm, "custom_provider_map", None) or [])
    if not any(p.get("provider") == OFFLINE_PROVIDER for p in providers):
        from ..offline.provider import OfflineLLM

        providers.append({"provider": OFFLINE_PROVIDER, "custom_handler": OfflineLLM()})
        litellm.custom_provider_map = providers
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
    module: ModuleType = litellm
    return module


_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
_KEY_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-.=]{8,})")


def secrets_from(kwargs: Mapping[str, Any], env: Mapping[str, str] | None = None) -> list[str]:
    """Values that must never appear in logs, errors or metrics."""
    found = [str(v) for k, v in kwargs.items() if _SECRET_NAME.search(k) and v]
    for name in ("extra_headers", "headers", "default_headers"):  # gateway tokens travel in headers
        headers = kwargs.get(name)
        if isinstance(headers, Mapping):
            found += [str(v) for v in headers.values() if v is not None and len(str(v)) >= 4]
    source = os.environ if env is None else env
    found += [v for k, v in source.items() if _SECRET_NAME.search(k) and len(v) >= 8]
    return sorted(set(found), key=len, reverse=True)


def engine_secrets(owner: object, kwargs: Mapping[str, Any], env: Mapping[str, str] | None = None) -> list[str]:
    """`secrets_from(kwargs, env)`, registered so that the logs of litellm, DSPy, httpx, ... mask them for as long
    as `owner` (the engine) lives (see `flock_llm._redaction`)."""
    found = secrets_from(kwargs, env)
    register_secrets(owner, found)
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every known secret, and anything shaped like an API key, replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_SHAPES.sub("***", text)
