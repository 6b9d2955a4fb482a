"""The summary of a sweep: one row per run, and per class the best run and latent.

Built from the result files each run wrote (``probe1d_classes.json`` and both splits'
``probe1d_metrics.npz``), so a run fitted now and a run skipped because its results existed
are summarised the same way. Two CSV files, each written atomically:

- ``sweep_summary.csv``: index, run id, name (the run id and its explicit settings),
  the settings (ridge, max_iter, block_nnz, device: as fitted where the run's result or
  settings file says, else as the sweep asks; block_nnz blank: the memory plan's), the
  kernel the workers ran (``c on cpu x2``: what device auto became), status,
  latents, classes, solver passes, converged share, mean and best (over classes) probe R of
  each class's best latent on train and test, seconds, run folder, results folder.
- ``sweep_best.csv``: per class, the run and latent whose test probe R is highest over every
  latent of every finished run (``1 - test loss / test baseline``), and that pair's train
  probe R.

Memory per process: one run's two ``(L, C)`` loss matrices at a time, plus one row per run
and per class.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from probe_dask.app.sweepfile import SETTING_KEYS, resolved_settings
from probe_dask.io.layout import CLASSES_NAME, METRICS_NAME
from probe_dask.io.outputs import atomic_path

__all__ = ["SUMMARY_NAME", "BEST_NAME", "SUMMARY_COLUMNS", "BEST_COLUMNS", "run_row",
           "write_summary", "load_sweep_summary"]

SUMMARY_NAME = "sweep_summary.csv"
BEST_NAME = "sweep_best.csv"
#: A run's resolved settings (``probe1d_settings.json``), beside its train results.
SETTINGS_NAME = "probe1d_settings.json"
SUMMARY_COLUMNS = ("index", "run_id", "name", *SETTING_KEYS, "status", "latents", "classes",
                   "kernel", "passes", "converged_share", "mean_train_r", "best_train_r", "mean_test_r",
                   "best_test_r", "seconds", "run", "out", "error")
BEST_COLUMNS = ("class", "run_id", "index", "latent", "test_probe_r", "train_probe_r")


def _num(x):
    # Strict JSON writes NaN as null; a missing value is NaN here too.
    return float("nan") if x is None else float(x)


def _stats(values):
    v = np.array([_num(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.max())) if v.size else (float("nan"), float("nan"))


def _settings(run, out_dirs) -> dict:
    """The run's settings: its ``probe1d_settings.json`` if written, else what it asks for."""
    settings = resolved_settings(run)
    path = Path(out_dirs[0]) / SETTINGS_NAME
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}  # a damaged file: the sweep's own values still say what was asked
        settings.update({k: doc[k] for k in SETTING_KEYS if k in doc})
    return settings


def run_row(run, out_dirs, status, error="") -> dict:
    """The summary row of one run from its settings and ``probe1d_classes.json`` (the
    result columns blank if absent)."""
    row = {"index": run.index, "run_id": run.run_id, "name": run.name, "status": status,
           "run": str(run.run), "out": str(Path(out_dirs[0]).parent), "error": error,
           **_settings(run, out_dirs)}
    path = Path(out_dirs[0]) / CLASSES_NAME
    if status not in ("finished", "skipped") or not path.is_file():
        return row
    doc = json.loads(path.read_text())
    s, classes = doc["summary"], doc["classes"]
    row.update({k: s[k] for k in ("ridge", "max_iter") if k in s})  # as fitted
    # Which kernel ran where, e.g. "c on cpu" (every worker): what "device auto" became.
    row["kernel"] = "; ".join(f"{k} x{n}" for k, n in (s.get("kernel") or {}).items())
    row.update(latents=s["n_latents"], classes=s["n_classes"], passes=s["solver_passes"],
               converged_share=s["converged_pairs"] / max(1, s["pairs"]),
               seconds=sum(v for v in (s.get("seconds") or {}).values() if isinstance(v, (int, float))))
    row["mean_train_r"], row["best_train_r"] = _stats(c.get("train_probe_r") for c in classes)
    row["mean_test_r"], row["best_test_r"] = _stats(c.get("test_probe_r") for c in classes)
    return row


def _update_best(best, run, out_dirs):
    """Fold one finished run into ``best`` (class -> row) by test probe R over all latents."""
    doc = json.loads((Path(out_dirs[0]) / CLASSES_NAME).read_text())
    classes = doc["classes"]
    with np.load(Path(out_dirs[1]) / METRICS_NAME) as f:
        test_loss = f["loss"].astype(np.float64)
    with np.load(Path(out_dirs[0]) / METRICS_NAME) as f:
        train_loss = f["loss"].astype(np.float64)
    for c, info in enumerate(classes):
        base = _num(info.get("test_baseline_ce"))
        if not (info.get("test_rows", 0) > 0 and base > 0):
            continue  # the class never occurs in this run's test shard: no test probe R
        latent = int(np.argmin(test_loss[:, c]))
        r = 1.0 - test_loss[latent, c] / base
        if c in best and not r > best[c]["test_probe_r"]:
            continue  # ties keep the earlier run
        train_base = _num(info.get("train_baseline_ce"))
        train_r = (1.0 - train_loss[latent, c] / train_base
                   if info.get("train_rows", 0) > 0 and train_base > 0 else float("nan"))
        best[c] = {"class": c, "run_id": run.run_id, "index": run.index, "latent": latent,
                   "test_probe_r": float(r), "train_probe_r": float(train_r)}


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


def _write_csv(path, columns, rows) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in columns])
    return Path(path)


def write_summary(folder, entries) -> tuple[Path, Path]:
    """Write ``sweep_summary.csv`` and ``sweep_best.csv`` into ``folder``.

    Parameters
    ----------
    folder : path
        Beside the sweep file, or ``--out``.
    entries : iterable of (SweepRun, out_dirs, status, error)
        Every run of the sweep in order; ``status`` is ``finished``, ``skipped``, ``failed``
        or ``pending``.

    Returns
    -------
    (Path, Path)
        The two files.
    """
    rows, best = [], {}
    for run, out_dirs, status, error in entries:
        rows.append(run_row(run, out_dirs, status, error))
        if status in ("finished", "skipped"):
            _update_best(best, run, out_dirs)
    folder = Path(folder)
    return (_write_csv(folder / SUMMARY_NAME, SUMMARY_COLUMNS, rows),
            _write_csv(folder / BEST_NAME, BEST_COLUMNS, [best[c] for c in sorted(best)]))


def load_sweep_summary(folder, which: str = "summary"):
    """A sweep's summary as a pandas DataFrame (pandas is optional: imported here only).

    Parameters
    ----------
    folder : path
        The folder holding ``sweep_summary.csv`` and ``sweep_best.csv``.
    which : {"summary", "best"}
        One row per run, or one row per class.

    Returns
    -------
    pandas.DataFrame
    """
    try:
        import pandas as pd  # optional dependency: only this function needs it
    except ImportError as exc:
        raise ImportError("load_sweep_summary needs pandas, which is not installed "
                          "(pip install 'probe-dask[analysis]')") from exc

    name = {"summary": SUMMARY_NAME, "best": BEST_NAME}[which]
    return pd.read_csv(Path(folder) / name, index_col="index" if which == "summary" else "class")
