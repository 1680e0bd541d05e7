"""The readers' layers: no module imports one in a layer above it, and no import circle.

A source turns a workspace into latest values and counts, the aggregate arranges them per run,
the analysis builds the answers, ``Workspace`` orchestrates. Data types (``_model``, the
errors) and the statistics are at the bottom, importable from every layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import contexta_async.readers as readers

PACKAGE = Path(readers.__file__).parent

LAYERS = {
    # bottom: result types, errors, statistics
    "_errors": 0,
    "_model": 0,
    "_direction": 0,
    # the source: files, index, scan, the RecordSource seam, the local-file source
    "_read": 1,
    "_index": 1,
    "_source": 1,
    "_scan": 1,
    "_local": 1,
    "_context": 1,
    # per run/stage/sample/key values and run summaries
    "_aggregate": 2,
    # deltas, pairing, notes and warnings (an answer's HTML, page or notebook table, is
    # contexta_async.report's)
    "_pairing": 3,
    "_analysis": 3,
    # orchestration
    "_workspace": 4,
    "__init__": 5,
}


def _imports(module: str) -> set[str]:
    """The readers modules ``module`` imports (relative ``from . import``/``from ._x``).

    Imports under ``if TYPE_CHECKING:`` are left out: they exist for the type checker only
    (import-linter's ``exclude_type_checking_imports``)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("contexta_async.readers."):
                found.add((node.module or "").split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("contexta_async.readers."):
                    found.add(alias.name.split(".")[2])
    return found & set(LAYERS)


def _modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def test_every_readers_module_has_a_layer() -> None:
    assert set(_modules()) <= set(LAYERS), set(_modules()) - set(LAYERS)


def test_no_readers_module_imports_one_in_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {LAYERS[module]}) imports {name} (layer {LAYERS[name]})"
        for module in _modules()
        for name in sorted(_imports(module))
        if LAYERS[name] > LAYERS[module]
    ]
    assert upward == []


def test_the_readers_modules_import_no_circle() -> None:
    graph = {module: _imports(module) for module in _modules()}
    state: dict[str, str] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(graph.get(module, ())):
            if state.get(name) == "open":
                circles.append([*path[path.index(name) :], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_scan_does_not_know_the_comparison() -> None:
    assert not _imports("_scan") & {"_aggregate", "_pairing", "_analysis", "_workspace"}
