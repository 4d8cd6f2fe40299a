"""The HTML report of a review run (`flock-llm reviews --report report.html`): one self-contained file.

Charts are drawn with matplotlib and inlined as SVG (no script, no CDN, nothing fetched): the rating and
sentiment trend per batch, flush reasons, calls and prompt tokens against per-item processing, and the cost;
failures are listed with their review ids. matplotlib is the `report` extra (`make demo` installs it).
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..quality.stats import Interval

__all__ = ["Figures", "render_report", "write_report"]

_SENTIMENT_SCORE = {"positive": 1.0, "mixed": 0.0, "neutral": 0.0, "negative": -1.0}


MAX_FAILURE_ROWS = 1000
"""Failures listed in the report; the count above the table says how many there were in all."""
MAX_CATEGORIES = 20
"""Bars in a chart of labels: the most frequent ones, the rest summed up as "other"."""


@dataclass
class Figures:
    """What the report needs from a run's records, gathered as each batch is handed on (`add`): aggregates, not
    the records (a run may write millions; its output may be a pipe or /dev/null)."""

    trends: list[tuple[float, float]] = field(default_factory=list)
    """Per report (batch): its average rating and its sentiment score (-1 to 1)."""
    labels: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_count: int = 0

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            kind, data = record.get("type"), record.get("data", {})
            if kind == "ReviewTrend":
                sentiment = _SENTIMENT_SCORE.get(str(data.get("overall_sentiment", "")).lower(), 0.0)
                self.trends.append((float(data.get("average_rating", 0) or 0), sentiment))
            elif kind == "ReviewLabel":
                self.labels[str(data.get("label", ""))] += 1
            elif kind == "FailureRecord":
                self.failure_count += 1
                if len(self.failures) < MAX_FAILURE_ROWS:
                    self.failures.append(record)

    def label_bars(self) -> dict[str, float]:
        """The label counts to draw: the MAX_CATEGORIES most frequent, and "other" for the rest."""
        top = self.labels.most_common(MAX_CATEGORIES)
        bars: dict[str, float] = dict(top)
        rest = sum(self.labels.values()) - sum(bars.values())
        if rest:
            bars[f"other ({len(self.labels) - len(top)} labels)"] = rest
        return bars


def render_report(summary: Any, figures_of: Figures, agreement: Mapping[str, Interval] | None = None) -> str:
    """The report as one HTML document (`summary` is a RunSummary; `figures_of` what its records showed;
    `agreement`, from `Metrics.agreement()`, adds the audited agreement with its intervals).

    Raises:
        ConfigurationError: matplotlib is not installed (pip install 'flock_llm[report]').
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError("--report needs matplotlib: pip install 'flock_llm[report]'") from None
    # labels are text, not TeX; kept as SVG text (not glyph paths): smaller, and searchable in the page
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False, "svg.fonttype": "none"}):
        charts = _charts(plt, summary, figures_of)
    failures = figures_of.failures
    cost = "unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    rows = "".join(
        f"<tr><td>{html.escape(', '.join(map(str, r.get('review_ids', []))))}</td>"
        f"<td>{html.escape(str(r.get('data', {}).get('stage', '')))}</td>"
        f"<td>{html.escape(str(r.get('data', {}).get('error', ''))[:300])}</td></tr>"
        for r in failures
    )
    figures = "".join(f"<figure><figcaption>{html.escape(t)}</figcaption>{svg}</figure>" for t, svg in charts)
    offline = "<p class='note'>Offline model: answers derived by rules, not an LLM.</p>" if summary.offline else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flock-llm reviews report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}figure{{display:inline-block;margin:1em;
vertical-align:top}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3em .6em}}
.note{{color:#a60}}</style></head><body>
<h1>flock-llm reviews</h1>{offline}
<p>{summary.items} reviews, {summary.batches} batches, {summary.llm_calls} LLM calls (saved
{summary.calls_saved}), prompt tokens {summary.prompt_tokens:,} (saved {summary.prompt_tokens_saved:,}),
cost {html.escape(cost)}, {summary.failed_items} failed, {summary.wall_s:.1f} s, model
{html.escape(summary.model)}.</p>
{_agreement_section(agreement)}
{figures}
<h2>Failures ({figures_of.failure_count}{
        "" if figures_of.failure_count == len(failures) else f", the first {len(failures)} listed"
    })</h2>
<table><tr><th>review ids</th><th>stage</th><th>error</th></tr>{rows}</table>
</body></html>
"""


def _charts(plt: Any, summary: Any, figures_of: Figures) -> list[tuple[str, str]]:
    return [
        ("Rating and sentiment per batch", _trend(plt, figures_of)),
        ("Flush reasons", _bars(plt, dict(summary.flush_reasons) or {"none": 0}, "batches")),
        (
            "LLM calls: batched vs one per review",
            _bars(plt, {"batched": summary.llm_calls, "per review": summary.items}, "calls"),
        ),
        (
            "Prompt tokens: batched vs one per review",
            _bars(plt, {"batched": summary.prompt_tokens, "per review": summary.per_item_prompt_tokens}, "tokens"),
        ),
    ]


def _agreement_section(agreement: Mapping[str, Interval] | None) -> str:
    """Audited agreement with one-item answers: overall, per field, batch size and position (95% intervals)."""
    if not agreement:
        return ""
    from ..quality.summary import agreement_line, agreement_rows

    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in agreement_rows(agreement)
    )
    return (
        f"<h2>Agreement with one-item answers</h2><p>{html.escape(agreement_line(agreement))}.</p>"
        "<table><tr><th>by</th><th>value</th><th>agreement</th><th>95% interval</th><th>audited</th></tr>"
        f"{rows}</table>"
    )


def _svg(plt: Any, draw: Callable[[Any], None]) -> str:
    figure, axes = plt.subplots(figsize=(5.2, 3.2))
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    finally:
        plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _bars(plt: Any, values: dict[str, float], unit: str) -> str:
    def draw(axes: Any) -> None:
        axes.bar(list(values), list(values.values()), color="#4a7ab8")
        axes.set_ylabel(unit)

    return _svg(plt, draw)


def _trend(plt: Any, found: Figures) -> str:
    """Report mode: each batch's average rating and sentiment; per-item mode: the labels' counts."""
    trends, labels = found.trends, found.label_bars()

    def draw(axes: Any) -> None:
        if trends:
            batches = range(1, len(trends) + 1)
            axes.plot(batches, [rating for rating, _ in trends], marker="o", label="average rating")
            axes.plot(batches, [3 + 2 * s for _, s in trends], marker="s", linestyle="--", label="sentiment (1-5)")
            axes.set_xlabel("batch")
            axes.set_ylim(0.5, 5.5)
            axes.legend(loc="lower right")
        else:
            names = list(labels) or ["none"]
            axes.bar(range(len(names)), list(labels.values()) or [0], color="#4a7ab8")
            axes.set_xticks(range(len(names)), [name[:30] for name in names], rotation=45 if len(names) > 4 else 0)
            axes.set_ylabel("reviews")

    return _svg(plt, draw)


def write_report(path: Path, summary: Any, figures: Figures, agreement: Mapping[str, Interval] | None = None) -> None:
    """Render the report and write it to `path` (atomically)."""
    from .output import write_atomically

    write_atomically(path, render_report(summary, figures, agreement))
