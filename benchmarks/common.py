"""What the benchmarks share: arguments, a work folder, synthetic runs, the CLI under a
memory sampler, the reference gap, tables, and the JSON file of results.

Every benchmark takes ``--workdir DIR`` (default: the system's temporary folder), makes its
data in a folder of its own under it (``DIR/<name>-<pid>``, deleted at the end unless
``--keep``), prints its results as tables, and writes them as JSON beside the table: to
``--json PATH``, or by default to ``DIR/<name>.json``.

Run a benchmark as ``./dev bench NAME`` or ``.venv/bin/python benchmarks/NAME.py``; this
module is found beside it (the script's folder is on ``sys.path``).

Memory of this module: nothing beyond what its callers pass in, except
:func:`train_problem`, which loads a whole train shard as CSC (for the reference only:
benchmarks' data is sized for one machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import scipy.sparse as sp

from probe_dask.io.labels import open_labels
from probe_dask.io.layout import activations_path
from probe_dask.telemetry import read_telemetry, run_telemetry
from probe_dask.testing.memory import TreeSampler
from probe_dask.testing.runner import popen_cli
from probe_dask.testing.synthetic import make_run

MiB = 2**20


# ------------------------------------------------------------------------ arguments, folders


def parser(doc: str, *, first_paragraph: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the shared options ``--workdir``, ``--keep`` and ``--json``.

    Parameters
    ----------
    doc : str
        The benchmark's module docstring; its first line (or first paragraph) describes it.
    first_paragraph : bool
        Use the first paragraph rather than the first line.
    """
    description = doc.split("\n\n")[0] if first_paragraph else doc.splitlines()[0]
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--workdir", default=tempfile.gettempdir(),
                    help="folder for the benchmark's data and its JSON results (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the data made under --workdir")
    ap.add_argument("--json", default=None,
                    help="write the results here (default: WORKDIR/<benchmark>.json)")
    return ap


@contextmanager
def work_folder(args, name: str):
    """A new folder ``<args.workdir>/<name>-<pid>`` for the data, removed unless ``--keep``."""
    path = Path(args.workdir) / f"{name}-{os.getpid()}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)


def results_path(args, name: str) -> Path:
    """Where the JSON results go: ``--json``, else ``<workdir>/<name>.json``."""
    return Path(args.json) if args.json else Path(args.workdir) / f"{name}.json"


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def _finite(obj):
    """NaN and infinities become None (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_results(args, name: str, results: dict) -> Path:
    """Write ``results`` (plus the machine) as strict JSON, atomically; print where.

    Returns
    -------
    pathlib.Path
    """
    path = results_path(args, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "args": vars(args), **results}
    text = json.dumps(_finite(json.loads(json.dumps(payload, default=_jsonable))), indent=1,
                      allow_nan=False)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    print(f"\nresults: {path}", flush=True)
    return path


# ------------------------------------------------------------------------ machine, tables


def machine() -> dict:
    """The machine and the moment, for the record (torch is not imported here)."""
    return {"node": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def machine_line() -> str:
    """One line describing :func:`machine`."""
    m = machine()
    return (f"machine: {m['node']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB; "
            f"python {m['python']}; {m['date']}")


def format_table(header: list[str], rows: list[list], *, markdown: bool = False,
                 left: tuple[int, ...] = (0,)) -> str:
    """A table of already formatted cells: aligned text, or a Markdown table.

    Parameters
    ----------
    header : list of str
    rows : list of list
        Cells (converted with ``str``).
    markdown : bool
        A Markdown table (``| a | b |``, numbers right-aligned) instead of aligned columns.
    left : tuple of int
        Columns aligned left; the others are aligned right.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    if markdown:
        rule = ["---" if i in left else "---:" for i in range(len(header))]
        return "\n".join("| " + " | ".join(r) + " |" for r in [cells[0], rule, *cells[1:]])
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(" ".join(c.ljust(w) if i in left else c.rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in cells)


def print_table(header, rows, **kwargs) -> None:
    """Print :func:`format_table`."""
    print(format_table(header, rows, **kwargs), flush=True)


# ------------------------------------------------------------------------ data, runs


def synthetic_run(root, **kwargs):
    """``make_run(root, **kwargs)`` timed: return the run and the seconds it took."""
    t0 = time.perf_counter()
    run = make_run(root, **kwargs)
    return run, time.perf_counter() - t0


def run_cli_sampled(*args, interval: float = 0.1, log_path=None):
    """Run ``python -m probe_dask ARGS`` while sampling the RSS of its process tree.

    Parameters
    ----------
    *args
        Command-line arguments.
    interval : float
        Seconds between RSS samples.
    log_path : path, optional
        Send stdout and stderr there (together) instead of capturing them.

    Returns
    -------
    returncode : int
    seconds : float
        Wall time.
    sampler : probe_dask.testing.memory.TreeSampler
        Peaks of the driver, of each worker and of every other process of the tree.
    out, err : str
        The captured output ("" when written to ``log_path``).
    """
    t0 = time.perf_counter()
    if log_path is None:
        proc = popen_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with TreeSampler(proc.pid, interval=interval) as sampler:
            out, err = proc.communicate()
    else:
        with open(log_path, "w") as log:
            proc = popen_cli(*args, stdout=log, stderr=subprocess.STDOUT)
            with TreeSampler(proc.pid, interval=interval) as sampler:
                proc.wait()
        out = err = ""
    return proc.returncode, time.perf_counter() - t0, sampler, out, err


def train_problem(run_dir, train_shard):
    """A shard as a CSC matrix and its labels (int64), for the float64 reference.

    Loads the whole shard: use it on benchmark-sized data only.
    """
    csc = sp.load_npz(activations_path(run_dir, Path(train_shard).name)).tocsc()
    labels = open_labels(train_shard)
    return csc, labels.read(0, labels.n_rows).astype(np.int64)


def telemetry_events(run_dir, train_shard) -> list[dict]:
    """The events of a run's latest ``probe1d_telemetry-<stamp>.jsonl`` (beside the train
    results); [] if none."""
    kept = run_telemetry(activations_path(run_dir, Path(train_shard).name).parent)
    return read_telemetry(kept[-1]) if kept else []


def first_event(events: list[dict], kind: str, last: bool = False) -> dict | None:
    """The first (or last) telemetry event of a kind, or None."""
    found = [e for e in events if e.get("event") == kind]
    return (found[-1] if last else found[0]) if found else None
