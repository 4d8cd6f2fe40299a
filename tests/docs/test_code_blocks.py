"""Every Python code block of docs/ and README.md runs, so what a reader copies works.

pytest-examples finds the blocks (with their line numbers); this file decides how each page runs. The blocks
of one page run in order in one namespace, as a reader would paste them into one session (a block may use
what an earlier block of its page defined), in a fresh working directory, on one event loop: a block may use
top-level `await`. A failure names the page and line. Blocks that are not run, and why, are listed below in
NOT_RUN; pages that need a provider or a server run against the fakes named in FAKE_PROVIDER and REDIS.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_examples = pytest.importorskip("pytest_examples", reason="the dev extra installs pytest-examples")

from conftest import close_litellm_clients  # noqa: E402

from flock_llm.testing import FakeOpenAIServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "docs", ROOT / "README.md")

NOT_RUN: dict[tuple[str, str], str] = {
    # (page, a line of the block): why it is not run
    ("docs/getting-started.md", "with local_model() as model:"): (
        "needs the `local` extra (llama-cpp-python built from source, 5-15 min) and the model wheel; "
        "the local-model tests (issue 23) run the same context manager"
    ),
    ("docs/engines.md", "from flock_llm.integrations.flock_core import FlockBatchLLMEngine"): (
        "flock-core needs Python >= 3.12 and its own virtualenv; `make test-flock-core` runs the same "
        "engine in examples/flock_core/sentiment_plugin.py"
    ),
}
"""Blocks shown but not run, keyed by (page, a line the block contains), with the reason."""

FAKE_PROVIDER = {
    "docs/getting-started.md": "names openai/gpt-4.1-mini: OPENAI_API_BASE points at FakeOpenAIServer",
}
"""Pages whose blocks call a hosted model: they run with litellm pointed at the fake OpenAI-compatible server."""

REDIS = {"docs/stores.md": "the Redis store block: REDIS_URL is the test Redis, in a namespace of its own"}
TRACED = {"docs/observability.md": "its tracing section sets FLOCK_AUTO_TRACE and FLOCK_TRACE_FILE"}


def _examples() -> list[pytest_examples.CodeExample]:
    return list(pytest_examples.find_examples(*SOURCES))


def _page(example: pytest_examples.CodeExample) -> str:
    return example.path.resolve().relative_to(ROOT).as_posix()


def _not_run_reason(example: pytest_examples.CodeExample) -> str | None:
    lines = {line.strip() for line in example.source.splitlines()}
    page = _page(example)
    return next((why for (p, line), why in NOT_RUN.items() if p == page and line in lines), None)


PAGES = sorted({_page(e) for e in _examples()})


def test_the_docs_have_code_blocks_and_every_not_run_entry_names_one_block() -> None:
    examples = _examples()
    assert len(examples) >= 25 and {"README.md", "docs/index.md", "docs/concepts/batching.md"} <= set(PAGES)
    for (page, line), why in NOT_RUN.items():
        hits = [e for e in examples if _page(e) == page and line in {s.strip() for s in e.source.splitlines()}]
        assert len(hits) == 1, f"NOT_RUN entry {page!r} / {line!r} ({why}) matches {len(hits)} blocks"
    for table in (FAKE_PROVIDER, REDIS, TRACED):
        assert set(table) <= set(PAGES), f"a page named in the test is gone: {set(table) - set(PAGES)}"


def _module() -> types.ModuleType:
    # one module name for every page: a type a page registers with @flock_type (say `Transaction`) replaces the
    # same-named type of the page before, as a reloaded module would, instead of clashing with it
    module = types.ModuleType("docs_example")
    sys.modules["docs_example"] = module
    return module


async def _close_litellm_clients() -> None:
    """litellm caches HTTP clients across event loops; close them here, while a loop runs (see conftest)."""
    if "litellm" in sys.modules:
        await close_litellm_clients()


async def _evaluate(code: types.CodeType, namespace: dict[str, object]) -> None:
    result = eval(code, namespace)  # noqa: S307 - the docs' own code blocks, run on purpose
    if inspect.iscoroutine(result):
        await result


def run_page(page: str) -> int:
    """Run the page's blocks in order; return how many ran."""
    module = _module()
    ran = 0
    with asyncio.Runner() as runner:
        try:
            for example in _examples():
                if _page(example) != page or _not_run_reason(example) is not None:
                    continue
                source = "\n" * example.start_line + example.source  # tracebacks point at the page's lines
                code = compile(source, str(example.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                if "asyncio.run(" in example.source:  # a script: it starts its own event loop
                    eval(code, module.__dict__)  # noqa: S307 - the docs' own code blocks, run on purpose
                else:  # a fragment of async code (top-level `await`, or calls that need the running loop)
                    runner.run(_evaluate(code, module.__dict__))
                ran += 1
        finally:
            runner.run(_close_litellm_clients())
            sys.modules.pop("docs_example", None)
    return ran


@pytest.fixture
def registry_of_a_fresh_process() -> Iterator[None]:
    """The type registry as a reader's own process has it: flock_llm's core types only.

    The docs' blocks are scripts, each meant for a process of its own; in the suite's process other tests have
    registered types of the same names (tests/domain.py's `Transaction`, the CLI's `Review`), which a block's
    `@flock_type class Transaction` would rightly be refused to shadow. Restored afterwards.
    """
    from flock_llm import registry

    by_name, by_type = dict(registry._by_name), dict(registry._by_type)
    core = {"flock_llm.artifact", "flock_llm.engines.examples"}
    for name, cls in by_name.items():
        if cls.__module__ not in core:
            del registry._by_name[name]
            registry._by_type.pop(cls, None)
    yield
    for name, cls in list(registry._by_name.items()):
        if cls.__module__ == "docs_example":  # the page's own; what modules it imported registered stays
            del registry._by_name[name]
            registry._by_type.pop(cls, None)
    registry._by_name.update(by_name)
    registry._by_type.update(by_type)


@pytest.fixture
def page_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    page = request.node.callspec.params["page"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOCK_LLM_MODEL", raising=False)
    monkeypatch.setenv("FLOCK_EXAMPLE_TIME_SCALE", "0.01")
    if page in TRACED:
        monkeypatch.setenv("FLOCK_AUTO_TRACE", "true")
        monkeypatch.setenv("FLOCK_TRACE_FILE", "true")
    if page in REDIS:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_single_url"))
    if page in FAKE_PROVIDER:
        with FakeOpenAIServer(latency_s=0.0, per_item_latency_s=0.0) as server:
            monkeypatch.setenv("OPENAI_API_BASE", server.api_base)
            monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-docs")
            yield
            assert server.requests > 0, f"{page} was meant to call the fake provider, and did not"
        return
    yield


@pytest.mark.parametrize("page", PAGES)
def test_the_code_blocks_of_a_page_run(page: str, registry_of_a_fresh_process: None, page_env: None) -> None:
    assert run_page(page) > 0 or all(_not_run_reason(e) for e in _examples() if _page(e) == page)
