"""The package's shape: imports flow one way through the layers, none hides in a function.

Read from the source with ``ast`` (nothing is imported): every ``import``/``from`` of a
``probe_dask`` module is an edge from its layer to another; the test fails on an edge that
points up the stack, on an import of our own modules inside a function, and on a module
cycle.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "probe_dask"

#: Lower layers first; a module may import its own layer and the layers before it.
LAYERS = ["base", "io", "core", "testing", "kernels", "engine", "memory", "cluster", "telemetry",
          "app"]
BASE = {"errors", "config", "stages", "_version"}
#: Layers that are pure: they import nothing else of probe_dask.
SELF_CONTAINED = {"core"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield "probe_dask" + "".join("." + p for p in parts), path


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE or parts[1] == "__main__":
        return "base" if len(parts) > 1 and parts[1] in BASE else "top"
    return parts[1]


def _dynamic(node) -> str | None:
    """The module of ``importlib.import_module("probe_dask...")`` (a literal name), else None."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    arg = node.args[0]
    if name == "import_module" and isinstance(arg, ast.Constant) and \
            isinstance(arg.value, str) and arg.value.startswith("probe_dask"):
        return arg.value
    return None


def _imports(path: Path, dynamic: bool = True):
    """(module imported, line, inside a function) for every probe_dask import of a file;
    with ``dynamic``, also every ``importlib.import_module`` of a literal probe_dask name
    (an edge of the layers all the same: a backend loaded on first use, kernels.dispatch)."""
    tree = ast.parse(path.read_text())
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(fn))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("probe_dask"):
            names = [node.module + "." + a.name for a in node.names]
            names = [n if (PKG.parent / n.replace(".", "/")).with_suffix(".py").exists()
                     or (PKG.parent / n.replace(".", "/")).is_dir() else node.module for n in names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("probe_dask")]
        elif dynamic and _dynamic(node) is not None:
            names = [_dynamic(node)]
        for name in names:
            yield name, node.lineno, id(node) in in_function


MODULES = dict(_modules())


def test_no_probe_dask_import_inside_a_function():
    # a dynamic import on first use is the point of it (an optional dependency's backend)
    bad = [f"{path.relative_to(PKG.parent)}:{line} imports {name}"
           for mod, path in MODULES.items()
           for name, line, inner in _imports(path, dynamic=False) if inner]
    assert not bad, "\n".join(bad)


def test_imports_flow_down_the_layers():
    bad = []
    for mod, path in MODULES.items():
        src = _layer(mod)
        if src == "top":  # probe_dask/__init__ and __main__ re-export the public API
            continue
        for name, line, _ in _imports(path):
            dst = _layer(name)
            if dst == "top":
                bad.append(f"{mod}:{line} imports the package root {name}")
            elif src in SELF_CONTAINED and dst != src:
                bad.append(f"{mod}:{line} ({src}, self-contained) imports {name} ({dst})")
            elif LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{mod}:{line} ({src}) imports {name} ({dst}), a higher layer")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {mod: {n for n, _, _ in _imports(path) if n in MODULES and n != mod}
             for mod, path in MODULES.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)


def test_modules_are_small():
    long = [f"{p.relative_to(PKG.parent)}: {n} lines" for p in PKG.rglob("*.py")
            if (n := p.read_text().count("\n")) > 450]
    assert not long, "\n".join(long)


def test_functions_fit_on_a_screen():
    """No function is longer than 80 lines (docstring included): split into named steps."""
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}: "
                                f"{n} lines")
    assert not long, "\n".join(long)


def test_the_layers_see_dynamic_imports():
    """``kernels.dispatch`` loads its GPU backends with ``importlib``: those are edges too."""
    edges = {name for name, _, _ in _imports(MODULES["probe_dask.kernels.dispatch"])}
    assert {"probe_dask.kernels.triton_backend", "probe_dask.kernels.streaming"} <= edges
