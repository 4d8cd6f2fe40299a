"""The package layout in docs/development.md (the README links it) matches the tree: every path it names exists,
and each package it describes names every one of its modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout() -> list[tuple[Path, str]]:
    """(package or module path, its description) of every entry of the layout block."""
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```\n(.*?)```", text, re.S) if b.startswith("flock_llm/"))
    entries: list[tuple[Path, str]] = []
    parent: Path | None = None
    for line in block.splitlines():
        if line.startswith("flock_llm/"):
            names, _, description = line.partition("   ")
            paths = [ROOT / (n if n.startswith("flock_llm/") else f"flock_llm/{n}") for n in names.split()]
            entries += [(p, description) for p in paths]
            parent = paths[0] if paths[0].suffix != ".py" else None
        elif re.match(r"  \S", line) and parent is not None:
            name, _, description = line.strip().partition(" ")
            entries.append((parent / name, description))
        elif entries:  # a description continued
            path, description = entries[-1]
            entries[-1] = (path, f"{description} {line.strip()}")
    return entries


def test_every_path_the_layout_names_exists() -> None:
    entries = _layout()
    assert len(entries) >= 15
    assert [str(p.relative_to(ROOT)) for p, _ in entries if not p.exists()] == []


def test_each_described_package_names_every_module_it_holds() -> None:
    missing = []
    for path, description in _layout():
        if not path.is_dir() or path.name in ("prompts", "tracing", "testing", "integrations"):
            continue
        if path.name in ("engines",):  # the face: its private parts are the subpackages listed under it
            modules = [p.stem for p in path.glob("*.py") if not p.stem.startswith("_")]
        else:
            modules = [p.stem for p in path.glob("*.py") if p.stem != "__init__"]
        words = set(re.findall(r"[\w]+", description))
        missing += [f"{path.relative_to(ROOT)}/{m}.py" for m in modules if m not in words]
    assert missing == [], missing
