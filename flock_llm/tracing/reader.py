"""Reading a DuckDB trace file (read-only, so a running Flock can keep writing between reads)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["recent_flushes", "recent_llm_calls"]


def _query(path: Path, sql: str, limit: int) -> list[tuple[object, ...]]:
    import duckdb

    connection = duckdb.connect(str(path), read_only=True)
    try:
        rows: list[tuple[object, ...]] = connection.execute(sql, [limit]).fetchall()
        return rows
    finally:
        connection.close()


def _text(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text[1:-1] if text.startswith('"') and text.endswith('"') else text


def recent_flushes(path: Path, limit: int = 20) -> list[tuple[str, ...]]:
    """(time, agent, batch size, configured size, reason, efficiency, wait ms, duration ms), newest first."""
    rows = _query(
        path,
        """
        SELECT strftime(start_time, '%H:%M:%S.%g'), attributes->>'$.agent', attributes->>'$.batch_size',
               attributes->>'$.configured_size', attributes->>'$.flush_reason',
               round(CAST(attributes->>'$.efficiency' AS DOUBLE) * 100, 0),
               round(CAST(attributes->>'$.wait_ms' AS DOUBLE), 1), round(duration_ms, 1)
        FROM spans WHERE name = 'flock.batch.flush' ORDER BY start_time DESC LIMIT ?""",
        limit,
    )
    return [
        (_text(t), _text(a), _text(s), _text(c), _text(r), "-" if e is None else f"{e:.0f}%", _text(w), _text(d))
        for t, a, s, c, r, e, w, d in rows
    ]


def recent_llm_calls(path: Path, limit: int = 20) -> list[tuple[str, ...]]:
    """(time, agent, model, kind, items, prompt tokens, completion tokens, cost, outcome), newest first."""
    rows = _query(
        path,
        """
        SELECT strftime(start_time, '%H:%M:%S.%g'), attributes->>'$.agent', attributes->>'$.model',
               attributes->>'$.kind', attributes->>'$.items', attributes->>'$.prompt_tokens',
               attributes->>'$.completion_tokens', attributes->>'$.cost_usd', attributes->>'$.outcome'
        FROM spans WHERE name = 'flock.llm.call' ORDER BY start_time DESC LIMIT ?""",
        limit,
    )
    return [tuple(_text(v) for v in row) for row in rows]
