"""SIGTERM and SIGINT stop a run gracefully (real processes): the last whole checkpoint is
kept, this run's temporaries are removed, the cluster's processes end, the exit status is
128 + the signal, one line says how to resume, and the rerun ends exactly as an undisturbed
run. Temporaries left by dead runs (their PID gone) are removed by the next run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import scipy.sparse

from probe_dask.app.job import CHECKPOINT_NAME, CLASSES_NAME, METRICS_NAME, open_inputs
from probe_dask.io.tempfiles import HOST
from probe_dask.testing.faults import checkpoint_pass
from probe_dask.testing.runner import popen_cli, run_cli
from probe_dask.testing.synthetic import make_run

BLOCK_NNZ = 20_000
MAX_ITER = 200
TEMPORARY = re.compile(r"\.(tmp|bak)$|\.(tmp|old)-")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("signals-run"), n_train_examples=24, n_test_examples=8,
                    tokens_per_example=128, d_sae=512, n_classes=24, mean_nnz_per_row=48, seed=5,
                    n_planted=6)


def copy_run(run, dest) -> dict:
    shutil.copytree(run.root, dest)
    r = {"root": dest, "run": dest / "run", "train": dest / "shards" / run.train_id,
         "test": dest / "shards" / run.test_id}
    r["out"] = [r["run"] / "inference" / run.train_id, r["run"] / "inference" / run.test_id]
    r["args"] = ["fit", "--run", r["run"], "--train-shards", r["train"], "--test-shards", r["test"],
                 "--workers", "1", "--threads", "1", "--max-iter", MAX_ITER,
                 "--block-nnz", BLOCK_NNZ, "--no-telemetry"]
    return r


def assert_same_results(dirs_a, dirs_b):
    """Every array of both splits' metrics and the class tables are identical (bitwise)."""
    for a, b in zip(dirs_a, dirs_b):
        with np.load(a / METRICS_NAME) as fa, np.load(b / METRICS_NAME) as fb:
            assert sorted(fa.files) == sorted(fb.files)
            for k in fa.files:
                np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
        ta, tb = (json.loads((d / CLASSES_NAME).read_text())["classes"] for d in (a, b))
        assert ta == tb


def temporaries(root) -> list:
    return sorted(str(p) for p in root.rglob("*") if TEMPORARY.search(p.name))


def _stop_during_fit(r, sig, tmp_path):
    """Start the fit, send ``sig`` after its first checkpoint; return (proc, stderr, pass, children)."""
    ckpt = r["out"][0] / CHECKPOINT_NAME
    err_path = tmp_path / f"stderr-{sig.name}.txt"
    with open(err_path, "w") as err:
        proc = popen_cli(*r["args"], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while checkpoint_pass(ckpt) < 1:
                assert proc.poll() is None, err_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 180 s"
                time.sleep(0.005)
            children = psutil.Process(proc.pid).children(recursive=True)
            assert children, "the driver has no cluster processes"
            os.kill(proc.pid, sig)
            proc.wait(90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(children, timeout=30)
    return proc, err_path.read_text(), checkpoint_pass(ckpt), alive


def _one_stop_line(stderr, name):
    lines = [ln for ln in stderr.splitlines() if ln.startswith("probe-dask:")]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"probe-dask: stopped by {name}"), lines[0]
    return lines[0]


def test_sigterm_during_fit_keeps_checkpoint_and_resumes_identically(run, tmp_path, capsys):
    ref = copy_run(run, tmp_path / "ref")
    undisturbed = run_cli(*ref["args"])
    assert undisturbed.returncode == 0, undisturbed.stderr[-3000:]

    r = copy_run(run, tmp_path / "term")
    proc, stderr, at, alive = _stop_during_fit(r, signal.SIGTERM, tmp_path)
    assert proc.returncode == 143, stderr[-3000:]
    line = _one_stop_line(stderr, "SIGTERM")
    assert at >= 1 and f"rerun the same command to resume from pass {at} " in line, line
    assert not alive, f"cluster processes left after the driver ended: {alive}"
    assert temporaries(r["root"]) == []
    for d in r["out"]:
        assert not (d / "probe1d_metrics.npz").exists()

    again = run_cli(*r["args"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint at pass {at}" in again.stderr
    assert_same_results(ref["out"], r["out"])
    assert temporaries(r["root"]) == []
    with capsys.disabled():
        print(f"\nSIGTERM after checkpoint {at}: exit {proc.returncode}; {line}")


def test_sigint_during_fit_exits_130(run, tmp_path):
    r = copy_run(run, tmp_path / "int")
    proc, stderr, at, alive = _stop_during_fit(r, signal.SIGINT, tmp_path)
    assert proc.returncode == 130, stderr[-3000:]
    line = _one_stop_line(stderr, "SIGINT")
    assert f"rerun the same command to resume from pass {at} " in line, line
    assert not alive
    assert temporaries(r["root"]) == []


def test_sigterm_during_ingest_leaves_no_temporary(run, tmp_path):
    r = copy_run(run, tmp_path / "ingest")
    npz = r["out"][0] / "token_acts.npz"
    for p in r["out"][0].glob(".probe-dask-store*"):
        shutil.rmtree(p)
    # A large compressed shard (the ingest streams it for seconds); rows need not match:
    # the stop comes before the row check.
    rng = np.random.default_rng(0)
    n_rows, n_cols, nnz = 100_000, 512, 15_000_000
    indptr = np.linspace(0, nnz, n_rows + 1).astype(np.int64)
    m = scipy.sparse.csr_matrix((rng.random(nnz, dtype=np.float32),
                                 rng.integers(0, n_cols, nnz, dtype=np.int32), indptr),
                                shape=(n_rows, n_cols))
    scipy.sparse.save_npz(npz, m, compressed=True)
    del m
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = popen_cli(*r["args"], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not list(r["out"][0].glob(".probe-dask-store.tmp-*")):
                assert proc.poll() is None, err_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no ingest within 120 s"
                time.sleep(0.002)
            time.sleep(0.2)
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stderr = err_path.read_text()
    assert proc.returncode == 143, stderr[-3000:]
    line = _one_stop_line(stderr, "SIGTERM")
    assert "before the first checkpoint; rerun the same command to start again" in line
    assert temporaries(r["root"]) == []
    assert not (r["out"][0] / ".probe-dask-store").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_runs_are_removed(run, tmp_path):
    r = copy_run(run, tmp_path / "stale")
    dead, live = _dead_pid(), subprocess.Popen(["sleep", "60"])
    try:
        train = r["out"][0]
        stale = [train / f".{CHECKPOINT_NAME}.{HOST}.{dead}-0123abcd.tmp",
                 r["out"][1] / f".probe1d_metrics.npz.{HOST}.{dead}-0123abcd.tmp",
                 train / f".probe1d_classes.json.{HOST}.{dead}-0123abcd.bak",
                 train / f".probe-dask-store.tmp-{HOST}.{dead}-0123abcd",
                 train / f".probe-dask-store.old-{HOST}.{dead}-0123abcd",
                 train / f".probe-dask-store.tmp-{dead}-0123abcd"]  # named by earlier versions
        kept = [train / f".{CHECKPOINT_NAME}.{HOST}.{live.pid}-0123abcd.tmp",  # a live run's
                train / f".probe-dask-store.tmp-{HOST}.{live.pid}-0123abcd",
                train / f".{CHECKPOINT_NAME}.otherhost.{dead}-0123abcd.tmp",  # another host's
                train / "notes.tmp"]  # not ours
        for p in stale + kept:
            if "store" in p.name:
                p.mkdir()
                (p / "data.f32").write_bytes(b"x")
            else:
                p.write_bytes(b"x")
        open_inputs(r["run"], r["train"], r["test"])
        assert [p for p in stale if p.exists()] == []
        assert [p for p in kept if not p.exists()] == []
    finally:
        live.kill()
        live.wait()
