"""Agreement as people read it: one line for a terminal summary, rows for a report (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from .stats import Interval

__all__ = ["agreement_line", "agreement_rows"]

_ORDER = {"all": 0, "field": 1, "size": 2, "position": 3}
_POSITIONS = {"only": 0, "first": 1, "early": 2, "middle": 3, "late": 4, "last": 5}


def agreement_line(agreement: Mapping[str, Interval]) -> str:
    """E.g. "96.0% [91.0%, 98.4%] (n=100) of audited items answered as alone; weakest field: label 94.0%"."""
    overall = agreement.get("all")
    if overall is None or not overall.n:
        return "not audited"
    line = f"{overall} of audited items answered as when asked alone"
    fields = [(label.split("=", 1)[1], i) for label, i in agreement.items() if label.startswith("field=") and i.n]
    if fields:
        name, weakest = min(fields, key=lambda f: f[1].rate or 0.0)
        line += f"; weakest field: {name} {weakest.rate:.1%}"
    return line


def agreement_rows(agreement: Mapping[str, Interval]) -> list[tuple[str, str, str, str, int]]:
    """(dimension, value, rate, 95% interval, audited) per entry, overall first, then fields, sizes, positions."""

    def key(label: str) -> tuple[int, int, str]:
        kind, _, value = label.partition("=")
        rank = int(value) if value.isdigit() else _POSITIONS.get(value, 0) if kind == "position" else 0
        return _ORDER.get(kind, 9), rank, value

    rows = []
    for label in sorted(agreement, key=key):
        interval = agreement[label]
        kind, _, value = label.partition("=")
        rows.append(
            (
                kind,
                value or "-",
                f"{interval.rate or 0:.1%}",
                f"{interval.low:.1%} - {interval.high:.1%}",
                int(interval.n),
            )
        )
    return rows
