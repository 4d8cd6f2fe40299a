"""Facts the docs list that the code also knows: the examples folder, the failure stages, the flush reasons."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from flock_llm._vocabulary import FailureStage, FlushReason

ROOT = Path(__file__).resolve().parents[2]


def _table_column(page: Path, header: str) -> list[str]:
    """The first column (code spans) of the markdown table whose header row starts with `header`."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    cells = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells.append(line.split("|")[1].strip().strip('`"'))
    return cells


def test_the_examples_table_lists_exactly_the_scripts_in_examples() -> None:
    listed = _table_column(ROOT / "docs" / "examples.md", "script")
    scripts = sorted(
        p.relative_to(ROOT / "examples").as_posix()
        for p in (ROOT / "examples").rglob("*.py")
        if not p.name.startswith("_") and p.parent.name != "data"
    )
    assert len(listed) == len(set(listed)), f"a script is listed twice: {listed}"
    assert sorted(listed) == scripts, (
        f"docs/examples.md lists {sorted(set(listed) - set(scripts))} that examples/ lacks, and misses "
        f"{sorted(set(scripts) - set(listed))}: add or remove its row"
    )


def test_each_example_script_says_how_to_run_it() -> None:
    for name in _table_column(ROOT / "docs" / "examples.md", "script"):
        source = (ROOT / "examples" / name).read_text(encoding="utf-8")
        assert f"python examples/{name}" in source, f"examples/{name}: its docstring should say `Run: python ...`"


def test_the_failure_stages_table_is_the_code_s_list() -> None:
    documented = _table_column(ROOT / "docs" / "reference" / "errors.md", "stage")
    assert documented == list(get_args(FailureStage)), "docs/reference/errors.md: the stages differ from FailureStage"
    # and the code records no stage that the Literal (so the table) leaves out
    recorded = {
        m.group(1)
        for path in (ROOT / "flock_llm").rglob("*.py")
        for m in re.finditer(r'stage="([a-z_]+)"', path.read_text(encoding="utf-8"))
    }
    assert recorded <= set(documented), f"stages recorded in the code but not documented: {recorded - set(documented)}"


def test_the_flush_reasons_table_is_the_code_s_list() -> None:
    documented = _table_column(ROOT / "docs" / "concepts" / "batching.md", "reason")
    assert documented == list(get_args(FlushReason))


def test_the_readme_is_a_front_page_that_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 10
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README.md links to docs pages that do not exist: {missing}"
