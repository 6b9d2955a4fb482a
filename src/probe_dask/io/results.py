"""Reading a finished probe run back: an ``xarray.Dataset`` per split and a per-class table.

``load_results(run, shard)`` opens ``probe1d_metrics.npz`` and ``probe1d_classes.json`` of
one split (``RUN/inference/<shard_id>/``, or a folder given with ``results_dir``) and
returns a Dataset with dims ``latent`` and ``class_id`` (variables ``loss``, ``weight``,
``bias``, ``tp``, ``fp``, ``tn``, ``fn``, ``converged``, exactly the stored arrays, each
with ``long_name``, ``description`` and, where they apply, ``units`` attributes
(:data:`VARIABLE_ATTRS`); a ``class_name`` coordinate; the run's provenance as
attributes). The class dimension is ``class_id``, not ``class``, so that it works as a
keyword: ``ds.sel(class_id=3)`` (``class`` is a Python keyword). ``load_class_table`` gives
the per-class table as a pandas DataFrame indexed by class, with names. Class names come
from the run itself (``--class-names FILE`` is stored in ``probe1d_classes.json``), else
the ADE20K-150 names when the run has 151 classes, else ``class <i>``.

Memory per process: the split's arrays (eight ``(L, C)`` matrices, about 160 MB at
32768 x 151) and the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probe_dask.errors import InputError
from probe_dask.io.ade20k import ADE20K_NAMES
from probe_dask.io.layout import inference_dir
from probe_dask.io.outputs import write_json

__all__ = ["load_results", "load_class_table", "read_class_names", "check_class_names",
           "results_dir_of", "store_class_names"]

METRICS_FILE = "probe1d_metrics.npz"
CLASSES_FILE = "probe1d_classes.json"

#: Dataset variable <- npz key (the notebooks' key names stay in the npz).
VARIABLES = {"loss": "loss", "weight": "weights", "bias": "biases", "tp": "tp", "fp": "fp",
             "tn": "tn", "fn": "fn", "converged": "converged"}

#: The Dataset's class dimension: a name usable as a keyword (``ds.sel(class_id=3)``).
CLASS_DIM = "class_id"


def _count(kind: str, predicted: bool, labelled: bool) -> dict:
    says = "predicts" if predicted else "does not predict"
    has = "has" if labelled else "does not have"
    return {"long_name": kind,
            "description": f"number of the split's rows (patches) where the probe, at "
                           f"threshold 0.5, {says} the class and the row {has} its label",
            "units": "rows"}


#: Attributes of each variable and coordinate (CF-style ``long_name`` and ``units``).
VARIABLE_ATTRS = {
    "loss": {"long_name": "probe loss",
             "description": "mean negative log-likelihood (binary cross-entropy) of the "
                            "pair's probe p = sigmoid(bias + weight * activation) over the "
                            "split's rows, without the ridge term",
             "units": "nats"},
    "weight": {"long_name": "probe weight",
               "description": "w of p = sigmoid(b + w * activation), fitted on train "
                              "(the same in the train and the test results)",
               "units": "logit per unit of SAE activation"},
    "bias": {"long_name": "probe bias",
             "description": "b of p = sigmoid(b + w * activation), fitted on train "
                            "(the same in the train and the test results)",
             "units": "logit"},
    "tp": _count("true positives", True, True),
    "fp": _count("false positives", True, False),
    "tn": _count("true negatives", False, False),
    "fn": _count("false negatives", False, True),
    "converged": {"long_name": "converged",
                  "description": "whether the pair's fit met the solver's stopping rule "
                                 "(all False in results written before it was stored)"},
    "latent": {"long_name": "SAE latent", "description": "index of the latent (column of "
                                                        "token_acts.npz)"},
    CLASS_DIM: {"long_name": "class label", "description": "integer class label (0 first)"},
    "class_name": {"long_name": "class name", "description": "name of each class label"},
}


def read_class_names(path) -> list[str]:
    """Class names from a text file, one per line (label 0 first); blank lines at the end dropped.

    Raises
    ------
    InputError
        The file cannot be read, is empty, or has a blank line among the names.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, "class names", f"an unreadable file ({err})",
                         "a UTF-8 text file with one class name per line") from None
    names = [line.strip() for line in text.rstrip("\n").split("\n")] if text.strip() else []
    if not names:
        raise InputError(path, "class names", "no names", "one class name per line")
    blank = next((i for i, n in enumerate(names) if not n), None)
    if blank is not None:
        raise InputError(path, f"line {blank + 1}", "a blank line",
                         "one class name per line (label 0 on line 1)")
    return names


def check_class_names(names, n_classes: int, path) -> list[str]:
    """``names`` if there is one per class of the run; else InputError naming ``path``."""
    if names is not None and len(names) != n_classes:
        raise InputError(path, "class names", f"{len(names)} names",
                         f"{n_classes}, one per class of the run (label 0 first)")
    return None if names is None else list(names)


def class_names_for(n_classes: int, stored=None) -> list[str]:
    """Names of ``n_classes`` classes: ``stored`` (the run's), ADE20K-150 for 151, else numbers."""
    if stored is not None and len(stored) == n_classes:
        return [str(n) for n in stored]
    if n_classes == len(ADE20K_NAMES):
        return list(ADE20K_NAMES)
    return [f"class {i}" for i in range(n_classes)]


def results_dir_of(run, shard) -> Path:
    """``RUN/inference/<shard_id>``; ``shard`` is a shard folder or its id."""
    return inference_dir(run, Path(shard).name)


def _folder(run, shard, results_dir) -> Path:
    folder = Path(results_dir) if results_dir is not None else results_dir_of(run, shard)
    if not (folder / METRICS_FILE).is_file():
        raise InputError(folder / METRICS_FILE, "results", "no such file",
                         "the results of a finished `probe-dask fit` of this shard")
    return folder


def _load_summary(folder) -> dict:
    """The parsed ``probe1d_classes.json`` of the results in ``folder`` (``{}`` when it is
    missing); InputError when ``folder`` holds no results."""
    path = _folder(None, None, folder) / CLASSES_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise InputError(path, "JSON", f"unparsable text ({err})", "strict JSON") from None


def _attrs(summary: dict) -> dict:
    """Provenance as Dataset attributes: scalars as they are, anything nested as JSON text
    (so ``Dataset.to_netcdf`` can store them)."""
    attrs = {}
    for key, value in summary.items():
        if key == "class_names":
            continue  # a coordinate of the Dataset
        if value is None:
            value = "null"
        elif isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        attrs[key] = value
    return attrs


def load_results(run=None, shard=None, *, results_dir=None):
    """One split's results as an ``xarray.Dataset`` (dims ``latent``, ``class_id``).

    Parameters
    ----------
    run : path
        The SAE run folder (``--run``).
    shard : path or str
        The split's shard folder (``--train-shards`` / ``--test-shards``) or its id.
    results_dir : path, optional
        The folder holding the results instead (``--out DIR``: ``DIR/<shard_id>``).

    Returns
    -------
    xarray.Dataset
        ``loss``, ``weight``, ``bias``, ``tp``, ``fp``, ``tn``, ``fn`` (float32) and
        ``converged`` (bool; all False in results written before it existed, with attribute
        ``converged_stored = 0``), as stored, each with the attributes of
        :data:`VARIABLE_ATTRS` (``long_name``, ``description``, ``units``); coordinates
        ``latent``, ``class_id`` (the class label: ``ds.sel(class_id=3)``) and
        ``class_name``; ``attrs``: the summary of ``probe1d_classes.json`` (version, command,
        device, kernel, dates, passes, converged pairs...).

    Examples
    --------
    >>> ds = load_results("RUN", "SHARDS/a1b2c3d4")          # doctest: +SKIP
    >>> ds.loss.sel(class_id=13).argmin("latent")              # doctest: +SKIP
    """
    folder = _folder(run, shard, results_dir)
    summary = _load_summary(folder).get("summary", {})
    with np.load(folder / METRICS_FILE) as f:
        arrays = {var: f[key] for var, key in VARIABLES.items() if key in f.files}
    missing = [VARIABLES[v] for v in VARIABLES if v not in arrays and v != "converged"]
    if missing:
        raise InputError(folder / METRICS_FILE, "keys", f"no {', '.join(missing)}",
                         f"the keys {', '.join(VARIABLES.values())}")
    n_latents, n_classes = arrays["loss"].shape
    stored = "converged" in arrays
    if not stored:
        arrays["converged"] = np.zeros((n_latents, n_classes), dtype=bool)
    names = class_names_for(n_classes, summary.get("class_names"))
    # xarray and pandas (~100 MB) are imported here, not with the package: every Dask worker
    # imports probe_dask, and only a user reading results needs them.
    try:
        import xarray as xr
    except ImportError as exc:
        raise ImportError("load_results needs xarray, which is not installed "
                          "(pip install 'probe-dask[analysis]')") from exc

    dims = ("latent", CLASS_DIM)
    ds = xr.Dataset(
        {var: (dims, arrays[var], dict(VARIABLE_ATTRS[var])) for var in VARIABLES},
        coords={"latent": ("latent", np.arange(n_latents), dict(VARIABLE_ATTRS["latent"])),
                CLASS_DIM: (CLASS_DIM, np.arange(n_classes), dict(VARIABLE_ATTRS[CLASS_DIM])),
                "class_name": (CLASS_DIM, names, dict(VARIABLE_ATTRS["class_name"]))},
        attrs={**_attrs(summary), "results_dir": str(folder), "converged_stored": int(stored)},
    )
    return ds


def load_class_table(run=None, shard=None, *, results_dir=None):
    """The per-class table of a run (``probe1d_classes.json``) as a DataFrame indexed by class.

    Columns: ``name``, ``best_latent``, ``train_rows``, ``test_rows``, ``train_loss``,
    ``test_loss``, ``train_baseline_ce``, ``test_baseline_ce``, ``train_probe_r``,
    ``test_probe_r`` (NaN where the JSON has ``null``), and ``note`` where one is given.
    """
    folder = _folder(run, shard, results_dir)
    doc = _load_summary(folder)
    if "classes" not in doc:
        raise InputError(folder / CLASSES_FILE, "classes", "no such key",
                         "the per-class table of a finished `probe-dask fit`")
    try:
        import pandas as pd  # lazy, as in load_results
    except ImportError as exc:
        raise ImportError("load_class_table needs pandas, which is not installed "
                          "(pip install 'probe-dask[analysis]')") from exc

    table = pd.DataFrame(doc["classes"]).set_index("class")
    table.insert(0, "name", class_names_for(len(table), doc.get("summary", {}).get("class_names")))
    for col in table.columns:
        if col.endswith(("_loss", "_ce", "_r")):
            table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    return table


def store_class_names(names, run, shards, *, results_dirs=None, source=None) -> None:
    """Record ``names`` in the ``probe1d_classes.json`` of every split of a finished run.

    For a run fitted without ``--class-names``: ``probe-dask report --class-names FILE``
    names its classes once, and ``load_results`` finds them afterwards. Every file is checked
    (one name per class) before any is rewritten, each atomically.
    """
    folders = ([Path(d) for d in results_dirs] if results_dirs is not None
               else [results_dir_of(run, s) for s in shards])
    docs = []
    for folder in folders:
        doc = _load_summary(folder)
        n_classes = doc.get("summary", {}).get("n_classes", len(doc.get("classes", [])))
        check_class_names(names, n_classes, source if source is not None else folder / CLASSES_FILE)
        docs.append((folder, doc))
    for folder, doc in docs:
        doc.setdefault("summary", {})["class_names"] = list(names)
        write_json(folder / CLASSES_FILE, doc)
