"""Fault-injection helpers shared by the fault tests (local and Slurm): compare result sets,
and kill a worker while it runs a task of a solver pass.

Memory per process: the two result sets being compared (a few ``(L, C)`` float32 arrays).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from probe_dask.io.layout import CLASSES_NAME, METRICS_NAME

__all__ = ["metrics", "assert_same_results", "checkpoint_pass", "Killer"]


def metrics(out_dir) -> dict:
    with np.load(Path(out_dir) / METRICS_NAME) as f:
        return {k: f[k] for k in f.files}


def assert_same_results(dirs_a, dirs_b):
    """Both splits' probe1d_metrics.npz and the class tables are identical."""
    for a, b in zip(dirs_a, dirs_b):
        ma, mb = metrics(a), metrics(b)
        # the seven keys the notebooks read, and the per-pair converged flag
        assert set(ma) == set(mb) == {"loss", "weights", "biases", "tp", "fp", "tn", "fn", "converged"}
        for k in ma:
            np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
    ta = json.loads((Path(dirs_a[0]) / CLASSES_NAME).read_text())["classes"]
    tb = json.loads((Path(dirs_b[0]) / CLASSES_NAME).read_text())["classes"]
    assert ta == tb


def checkpoint_pass(path) -> int:
    """The pass a checkpoint holds (its ``n_iter``); -1 while there is none (it is renamed
    into place whole, so a file that exists is complete)."""
    try:
        with np.load(path) as f:
            return int(f["n_iter"])
    except (OSError, KeyError, ValueError, EOFError):
        return -1


class Killer:
    """Call ``action()`` (a kill) as soon as worker ``address`` runs a task of a solver pass
    (a key containing one of ``match``: a group of row blocks, or a latent range's pass).

    Started from the fit's ``iteration`` callback, so the kill lands inside a later pass.
    """

    def __init__(self, client, address, action, match=("fit_sums", "advance_range")):
        self.client, self.address, self.action, self.match = client, address, action, match
        self.done = threading.Event()
        self.info = {}
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                busy = self.client.processing(workers=[self.address]).get(self.address) or []
                hits = [k for k in busy if any(m in str(k) for m in self.match)]
                if hits:
                    self.action()
                    self.info.update(keys=hits, at=time.monotonic())
                    return
                time.sleep(0.002)
        finally:
            self.done.set()
