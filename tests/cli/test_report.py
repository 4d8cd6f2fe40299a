"""`flock-llm reviews --report`: one self-contained HTML file, opened in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import SAMPLE, run_cli

pytest.importorskip("matplotlib", reason="the report extra (make test installs it)")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_report_is_self_contained_and_renders_its_charts_in_a_browser(tmp_path: Path) -> None:
    report, out = tmp_path / "report.html", tmp_path / "out.jsonl"
    audit = ("--per-item", "--audit", "1")  # one review of every call asked again alone: the agreement section
    done = run_cli("reviews", str(SAMPLE), *audit, "--output", str(out), "--report", str(report), "--no-progress")
    assert done.returncode == 0, done.stderr
    page = report.read_text(encoding="utf-8")
    assert page.count("<svg") == 4 and "Failures (0)" in page and "300 reviews" in page
    section = "<h2>Agreement with one-item answers</h2><p>100.0% [75.8%, 100.0%] (n=12) of audited items"
    assert section in page and page.index(section) < page.index("<svg")  # above the charts: in the screenshot
    assert not re.search(r"<script|<link|src=\"http|href=\"http", page)  # nothing fetched: no CDN, no script

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here (tests/install_chromium.sh installs Debian's package as root); not opened")
    dom = headless(browser, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 4 and dom.stdout.count("<path") > 20  # the charts were parsed and drawn
    assert "Agreement with one-item answers" in dom.stdout and "<td>position</td>" in dom.stdout
    assert "Uncaught" not in dom.stderr and ":CONSOLE(" not in dom.stderr  # no console errors
    shot = tmp_path / "report.png"
    taken = headless(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,1400", report.as_uri())
    assert taken.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, taken.stderr[-2000:]
    keep = Path(__file__).resolve().parents[2] / ".flock" / "report-screenshot.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)  # for a person to look at


def test_an_unwritable_report_path_is_refused_before_any_work(tmp_path: Path) -> None:
    done = run_cli("reviews", str(SAMPLE), "--report", str(tmp_path / "missing" / "r.html"), "--no-progress")
    assert done.returncode == 2 and "--report" in done.stderr and "does not exist" in done.stderr
