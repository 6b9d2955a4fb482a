"""Every reference to our own code in docstrings, comments and docs resolves.

A docstring that names ``engine.ranges.persist_ranges`` (or ``probe_dask.kernels.step``,
or a path such as ``src/probe_dask/engine/fit.py`` / ``engine/fit.py`` in the docs) must name
a module, class, function or attribute that exists: a renamed or deleted one leaves a
reference that misleads the reader. Read from the source (``ast`` for the docstrings) and
resolved by importing, one reference at a time.
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "probe_dask"
LAYERS = ("io", "core", "kernels", "engine", "memory", "cluster", "telemetry", "app", "testing")
#: Every module of the package by its last name (``ranges`` -> ``engine.ranges``): a
#: docstring names a sibling module without its layer.
MODULES = {}
for _path in PKG.rglob("*.py"):
    _rel = _path.relative_to(PKG).with_suffix("")
    _parts = [p for p in _rel.parts if p != "__init__"]
    if _parts:
        MODULES.setdefault(_parts[-1], []).append(".".join(_parts))
#: ``engine.ranges.persist_ranges``, ``ranges.persist_ranges`` or
#: ``probe_dask.kernels.step`` in double backticks
DOTTED = re.compile(r"``(?:probe_dask\.)?((?:%s)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)``"
                    % "|".join(sorted(set(LAYERS) | set(MODULES), key=len, reverse=True)))
#: ``engine/fit.py`` or ``src/probe_dask/engine/fit.py`` in single or double backticks
PATH = re.compile(r"`+(?:src/probe_dask/)?((?:%s)/[A-Za-z0-9_/]*\.py)`+" % "|".join(LAYERS))


def _resolves(dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in LAYERS:  # a module named without its layer: any module of that name
        return any(_resolves_full(f"{m}.{rest}") for m in MODULES.get(head, ()))
    return _resolves_full(dotted)


def _resolves_full(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("probe_dask." + ".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                # a dataclass field, or an attribute a method sets (``fit`` sets ``coef_``)
                ann = getattr(obj, "__annotations__", {}) or {}
                codes = [getattr(f, "__code__", None) for f in vars(obj).values()] \
                    if isinstance(obj, type) else []
                return name in ann or any(c is not None and name in c.co_names for c in codes)
            obj = getattr(obj, name)
        return True
    return False


def _texts():
    for path in sorted(PKG.rglob("*.py")):
        yield path, path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield path, path.read_text()


#: Sphinx roles: :func:`probe_dask.memory.search.plan_run`, :class:`~.kernels.LatentBlock`
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc):`~?\.?(?:probe_dask\.)?([A-Za-z_][\w.]*\.[\w.]+)`")
#: File names in backticks (``labels.bin``, ``step.c``) are not references to code.
FILE_SUFFIXES = {"bin", "json", "u8", "i32", "i64", "f32", "c", "py", "npz", "npy", "yaml",
                 "csv", "png", "md", "txt", "jsonl", "toml", "so"}


def _references():
    seen = set()
    for path, text in _texts():
        for m in DOTTED.finditer(text):
            if m.group(1).rsplit(".", 1)[-1] in FILE_SUFFIXES:
                continue
            key = ("dotted", m.group(1))
            if key not in seen:
                seen.add(key)
                yield path, *key
        for m in ROLE.finditer(text):
            head = m.group(1).split(".", 1)[0]
            if head in LAYERS or head in MODULES:
                key = ("dotted", m.group(1))
                if key not in seen:
                    seen.add(key)
                    yield path, *key
        for m in PATH.finditer(text):
            key = ("path", m.group(1))
            if key not in seen:
                seen.add(key)
                yield path, *key


def test_every_reference_to_our_code_resolves():
    broken = []
    for where, kind, ref in _references():
        ok = (PKG / ref).exists() if kind == "path" else _resolves(ref)
        if not ok:
            broken.append(f"{where.relative_to(ROOT)}: {ref}")
    assert not broken, "references to code that does not exist:\n" + "\n".join(broken)


def test_the_check_sees_a_broken_reference():
    assert _resolves("engine.ranges.persist_ranges") and _resolves("kernels.step")
    assert not _resolves("engine.ranges.no_such_function")
    assert not _resolves("engine.no_such_module")
