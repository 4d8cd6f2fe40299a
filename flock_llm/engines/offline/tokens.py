"""Whose tokenizer counts the offline model's tokens (needed by the offline provider and by the model choice
in `_models`, which loads that provider: kept here so neither imports the other)."""

from __future__ import annotations

__all__ = ["OFFLINE_TOKEN_MODEL"]

OFFLINE_TOKEN_MODEL = "gpt-3.5-turbo"
"""cl100k_base, the encoding litellm loads anyway (a second one, o200k_base, would add ~55 MB of resident memory
for no better estimate)."""
