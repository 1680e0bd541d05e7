"""The house's imports: no circle between any two of the package's modules, and no module
importing a part above its own (the layers below, from the bottom up).

Imports under ``if TYPE_CHECKING:`` are left out: they exist for the type checker only.
Imports inside a function count: they run too, just later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import contexta_async

ROOT = Path(contexta_async.__file__).parent

# The parts of the package, bottom up; a module may import its own part and those below.
LAYERS = {
    "contexta_async._format": 0,
    "contexta_async._errors": 0,
    "contexta_async._clock": 0,
    "contexta_async._log": 0,
    "contexta_async._validation": 0,
    "contexta_async.stats": 1,
    "contexta_async.sinks": 1,
    "contexta_async._artifacts": 1,
    # capture
    "contexta_async._waiters": 2,
    "contexta_async._buffer": 2,
    "contexta_async._delivery": 2,
    "contexta_async._pipeline": 3,
    "contexta_async._run_state": 3,
    "contexta_async._scope_core": 4,
    "contexta_async._scopes": 5,
    "contexta_async.stores": 5,
    "contexta_async._client": 6,
    # reading
    "contexta_async.readers": 7,
    "contexta_async.export": 8,
    "contexta_async.report": 8,
    "contexta_async.view": 8,
    "contexta_async._cli": 9,
    "contexta_async.__main__": 10,
    "contexta_async": 10,
}
# Workspace.to_arrow()/export() hand the work to the export package, imported when called (the
# export builds on the readers; the methods are conveniences on the readers' main object).
# Likewise the readers' package re-exports render_html_report, and the result types' notebook
# display (_repr_html_) is rendered by the report package, each imported on first use.
ALLOWED_UPWARD = {
    ("contexta_async.readers._workspace", "contexta_async.export"),
    ("contexta_async.readers", "contexta_async.report"),
    ("contexta_async.readers._model", "contexta_async.report"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            # `from . import _validation` imports that module, not (only) the package
            if submodules:
                found |= submodules
            if target in MODULES and (node.module or not submodules):
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & MODULES.keys()
    found.discard(module)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _part(module)


def test_no_module_imports_a_part_above_its_own() -> None:
    upward = [
        f"{module} imports {name}"
        for module in sorted(MODULES)
        for name in sorted(_imports(module))
        if LAYERS[_part(name)] > LAYERS[_part(module)]
        and (module, _part(name)) not in ALLOWED_UPWARD
    ]
    assert upward == []


def test_no_two_modules_import_each_other_round_a_circle() -> None:
    graph = {module: _imports(module) for module in MODULES}
    state: dict[str, str] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(graph[module]):
            if state.get(name) == "open":
                circles.append([*path[path.index(name) :], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
