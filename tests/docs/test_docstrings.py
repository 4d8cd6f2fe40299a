"""Every public class and function has a docstring that says what it does and names each of its arguments.

"Public" is what users import (DESIGN.md): the names in `__all__` of the modules below, their public methods
and properties. An argument counts as documented when the function's (or, for `__init__`, the class's)
Google-style `Args:`/`Attributes:` section names it, or, for a dataclass or pydantic field, when the field has
an attribute docstring or a `Field(description=...)`. The docs site renders exactly these docstrings
(mkdocstrings), so a gap here is a gap in the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe", reason="the docs extra (mkdocstrings' griffe) reads the docstrings")

ROOT = Path(__file__).resolve().parents[2]

PUBLIC_MODULES = [
    "flock_llm",
    "flock_llm.subscription",
    "flock_llm.visibility",
    "flock_llm.errors",
    "flock_llm.metrics",
    "flock_llm.quality",
    "flock_llm.engines",
    "flock_llm.engines.llm",
    "flock_llm.engines.dspy",
    "flock_llm.engines.examples",
    "flock_llm.stores",
    "flock_llm.testing",
    "flock_llm.tracing",
]
"""The modules DESIGN.md and the docs show users importing from (each has a page in docs/reference/)."""

_SECTIONS_WITH_NAMES = {"parameters", "other parameters", "attributes"}


def _load() -> griffe.Module:
    return griffe.load("flock_llm", search_paths=[str(ROOT)], docstring_parser="google", resolve_aliases=True)


def _documented_names(obj: griffe.Object) -> set[str]:
    if obj.docstring is None:
        return set()
    names: set[str] = set()
    for section in obj.docstring.parse("google", warnings=False):
        if section.kind.value in _SECTIONS_WITH_NAMES:
            names.update(item.name.lstrip("*") for item in section.value)
    return names


def _field_documented(cls: griffe.Class, name: str) -> bool:
    for klass in [cls, *cls.mro()]:
        member = klass.members.get(name)
        if member is not None and not member.is_alias and member.is_attribute:
            return member.docstring is not None or "description=" in str(member.value or "")
    return False


def _parameters(function: griffe.Function) -> list[str]:
    return [p.name for p in function.parameters if p.name not in {"self", "cls"} and not p.name.startswith("_")]


def _inherited(function: griffe.Function, owner: griffe.Class | None) -> griffe.Function | None:
    """The documented method this one overrides (its docstring is the override's, as `inspect.getdoc` has it)."""
    if owner is None:
        return None
    for klass in owner.mro():
        base = klass.members.get(function.name)
        if isinstance(base, griffe.Function) and base.docstring is not None:
            return base
    return None


def _problems_of_function(function: griffe.Function, where: str, owner: griffe.Class | None = None) -> list[str]:
    if function.docstring is None and function.name != "__init__":
        base = _inherited(function, owner)
        if base is None:
            return [f"{where}: no docstring"]
        function = base
    documented = _documented_names(function)
    if owner is not None and function.name == "__init__":
        documented |= _documented_names(owner)
    missing = [
        name for name in _parameters(function)
        if name not in documented and not (owner is not None and _field_documented(owner, name))
    ]  # fmt: skip
    if missing and not (function.name != "__init__" and len(_parameters(function)) == 1 and function.docstring):
        # a method of one argument may name it in its sentence (`discard(ids)`: "Forget these artifacts")
        return [f"{where}: arguments not documented: {', '.join(missing)}"]
    return []


def _init_of(cls: griffe.Class) -> griffe.Function | None:
    for klass in [cls, *cls.mro()]:
        init = klass.members.get("__init__")
        if isinstance(init, griffe.Function):
            return init
    return None


def _problems_of_class(cls: griffe.Class, where: str) -> list[str]:
    problems = [] if cls.docstring is not None else [f"{where}: no docstring"]
    init = _init_of(cls)
    if init is not None and init.parent is cls:
        problems += _problems_of_function(init, f"{where}.__init__", owner=cls)
    elif "dataclass" in cls.labels or any("BaseModel" in str(base) for base in cls.bases):
        fields = [m for m in cls.members.values() if m.is_attribute and not m.name.startswith("_") and not m.is_alias]
        named = _documented_names(cls)
        undocumented = [f.name for f in fields if not _field_documented(cls, f.name) and f.name not in named]
        if undocumented:
            problems.append(f"{where}: fields not documented: {', '.join(undocumented)}")
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias:
            continue
        if isinstance(member, griffe.Function):
            problems += _problems_of_function(member, f"{where}.{name}", owner=cls)
        elif member.is_attribute and "property" in member.labels and member.docstring is None:
            problems.append(f"{where}.{name}: no docstring (property)")
    return problems


def _public_objects() -> dict[str, griffe.Object]:
    package = _load()
    found: dict[str, griffe.Object] = {}
    for module_path in PUBLIC_MODULES:
        module = package if module_path == "flock_llm" else package[module_path.removeprefix("flock_llm.")]
        names = [str(n) for n in (module.exports or [])]
        assert names, f"{module_path} has no __all__"
        for name in names:
            obj = module[name]
            target = obj.final_target if obj.is_alias else obj
            found.setdefault(target.path, target)
    return found


def test_every_public_class_and_function_says_what_it_does_and_names_its_arguments() -> None:
    problems: list[str] = []
    objects = _public_objects()
    assert len(objects) > 40
    for path, obj in sorted(objects.items()):
        if isinstance(obj, griffe.Class):
            problems += _problems_of_class(obj, path)
        elif isinstance(obj, griffe.Function):
            problems += _problems_of_function(obj, path)
    assert not problems, f"{len(problems)} gaps in the public docstrings:\n" + "\n".join(problems)
