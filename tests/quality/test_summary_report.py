"""Agreement as the summary line and the HTML report show it."""

from __future__ import annotations

from flock_llm.cli.report import Figures, render_report
from flock_llm.cli.reviews import RunSummary
from flock_llm.quality import wilson
from flock_llm.quality.summary import agreement_line, agreement_rows

AGREEMENT = {
    "all": wilson(90, 100),
    "field=label": wilson(92, 100),
    "field=reason": wilson(98, 100),
    "size=25": wilson(70, 80),
    "size=5": wilson(20, 20),
    "position=middle": wilson(40, 50),
    "position=last": wilson(9, 10),
    "position=first": wilson(10, 10),
}


def test_the_line_gives_the_rate_its_interval_and_the_weakest_field() -> None:
    line = agreement_line(AGREEMENT)
    assert line.startswith("90.0% [82.6%, 94.5%] (n=100)") and "weakest field: label 92.0%" in line
    assert agreement_line({}) == "not audited"


def test_rows_come_overall_first_then_fields_sizes_and_positions() -> None:
    rows = agreement_rows(AGREEMENT)
    assert [r[:2] for r in rows] == [
        ("all", "-"),
        ("field", "label"),
        ("field", "reason"),
        ("size", "5"),
        ("size", "25"),
        ("position", "first"),
        ("position", "middle"),
        ("position", "last"),  # in batch order, not alphabetical
    ]
    assert rows[0][2:] == ("90.0%", "82.6% - 94.5%", 100)


def test_the_html_report_has_an_agreement_section_only_when_audited() -> None:
    summary = RunSummary(model="openai/x", offline=False, mode="per-item", items=100, batches=4)
    page = render_report(summary, Figures(), AGREEMENT)
    assert "Agreement with one-item answers" in page and "82.6% - 94.5%" in page
    assert "Agreement with one-item answers" not in render_report(summary, Figures())
