"""`flock-llm reviews --model local[:NAME]`: a small model served on this machine for the run (see
`flock_llm.testing.local_server`), started before the first review and stopped after the last."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["LOCAL", "serve_local"]

LOCAL = "local"


def local_name(model: str | None) -> str | None:
    """The local model a `--model` value asks for ("local" is the default one), or None."""
    if model == LOCAL:
        from ..testing.local_server import DEFAULT_LOCAL_MODEL

        return DEFAULT_LOCAL_MODEL
    if model and model.startswith(LOCAL + ":"):
        return model[len(LOCAL) + 1 :]
    return None


@contextlib.contextmanager
def serve_local(model: str | None) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(model, LLMEngine settings) for the run: for `local[:NAME]` a running local server's, else `model` as is."""
    name = local_name(model)
    if name is None:
        yield model, {}
        return
    from ..testing.local_server import local_model

    with local_model(name) as server:
        yield server.model, server.settings
