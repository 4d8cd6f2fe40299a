"""Where an engine's calls go, said without credentials (pure: the environment is passed in)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["api_base", "endpoint"]


def api_base(settings: Mapping[str, Any], model: str, env: Mapping[str, str]) -> str | None:
    """The API base of `model`'s calls: `api_base=`/`base_url=` of the engine, else for `openai/` models
    `OPENAI_API_BASE`/`OPENAI_BASE_URL` of `env` (litellm's own rule); None: the provider's default."""
    base = settings.get("api_base") or settings.get("base_url")
    if not base and model.startswith("openai/"):
        base = env.get("OPENAI_API_BASE") or env.get("OPENAI_BASE_URL")
    return str(base) if base else None


def endpoint(base: str | None) -> str:
    """Where calls go: scheme, host, port and path of the API base (never its credentials)."""
    if not base:
        return "the provider's default endpoint"
    parts = urlsplit(base)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "") + parts.path
