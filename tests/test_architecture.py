"""The layering of docs/architecture.md, read off the source: core <- services <- applications.

Every ``import`` in ``src/detris`` counts, at module level or inside a function (only the annotation-only
``if TYPE_CHECKING:`` blocks are skipped): no module may import one of a higher layer, and the import
graph among detris modules has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
APPLICATIONS = ("detris.cli", "detris.app", "detris.demo", "detris.engine", "detris.__main__")
SERVICES = ("detris.pretrained", "detris.predictor", "detris.evaluate", "detris.export", "detris.fetch",
            "detris.released", "detris.collection")
FACADE = "detris"  # the package root re-exports the public API of every layer


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The detris modules one import statement loads (``from pkg import submodule`` included)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    names_only = len(submodules) < len(node.names)  # some imported name is not a submodule
    return submodules | ({target} if target in known and names_only else set())


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (SRC / "detris").rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_targets(name, is_package, n, known) for n in _runtime_imports(tree))) - {name}
    return graph


def _layer(module: str) -> int:
    if module == FACADE:
        return 3
    if module in APPLICATIONS or module.startswith(tuple(a + "." for a in APPLICATIONS)):
        return 2
    if module in SERVICES or module.startswith(tuple(s + "." for s in SERVICES)):
        return 1
    return 0


GRAPH = _graph()


def test_the_graph_was_read():
    assert {"detris.modeling.detris", "detris.weights.detris_format", "detris.cli", "detris.inference"} <= set(GRAPH)
    assert "detris.weights.io" in GRAPH["detris.weights.dinov2"]  # relative imports resolved
    assert "detris.predictor" in GRAPH["detris.cli.predict"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer(module):
    names = {0: "core", 1: "service", 2: "application", 3: "facade"}
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not upward, f"{module} ({names[_layer(module)]}) imports {upward}"


def test_no_import_cycle():
    """Tarjan's strongly connected components: any component of two or more modules is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


# ------------------------------------------------------------------------------------ the model's contract
def _is_model_expr(node: ast.expr) -> bool:
    """``model``, ``self.model``, ``run.model``, ``quantized``-style names ending in ``model``."""
    if isinstance(node, ast.Name):
        return node.id.endswith("model")
    return isinstance(node, ast.Attribute) and node.attr.endswith("model")


def _source_trees() -> dict[str, ast.AST]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in (SRC / "detris").rglob("*.py")}


TREES = _source_trees()


def test_no_module_probes_the_model_for_attributes():
    """The model's attributes are typed (``DETRIS.config``, ``.processing``, ...): nothing asks whether
    a model has one (``getattr(model, ...)`` / ``hasattr(model, ...)``)."""
    probes = [
        f"{name}:{node.lineno}"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
        and node.args and _is_model_expr(node.args[0])
    ]
    assert not probes, f"attribute probes of a model: {probes}"


def test_nothing_is_attached_to_a_model_after_construction():
    """``config`` and ``processing`` come with the constructor; no service hangs attributes on a model."""
    attached = [
        f"{name}:{node.lineno} ({target.attr})"
        for name, tree in TREES.items() if not name.startswith("detris.modeling")
        for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and _is_model_expr(target.value)
        and target.attr in ("config", "processing", "base_weights")
    ]
    assert not attached, f"attributes attached to a model after construction: {attached}"


def test_the_model_has_one_forward():
    """``DETRIS.forward`` is the only entry point (one output type, `DetrisOutput`, in every mode)."""
    cls = next(n for n in ast.walk(TREES["detris.modeling.detris"]) if isinstance(n, ast.ClassDef) and n.name == "DETRIS")
    forwards = [f.name for f in cls.body if isinstance(f, ast.FunctionDef) and f.name.startswith("forward")]
    assert forwards == ["forward"]
    fn = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward")
    assert [a.arg for a in fn.args.args] == ["self", "images", "tokens"]
    assert ast.unparse(fn.returns) == "DetrisOutput"


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring."""
    lines = fn.end_lineno - fn.lineno + 1  # type: ignore[operator]
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return lines


def test_no_function_is_longer_than_80_lines():
    """A function that does not fit a screen does several things: split it (docstrings not counted)."""
    long = [
        f"{name}.{node.name} ({_body_lines(node)} lines)"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > 80
    ]
    assert not long, f"functions over 80 lines: {long}"
