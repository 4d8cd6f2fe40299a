"""Prompt templates (jinja2 files in this package) and their rendering.

Item text is data: each item is JSON-encoded with `<`, `>` and `&` escaped
as JSON unicode escapes, so no item can close its `<item>` block or open
another, whatever it says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ConfigurationError

__all__ = ["PromptItem", "Prompts", "TEMPLATE_NAMES", "encode_item"]

TEMPLATE_NAMES = ("system", "items", "repair")


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One batch item as the model sees it: an engine-assigned id and its JSON data."""

    id: str
    data: str


def encode_item(value: Any) -> str:
    """JSON for a prompt's data block; markup characters are escaped so item text cannot break out."""
    text = json.dumps(value, ensure_ascii=False, indent=None, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


@cache
def _packaged(name: str) -> str:
    return resources.files("flock_llm.prompts").joinpath(f"{name}.j2").read_text(encoding="utf-8")


class Prompts:
    """The engine's templates: the packaged ones, with any overridden by name.

    Args:
        overrides: template source by name ("system", "items", "repair").
    """

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        unknown = set(overrides or {}) - set(TEMPLATE_NAMES)
        if unknown:
            raise ConfigurationError(
                f"unknown prompt template(s) {sorted(unknown)!r}; the templates are {list(TEMPLATE_NAMES)!r}"
            )
        # sandboxed: a template override cannot reach Python internals (attributes, globals, file access)
        env = ImmutableSandboxedEnvironment(
            autoescape=False,  # noqa: S701 - prompts are not HTML; item data is escaped by encode_item
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        sources = {name: (overrides or {}).get(name) or _packaged(name) for name in TEMPLATE_NAMES}
        try:
            self._templates = {name: env.from_string(src) for name, src in sources.items()}
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigurationError(f"prompt template does not parse: {exc}") from exc

    def system(
        self,
        *,
        agent_name: str,
        description: str,
        output_name: str,
        output_schema: dict[str, Any],
        per_item: bool,
        reduce: bool = False,
        keyed: bool = False,
    ) -> str:
        """The system message: the same for every batch of an agent (per-batch facts are in the items message),
        so providers can cache it as a prompt prefix. `keyed`: per-item results are asked for as an object keyed
        by the item ids (the form a grammar-constrained server is given), not as an array."""
        return (
            self._templates["system"]
            .render(
                agent_name=agent_name,
                description=description,
                output_name=output_name,
                output_schema=json.dumps(output_schema, indent=1),
                per_item=per_item,
                reduce=reduce,
                keyed=keyed,
            )
            .strip()
        )

    def items(
        self, items: Sequence[PromptItem], *, total_items: int = 0, facts: Mapping[str, Any] | None = None
    ) -> str:
        """The items message (`total_items`: for a reduce, how many original inputs the partial results cover;
        `facts`: report values computed by code from these items, given as one JSON data block encoded like item
        data, so a value derived from item text cannot open or close a block)."""
        return (
            self._templates["items"]
            .render(
                items=items,
                item_count=len(items),
                total_items=total_items,
                facts=encode_item(dict(facts)) if facts else "",
            )
            .strip()
        )

    def repair(self, *, errors: Sequence[str], per_item: bool, ids: Sequence[str]) -> str:
        """The repair message. `errors` may quote the model's own text (ids it made up, field names): each line
        is encoded like item data, so it reads as data and cannot open or close a block."""
        lines = [encode_item(line) for line in errors]
        return self._templates["repair"].render(errors=lines, per_item=per_item, ids=ids).strip()
