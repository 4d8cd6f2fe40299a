"""Support-ticket trend analysis: 20 tickets per LLM call (offline model unless FLOCK_LLM_MODEL is set).

Run: python examples/support_tickets.py
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from _timescale import scaled
from pydantic import BaseModel

from flock_llm import Flock, flock_type
from flock_llm.engines.llm import LLMEngine
from flock_llm.subscription import BatchSpec


@flock_type
class SupportTicket(BaseModel):
    ticket_id: str
    category: str
    priority: str
    description: str


@flock_type
class TrendAnalysis(BaseModel):
    common_issues: list[str]
    sentiment_trend: str
    recommended_actions: list[str]
    ticket_count: int


ISSUES = [
    ("billing", "high", "I was charged twice for my subscription this month."),
    ("login", "medium", "Password reset email never arrives."),
    ("shipping", "low", "Tracking number shows no updates for a week."),
    ("billing", "medium", "Invoice PDF has the wrong company address."),
    ("app", "high", "The iOS app crashes when I open the settings page."),
]


async def main() -> None:
    async with Flock() as flock:
        (
            flock.agent("trend_analyzer")
            .description("Find common issues in support tickets and recommend actions")
            .consumes(SupportTicket, batch=BatchSpec(size=20, timeout=scaled(timedelta(minutes=10))))
            .publishes(TrendAnalysis)
            .with_engines(LLMEngine())
        )
        await flock.publish_many(
            SupportTicket(ticket_id=f"T-{i:03d}", category=c, priority=p, description=d)
            for i, (c, p, d) in enumerate(ISSUES * 9)
        )
        await flock.run_until_idle()
    for report in await flock.store.get_by_type(TrendAnalysis):
        print(f"trend over {report.ticket_count} tickets: issues {report.common_issues}")
    usage = flock.metrics().usage["trend_analyzer"]
    print(f"{len(ISSUES) * 9} tickets -> {usage['llm_calls']} LLM calls; flushes {flock.metrics().flush_counts}")


if __name__ == "__main__":
    asyncio.run(main())
