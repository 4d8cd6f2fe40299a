"""The documentation site builds with --strict and works in a browser: pages render, the search answers."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from headless import Browser, chromium

pytest.importorskip("mkdocs", reason="the docs extra (make docs / make test install it)")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra (make docs / make test install it)")

ROOT = Path(__file__).resolve().parents[2]
KEEP = ROOT / ".flock"  # screenshots for a person to look at (gitignored), as the report test keeps its own


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "WARNING" not in built.stderr, built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on a loopback port (the search worker cannot fetch its index from file://)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium here (tests/install_chromium.sh installs Debian's package as root); not opened")
    opened = Browser(executable, tmp_path_factory.mktemp("profile"))
    yield opened
    opened.close()


def _keep(browser: Browser, name: str) -> Path:
    KEEP.mkdir(exist_ok=True)
    shot = KEEP / name
    browser.screenshot(shot)
    assert shot.stat().st_size > 20_000, f"{name}: a blank page?"
    return shot


def test_the_search_index_knows_max_tokens(site: Path) -> None:
    index = (site / "search" / "search_index.json").read_text(encoding="utf-8")
    assert "max_tokens" in index and "flock_llm.subscription.BatchSpec.max_tokens" in index


def test_the_home_page_renders(browser: Browser, served: str) -> None:
    browser.open(f"{served}/")
    assert browser.evaluate("document.querySelector('h1').textContent").startswith("flock_llm")
    assert browser.evaluate("document.querySelectorAll('pre code').length") >= 1  # the example, highlighted
    nav = browser.evaluate("Array.from(document.querySelectorAll('.md-nav__link')).map(a => a.textContent.trim())")
    assert {"Getting started", "Concepts", "Engines", "Reference"} <= set(nav)
    _keep(browser, "docs-home.png")
    assert browser.errors() == []


def test_a_concept_page_renders(browser: Browser, served: str) -> None:
    browser.open(f"{served}/concepts/batching/")
    assert browser.evaluate("document.querySelector('h1').textContent").startswith("Subscriptions and batching")
    reasons = browser.evaluate("Array.from(document.querySelectorAll('table code')).map(c => c.textContent)")
    assert {'"size"', '"timeout"', '"tokens"', '"shutdown"', '"manual"'} <= set(reasons)
    _keep(browser, "docs-concept.png")
    assert browser.errors() == []


def test_the_reference_page_of_batchspec_renders_its_arguments(browser: Browser, served: str) -> None:
    browser.open(f"{served}/reference/subscription/#flock_llm.subscription.BatchSpec")
    heading = browser.evaluate("document.getElementById('flock_llm.subscription.BatchSpec').textContent")
    assert "BatchSpec" in heading
    text = browser.evaluate("document.querySelector('article').innerText")
    for expected in ("size", "timeout", "by", "max_tokens", "Raises", "ConfigurationError", "JoinSpec"):
        assert expected in text, f"{expected!r} is not on the BatchSpec reference page"
    assert browser.evaluate("window.scrollY") > 0 or browser.evaluate(
        "document.getElementById('flock_llm.subscription.BatchSpec').getBoundingClientRect().top < 200"
    )  # the anchor took the reader to BatchSpec
    _keep(browser, "docs-batchspec.png")
    assert browser.errors() == []


def test_the_site_search_finds_max_tokens(browser: Browser, served: str) -> None:
    browser.open(f"{served}/?q=max_tokens")  # Material fills its search box from ?q= and runs the search
    count = browser.wait_for("document.querySelectorAll('.md-search-result__item').length")
    assert count, browser.evaluate("document.querySelector('.md-search-result__meta').textContent")
    links = browser.evaluate("Array.from(document.querySelectorAll('.md-search-result__link')).map(a => a.href)")
    batchspec = "#flock_llm.subscription.BatchSpec.max_tokens"  # result links carry ?h=max_tokens (highlight)
    assert any("/reference/subscription/" in link and link.endswith(batchspec) for link in links), links
    assert any("/tokens-cost-tiers/" in link for link in links)
    _keep(browser, "docs-search.png")
    assert browser.errors() == []


REFERENCE_PAGES = {
    "flock_llm": "flock_llm",
    "flock_llm.subscription": "subscription",
    "flock_llm.visibility": "visibility",
    "flock_llm.engines": "engines",
    "flock_llm.engines.llm": "llm",
    "flock_llm.engines.dspy": "dspy",
    "flock_llm.engines.examples": "examples",
    "flock_llm.stores": "stores",
    "flock_llm.testing": "testing",
    "flock_llm.tracing": "tracing",
    "flock_llm.metrics": "metrics",
    "flock_llm.quality": "quality",
    "flock_llm.errors": "errors",
}


def test_every_public_name_has_an_entry_in_the_reference(site: Path) -> None:
    import importlib
    import re

    def ids(page: str) -> set[str]:
        html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
        return set(re.findall(r'id="(flock_llm[^"]*)"', html))

    missing = []
    for module_name, page in REFERENCE_PAGES.items():
        found = ids(page)
        if module_name == "flock_llm":  # the errors and metrics types are re-exported: documented on their pages
            found |= {i.replace("flock_llm.errors.", "flock_llm.").replace("flock_llm.metrics.", "flock_llm.")
                      .replace("flock_llm.subscription.", "flock_llm.")
                      for i in ids("errors") | ids("metrics") | ids("subscription")}  # fmt: skip
        module = importlib.import_module(module_name)
        missing += [f"{module_name}.{name}" for name in module.__all__ if f"{module_name}.{name}" not in found]
    assert not missing, f"public names without a reference entry: {missing}"


def test_make_docs_builds_from_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "mkdocs build --strict" in makefile and "docs-serve:" in makefile
    assert shutil.which("make") is None or "site/" in (ROOT / ".gitignore").read_text(encoding="utf-8")
