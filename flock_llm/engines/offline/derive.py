"""Answers the offline model derives from the items themselves (deterministic, no network).

For each field of the requested output it looks at the field's name, type and description:

    counts            `*count`, `n`, `items`            the number of items
    aggregates        `average_<f>`, `mean_<f>`, `avg_<f>`, `min_<f>`, `max_<f>`, `total_<f>`, `sum_<f>`
                      (and a report field named like a numeric input field: its mean)
    sentiment         `*sentiment*`, `label`, `tone`, `mood`, `polarity` (and enums of positive/negative/...):
                      VADER's lexicon (English); where VADER finds no sentiment words (other languages), the
                      item's `rating` decides (4-5 positive, 1-2 negative)
    themes            `*theme*`, `*keyword*`, `*topic*`, `tags` (lists of strings): YAKE keywords (English
                      stop words), most relevant first, from a sample of at most 1,200 characters of the batch
    summary           `summary`, `reason`, `explanation`, `rationale`: extracted sentences (a report: the first
                      sentences of its most positive and most negative items; an item: its own first sentence)

Anything else keeps the schema-valid placeholder. VADER and YAKE ship their data; they are the `offline`
extra (`make demo` installs it). Without them the offline model still answers, with placeholders.
"""

from __future__ import annotations

import functools
import re
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["derive_value", "texts_of"]

_TEXT_FIELDS = ("text", "review", "body", "comment", "content", "message", "description", "title")
_AGGREGATE = re.compile(r"^(average|mean|avg|min|max|total|sum)_(\w+)$")
_SENTIMENT_NAMES = ("sentiment", "label", "tone", "mood", "polarity")
_THEME_NAMES = ("theme", "keyword", "topic", "tags")
_SUMMARY_NAMES = ("summary", "reason", "explanation", "rationale")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def texts_of(source: dict[str, Any]) -> str:
    """The prose of one item: its text-like fields, else all its string fields."""
    found = [str(source[k]) for k in _TEXT_FIELDS if isinstance(source.get(k), str)]
    if not found:
        found = [v for v in source.values() if isinstance(v, str)]
    return " ".join(found)


def derive_value(name: str, schema: dict[str, Any], sources: Sequence[dict[str, Any]]) -> Any:
    """A value for field `name` (of JSON schema `schema`) derived from `sources`, or None to keep the placeholder."""
    kind = schema.get("type")
    lowered = name.lower()
    if kind in ("integer", "number"):
        return _number(lowered, kind, sources)
    if kind == "string":
        return _text(lowered, schema, sources)
    if kind == "array" and schema.get("items", {}).get("type") == "string":
        if any(word in lowered for word in _THEME_NAMES):
            limit = int(schema.get("maxItems", 5))
            return _keywords(_sample([texts_of(s) for s in sources]), max(1, min(limit, 5)))
    return None


def _number(name: str, kind: str, sources: Sequence[dict[str, Any]]) -> Any:
    if name.endswith("count") or name in ("n", "items", "total_items"):
        return len(sources)
    match = _AGGREGATE.match(name)
    operation, field = (match.group(1), match.group(2)) if match else ("mean", name)
    values = [
        float(s[field])
        for s in sources
        if isinstance(s.get(field), (int, float)) and not isinstance(s.get(field), bool)
    ]
    if not values:
        return None
    if operation in ("average", "mean", "avg"):
        result = statistics.fmean(values)
    elif operation == "min":
        result = min(values)
    elif operation == "max":
        result = max(values)
    else:
        result = sum(values)
    return round(result, 2) if kind == "number" else int(round(result))


def _text(name: str, schema: dict[str, Any], sources: Sequence[dict[str, Any]]) -> str | None:
    choices = _choices(schema)
    if any(word in name for word in _SENTIMENT_NAMES) or set(choices) & {"positive", "negative"}:
        return _sentiment_label(sources, choices)
    if any(word in name for word in _SUMMARY_NAMES) and sources:
        return _summary(sources)
    return None


def _choices(schema: dict[str, Any]) -> list[str]:
    """The allowed labels: an enum, else the words a description lists ("positive, mixed or negative")."""
    if schema.get("enum"):
        return [str(v) for v in schema["enum"]]
    words = re.findall(r"[a-z]+", str(schema.get("description", "")).lower())
    return [w for w in ("positive", "neutral", "mixed", "negative") if w in words]


def _sentiment_label(sources: Sequence[dict[str, Any]], choices: list[str]) -> str | None:
    scores = [_score(s) for s in sources]
    known = [score for score in scores if score is not None]
    if not known:
        return None
    mean = statistics.fmean(known)
    spread = max(known) - min(known)
    if mean >= 0.05:
        label = "positive"
    elif mean <= -0.05:
        label = "negative"
    else:
        label = "mixed" if spread > 0.5 and len(known) > 1 else "neutral"
    if choices and label not in choices:
        fallback = {"mixed": "neutral", "neutral": "mixed"}.get(label)
        label = fallback if fallback in choices else choices[0]
    return label


def _score(source: dict[str, Any]) -> float | None:
    """VADER's compound score of an item's text; its rating (mapped to -1..1) where VADER finds nothing."""
    compound = _compound(texts_of(source))
    if compound:
        return compound
    rating = source.get("rating")
    if isinstance(rating, (int, float)) and not isinstance(rating, bool):
        return max(-1.0, min(1.0, (float(rating) - 3.0) / 2.0))
    return None


@functools.lru_cache(maxsize=4096)
def _compound(text: str) -> float:
    """VADER's compound score (0.0 without VADER or sentiment words); cached: a report's fields score the same
    items (the cache holds the last few batches' texts only)."""
    analyzer = _vader()
    return float(analyzer.polarity_scores(text)["compound"]) if text and analyzer is not None else 0.0


def _summary(sources: Sequence[dict[str, Any]]) -> str:
    """An item's first sentence; for a report, the first sentences of its most positive and most negative items."""
    firsts = [(s, _first_sentence(s)) for s in sources]
    firsts = [(s, sentence) for s, sentence in firsts if sentence]
    if not firsts:
        return ""
    if len(sources) == 1:
        return firsts[0][1][:300]
    scored = sorted(firsts, key=lambda pair: _score(pair[0]) or 0.0)
    picked = [scored[-1][1]] + ([scored[0][1]] if scored[0][1] != scored[-1][1] else [])
    return f"{len(sources)} items. " + " ".join(picked)[:400]


def _first_sentence(source: dict[str, Any]) -> str:
    return _SENTENCE.split(texts_of(source).strip(), maxsplit=1)[0]


KEYWORD_SAMPLE_CHARS = 1200
"""Themes are extracted from at most this many characters of a batch, taken evenly from its items (YAKE's time
grows with the text; a sample keeps a large batch quick)."""


def _sample(texts: Sequence[str]) -> str:
    share = max(80, KEYWORD_SAMPLE_CHARS // max(1, len(texts)))
    parts = []
    for text in texts:
        cut = text if len(text) <= share else text[:share].rsplit(" ", 1)[0]
        parts.append(cut)
        if sum(map(len, parts)) >= KEYWORD_SAMPLE_CHARS:
            break
    return " ".join(parts)


def _keywords(text: str, limit: int) -> list[str] | None:
    extractor = _yake(limit)
    if extractor is None or not text.strip():
        return None
    return [str(keyword) for keyword, _ in extractor.extract_keywords(text)][:limit]


@functools.cache
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        return None
    return SentimentIntensityAnalyzer()


@functools.cache
def _yake(limit: int) -> Any:
    try:
        import yake
    except ImportError:
        return None
    return yake.KeywordExtractor(lan="en", n=2, top=limit, dedupLim=0.7)
