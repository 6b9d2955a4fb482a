"""The public API is what the front door exports, and docs/architecture.md lists exactly it.

``probe_dask.__all__`` and the bullets of the "The public API" section name the same set;
every name resolves on the package and is described there in words, not only named.
"""

import re
from pathlib import Path

import probe_dask

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
#: A bullet of the section: ``- `name` — what it is``.
BULLET = re.compile(r"^- `([A-Za-z_][A-Za-z0-9_]*)` — (\S.*)$", re.MULTILINE)


def _documented() -> dict:
    """Name -> first line of its description, from the public API section of the docs."""
    text = DOC.read_text()
    start = text.index("\n## The public API\n")
    end = text.index("\n## ", start + 1)
    return {m.group(1): m.group(2) for m in BULLET.finditer(text[start:end])}


def test_every_exported_name_resolves():
    missing = [name for name in probe_dask.__all__ if not hasattr(probe_dask, name)]
    assert not missing, f"probe_dask.__all__ names what the package lacks: {missing}"
    assert len(set(probe_dask.__all__)) == len(probe_dask.__all__), "a name exported twice"


def test_exports_and_docs_list_the_same_names():
    documented = _documented()
    exported = set(probe_dask.__all__)
    assert not exported - set(documented), \
        f"exported but not in docs/architecture.md's public API: {sorted(exported - set(documented))}"
    assert not set(documented) - exported, \
        f"documented as public but not exported: {sorted(set(documented) - exported)}"


def test_each_documented_name_is_described():
    short = {name: line for name, line in _documented().items() if len(line.split()) < 3}
    assert not short, f"public names with no description: {short}"
