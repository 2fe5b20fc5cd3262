"""Every import of the package points down a table of layers, and no import closes a circle.

The modules are read as text (AST), so imports inside functions count as arrows too. Importing
``a.b.c`` runs the package ``a.b`` first, so an import from outside a sub-package is also an
arrow to that sub-package's ``__init__``. The table is the one of docs/architecture.md
("Allowed arrows"): a module may import from its own unit (its sub-package, or itself for a
top-level module) and from any unit of a lower layer, never from a higher layer or from another
unit of its own layer.
"""
import ast
import pathlib

import pytest

import clustr_fast
import clustr_fast.kernels

PACKAGE = pathlib.Path(clustr_fast.__file__).parent
KERNELS = pathlib.Path(clustr_fast.kernels.__file__).parent  # installed as clustr_fast.kernels

# Top layer first. Each entry: the units of one layer (a unit is a sub-package or a top-level
# module; "clustr_fast" is the package's own __init__, the public API).
LAYERS = (
    ("clustr_fast.cli",),
    ("clustr_fast.demo",),
    ("clustr_fast.demo_real",),
    ("clustr_fast.train", "clustr_fast.robust"),
    ("clustr_fast",),
    ("clustr_fast.distributed",),
    ("clustr_fast.estimator", "clustr_fast.nn", "clustr_fast.models", "clustr_fast.data"),
    ("clustr_fast.kmeans",),
    ("clustr_fast.ops",),
    ("clustr_fast.reference", "clustr_fast._backend"),
    ("clustr_fast.kernels",),
    ("clustr_fast._validate", "clustr_fast.ranks"),
)
LAYER = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def _files() -> dict:
    """Module name -> path, for every module of the package and of its kernels."""
    out = {}
    for root, prefix in ((PACKAGE, ["clustr_fast"]), (KERNELS, ["clustr_fast", "kernels"])):
        for path in sorted(root.rglob("*.py")):
            parts = prefix + list(path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _files()
EXTENSION = {"clustr_fast._C"}  # the compiled kernels: they import nothing of the package


def unit_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def arrows(module: str) -> set:
    """The package modules ``module`` imports, at any depth of its code (relative imports resolved;
    ``from p import name`` is an arrow to ``p.name`` when that is a module, else to ``p``)."""
    path = MODULES[module]
    here = module.split(".")
    package = here if _is_package(module) else here[:-1]
    named = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{source}.{alias.name}" for alias in node.names} & (MODULES.keys() | EXTENSION)
            named.update(subs)
            if len(subs) < len(node.names):
                named.add(source)
    out = set()
    for name in named:
        parts = name.split(".")
        if parts[0] != "clustr_fast" or name in EXTENSION:
            continue
        out.add(name)
        # the sub-packages that importing ``name`` runs first (the root runs first for every module)
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if not module.startswith(parent + "."):
                out.add(parent)
    out.discard(module)
    return out


GRAPH = {m: arrows(m) for m in MODULES}


def test_every_module_has_a_layer():
    assert not sorted(m for m in MODULES if unit_of(m) not in LAYER)


def test_the_scan_sees_lazy_relative_and_package_imports():
    assert "clustr_fast.ops.kmeans" in GRAPH["clustr_fast.kmeans"]
    assert "clustr_fast.train.fit" in GRAPH["clustr_fast.cli.train"]  # inside a function
    assert "clustr_fast.kernels" in GRAPH["clustr_fast._backend"]
    assert "clustr_fast._validate" in GRAPH["clustr_fast.kernels.pairwise_sqdist"]


def _violation(src: str, dst: str):
    a, b = unit_of(src), unit_of(dst)
    if a == b:
        return None
    if LAYER[b] > LAYER[a]:
        return None
    where = "the same layer as" if LAYER[a] == LAYER[b] else "a higher layer than"
    return f"{src} -> {dst}: {b} is in {where} {a}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    bad = [v for dst in sorted(GRAPH[module]) if (v := _violation(module, dst))]
    assert not bad, "\n".join(bad)


def _circles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    # the root package's own imports are left out: every module runs it first, by Python's rule
    graph = {m: {d for d in deps if d != "clustr_fast"} for m, deps in GRAPH.items()}
    assert _circles(graph) == []


def test_a_circle_and_an_upward_arrow_are_seen():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _violation("clustr_fast.ops.kmeans", "clustr_fast.kmeans")
    assert _violation("clustr_fast.train.fit", "clustr_fast.robust.lipschitz")
    assert _violation("clustr_fast.kernels.magnet_loss", "clustr_fast.ops.magnet_loss")
    assert not _violation("clustr_fast.ops.kmeans", "clustr_fast._backend")
