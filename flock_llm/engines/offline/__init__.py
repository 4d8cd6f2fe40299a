"""The offline model: a litellm custom provider (`offline/placeholder`) that needs no network and answers
schema-valid output derived from the items by rules (counts, numeric aggregates of matching fields, lexicon
sentiment, extracted keywords and sentences; placeholders elsewhere). It is the default model when none is set,
so examples, the CLI and tests run on a fresh machine; whenever it answers, flock_llm says so.

`provider` registers it with litellm, `answers` builds an answer for a requested schema, `derive` computes the
values from the items, `tokens` names the tokenizer used to count its prompts.
"""

from .answers import placeholder_answer
from .tokens import OFFLINE_TOKEN_MODEL

__all__ = ["OFFLINE_TOKEN_MODEL", "placeholder_answer"]
