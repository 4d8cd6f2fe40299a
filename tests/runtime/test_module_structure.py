"""The package's shape: no import cycles between flock_llm's modules, no module reaching into another's
private members, and no file far over ~400 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "flock_llm"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").exists()


def _import_nodes(tree: ast.Module, *, inside_functions: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module is imported (or, with `inside_functions`, also when any of
    its functions runs); never those under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for other in node.orelse:
                visit(other)
        elif inside_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(tree)
    return found


def _imports_at_import_time(path: Path, *, inside_functions: bool = False) -> set[str]:
    """Modules of flock_llm that importing `path` imports (outside `if TYPE_CHECKING:`): at module level, or
    also inside its functions and methods (`inside_functions`: an import deferred into a function still
    makes a cycle, one that only shows when that function runs)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _import_nodes(tree, inside_functions=inside_functions):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("flock_llm"):
                continue
            found.add(target)
            for alias in node.names:  # `from . import x` imports the submodule x
                if (
                    _is_package(target)
                    and (PACKAGE.parent / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists()
                ):
                    found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flock_llm"))
    expanded: set[str] = set()
    for target in found:  # importing a.b.c first imports the packages a.b (the root package excepted)
        parts = target.split(".")
        expanded.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    # a module's own packages are already being imported when it runs: not an edge
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
    return expanded - ancestors


def _cycles(*, inside_functions: bool) -> list[list[str]]:
    graph = {
        _module_name(p): _imports_at_import_time(p, inside_functions=inside_functions) for p in PACKAGE.rglob("*.py")
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt in graph and state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])
    return cycles


def test_no_import_cycles() -> None:
    assert _cycles(inside_functions=False) == []


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    """A lazy import can hide a cycle (it only fails, or half-initialises a module, when that function first
    runs): imports inside functions and methods count too."""
    assert _cycles(inside_functions=True) == []


def _private_names_defined(tree: ast.Module) -> set[str]:
    """Private functions, methods and attributes a module defines itself (it may use them anywhere in it)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_no_module_reaches_into_another_modules_private_members() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _private_names_defined(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .{node.attr}")
    allowed = {"_hidden_params", "_replace", "_registry"}  # litellm's and namedtuple's documented attributes
    assert [o for o in offenders if o.rsplit(".", 1)[-1] not in allowed] == []


def test_no_module_is_over_400_lines() -> None:
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def _calls_of(path: Path, suffixes: set[str]) -> set[str]:
    """The calls of `path` whose callee (as written, e.g. `self.engine.costs.reserve`) ends in one of `suffixes`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            callee = ast.unparse(node.func)
            found.update(s for s in suffixes if callee == s or callee.endswith("." + s))
    return found


def _functions_calling(path: Path, suffix: str) -> set[str]:
    """The functions of `path` that call something ending in `suffix`."""
    found = set()
    for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("." + suffix):
                    found.add(function.name)
    return found


def test_every_model_call_goes_through_the_call_shell() -> None:
    """Pacing, budget, breaker and record are composed once, in engines/_calls/shell.py: the engines and tiers hand it
    their transport (issue 22)."""
    steps = {
        "record_call",
        "costs.reserve",
        "costs.admit",
        "costs.attempt_done",
        "costs.close",
        "costs.release",
        "guard.call",
        "guard.take_probes",
        "limiter.run",
    }
    composed = {str(p.relative_to(PACKAGE)): found for p in PACKAGE.rglob("*.py") if (found := _calls_of(p, steps))}
    assert composed == {"engines/_calls/shell.py": steps}
    for engine in ("llm.py", "dspy.py"):
        path = PACKAGE / "engines" / engine
        assert _calls_of(path, {"guarded"}) == set(), engine
        # the engine's transport sends the request (the shell wraps it): only LLMEngine's `complete`, which also
        # moves to the next structured-output form when a server rejects one, calls litellm itself
        assert _functions_calling(path, "acompletion") <= {"complete"}, engine
        text = path.read_text(encoding="utf-8")
        assert ".guard" not in text and "costs." not in text and "limiter" not in text, engine


def test_no_module_outside_engines_imports_a_private_engines_module() -> None:
    """The engine contract and its services are public in `flock_llm.engines` (issue 22): the runtime, stores,
    CLI, testing and quality code import them from there, never from `engines._x` (imports inside functions too)."""
    private = re.compile(r"(^|\.)engines\._")
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "engines"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and private.search("." * node.level + (node.module or "")):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def test_engines_are_grouped_by_what_a_call_passes_through() -> None:
    """Each question has a folder answer: where is a call's cost recorded (`_calls/`), where is the ladder
    (`_ladder/`), how do tiers go (`_tiers/`), what is the offline model (`offline/`)."""
    engines = PACKAGE / "engines"
    flat = sorted(p.name for p in engines.glob("_*.py") if p.name != "__init__.py")
    assert flat == ["_base.py"]  # the engine contract; everything else lives in its folder
    assert {p.name for p in engines.iterdir() if p.is_dir() and not p.name.startswith("__")} == {
        "_calls",
        "_ladder",
        "_tiers",
        "offline",
    }


def _public_names() -> dict[str, str]:
    """Every name a public module of flock_llm exports (`__all__`), with the module users import it from."""
    import importlib
    import pkgutil

    import flock_llm

    found: dict[str, str] = {}
    modules = ["flock_llm"] + [
        m.name for m in pkgutil.walk_packages(flock_llm.__path__, "flock_llm.") if "._" not in m.name
    ]
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed
            continue
        for exported in getattr(module, "__all__", ()):
            found.setdefault(exported, name)
    return found


def _code_outside_the_package() -> list[tuple[str, str]]:
    """(where, source) of the benchmarks, the examples and every python block of the docs and the README."""
    root = PACKAGE.parent
    sources = [
        (str(p.relative_to(root)), p.read_text(encoding="utf-8"))
        for d in ("benchmarks", "examples")
        for p in sorted((root / d).rglob("*.py"))
    ]
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
        sources += [(f"{page.relative_to(root)} block {n}", block) for n, block in enumerate(blocks, 1)]
    return sources


def test_benchmarks_examples_and_docs_import_public_types_from_public_modules() -> None:
    """Issue 22.6: a public type (RetryPolicy, CallShell, ...) is imported the way users import it, never from a
    private module such as `flock_llm.engines._calls.retry` (internals with no public name may be, e.g. a benchmark
    of the batch-job queue)."""
    public = _public_names()
    offenders = []
    for where, source in _code_outside_the_package():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flock_llm"):
                private = any(part.startswith("_") for part in (node.module or "").split("."))
                offenders += [
                    f"{where}: {a.name} from {node.module} (public in {public[a.name]})"
                    for a in node.names
                    if private and a.name in public
                ]
    assert offenders == []
