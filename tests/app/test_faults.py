"""Faults injected for real: workers and the driver SIGKILLed mid-fit, a read-only output.

- A worker process of a LocalCluster is SIGKILLed while it runs a range of a solver pass:
  the nanny restarts it, the scheduler recomputes the ranges it held (their events kept in
  memory, or read from the latent-major layout on disk), and the fit ends with exactly the
  results of an undisturbed run.
- ``probe-dask fit`` (a subprocess, with its LocalCluster) is SIGKILLed after its second
  checkpoint: no result file exists; the same command resumes from the checkpoint and
  ends with exactly the results of an undisturbed run; ``--restart`` ignores a checkpoint;
  a checkpoint of other input is refused.
- The output folder is read-only: the CLI says so in one line, in seconds, before any
  cluster starts.
"""

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dask
import numpy as np
import psutil
import pytest
from distributed import Client, LocalCluster

from probe_dask.app.job import (
    CHECKPOINT_NAME,
    CLASSES_NAME,
    METRICS_NAME,
    open_inputs,
    run_job,
)
from probe_dask.io.store import open_csr
from probe_dask.testing.faults import Killer, assert_same_results, checkpoint_pass
from probe_dask.testing.runner import assert_one_error_line, popen_cli, run_cli
from probe_dask.testing.synthetic import make_run

BLOCK_NNZ = 20_000  # about 8 train blocks: passes of several tasks, each a few tens of ms
MAX_ITER = 200  # the fit stops when every pair has converged, well before this


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """About 3000 train rows x 512 latents, 24 classes, 150k non-zeros."""
    return make_run(tmp_path_factory.mktemp("faults-run"), n_train_examples=24, n_test_examples=8,
                    tokens_per_example=128, d_sae=512, n_classes=24, mean_nnz_per_row=48, seed=5,
                    n_planted=6)


# ------------------------------------------------------------------------ worker SIGKILL


def _job(client, run, out, callbacks=None):
    inputs = open_inputs(run.run_dir, run.train_shard, run.test_shard, block_nnz=BLOCK_NNZ,
                         out_dirs=[out / "train", out / "test"])
    return run_job(client, inputs, max_iter=MAX_ITER, callbacks=callbacks, log=lambda m: None)


@pytest.mark.parametrize("persist", [True, False], ids=["in-memory", "from-disk"])
def test_worker_sigkill_mid_pass_same_results(run, tmp_path, capsys, persist):
    with dask.config.set({"probe-dask.engine.persist": persist}), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="2GB") as cluster, Client(cluster) as client:
        ref = _job(client, run, tmp_path / "ref")
        ref.fitter.blocks_ = None  # release its persisted blocks: the next fit starts cold
        pids = client.run(os.getpid)
        address, pid = sorted(pids.items())[0]
        killer = Killer(client, address, lambda: os.kill(pid, signal.SIGKILL))
        seen = []

        def on_event(event, info):
            if event == "iteration":
                seen.append(info["n_iter"])
                if info["n_iter"] == 2:
                    killer.start()  # kills during pass 3 (or a later one)

        t0 = time.perf_counter()
        got = _job(client, run, tmp_path / "got", callbacks=[on_event])
        seconds = time.perf_counter() - t0
        assert killer.done.wait(10) and killer.info, "the worker was never seen running a pass"
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        client.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
        new_pids = set(client.run(os.getpid).values())
        assert pid not in new_pids and len(new_pids) == 2
        passes_after_kill = got.n_iter - 2
        with capsys.disabled():
            print(f"\nworker {address} (pid {pid}) SIGKILLed while running "
                  f"{killer.info['keys'][0]!r}; fit went on for {passes_after_kill} more passes; "
                  f"{seconds:.1f} s (undisturbed {sum(ref.seconds.get(k, 0) for k in ('fit', 'evaluate')):.1f} s fit+evaluate)")
    # ranges were lost, then recomputed
    assert got.fitter.persisted_ is ref.fitter.persisted_ is persist
    assert got.n_iter == ref.n_iter and passes_after_kill >= 1
    np.testing.assert_array_equal(got.fitter.coef_, ref.fitter.coef_)
    np.testing.assert_array_equal(got.fitter.intercept_, ref.fitter.intercept_)
    np.testing.assert_array_equal(got.fitter.converged_, ref.fitter.converged_)
    assert_same_results([tmp_path / "ref" / s for s in ("train", "test")],
                        [tmp_path / "got" / s for s in ("train", "test")])


# ------------------------------------------------------------------------ driver SIGKILL


def copy_run(run, dest) -> dict:
    shutil.copytree(run.root, dest)
    r = {"run": dest / "run", "train": dest / "shards" / run.train_id,
         "test": dest / "shards" / run.test_id}
    r["out"] = [r["run"] / "inference" / run.train_id, r["run"] / "inference" / run.test_id]
    r["args"] = ["fit", "--run", str(r["run"]), "--train-shards", str(r["train"]),
                 "--test-shards", str(r["test"]), "--workers", "1", "--threads", "1",
                 "--max-iter", str(MAX_ITER), "--block-nnz", str(BLOCK_NNZ)]
    return r


def kill_tree(proc: subprocess.Popen) -> list:
    """SIGKILL the process group of ``proc`` (driver, nannies, workers); return the pids."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    os.killpg(proc.pid, signal.SIGKILL)
    for p in procs:  # anything that left the group
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(10)
    gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"still alive after SIGKILL: {alive}"
    return [p.pid for p in procs]


def no_results(r) -> None:
    for d in r["out"]:
        for name in (METRICS_NAME, CLASSES_NAME):
            assert not (d / name).exists(), f"{d / name} exists after the driver was killed"
        assert not [p for p in d.iterdir() if p.name.startswith(f".{METRICS_NAME}")]


@pytest.mark.slow
@pytest.mark.parametrize("persist", ["true", "false"], ids=["in-memory", "from-disk"])
def test_driver_sigkill_resume_restart_and_stale_checkpoint(run, tmp_path, capsys, persist,
                                                            monkeypatch):
    monkeypatch.setenv("DASK_PROBE_DASK__ENGINE__PERSIST", persist)  # the CLI's processes
    report = []
    # 1. SIGKILL the driver (and its cluster) once its checkpoint holds pass 2 or later
    b = copy_run(run, tmp_path / "b")
    ckpt = b["out"][0] / CHECKPOINT_NAME
    with open(tmp_path / "b-stderr.txt", "w") as err:
        proc = popen_cli(*b["args"], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 180
        while checkpoint_pass(ckpt) < 2:
            assert proc.poll() is None, "the run ended before its second checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.005)
        killed_at = checkpoint_pass(ckpt)
        pids = kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL
    report.append(f"driver killed at checkpoint pass {killed_at}; {len(pids)} processes "
                  "(the driver and its LocalCluster) killed")
    no_results(b)
    after_kill = checkpoint_pass(ckpt)
    assert after_kill >= killed_at
    saved = tmp_path / "b-checkpoint.npz"
    shutil.copy2(ckpt, saved)

    # 2. the same command resumes
    t0 = time.perf_counter()
    rb = run_cli(*b["args"])
    resumed = time.perf_counter() - t0
    assert rb.returncode == 0, rb.stderr[-3000:]
    assert f"resuming from checkpoint at pass {after_kill}" in rb.stderr
    assert not ckpt.exists()  # results are final: the checkpoint is gone
    passes = int(rb.stdout.split("solver passes: ")[1].split(";")[0])
    assert after_kill < passes, "the kill must come before the fit's last pass"
    report.append(f"resumed from pass {after_kill} to {passes}: {resumed:.1f} s")

    # 3. a checkpoint of other input (another copy's files) is refused, nothing written
    c = copy_run(run, tmp_path / "c")
    shutil.copy2(saved, c["out"][0] / CHECKPOINT_NAME)
    rc = run_cli(*c["args"])
    lines = [ln for ln in rc.stderr.splitlines() if ln.startswith("probe-dask: error")]
    assert rc.returncode == 2, rc.stderr[-3000:]
    assert len(lines) == 1 and "checkpoint is for other input" in lines[0]
    assert str(c["out"][0] / CHECKPOINT_NAME) in lines[0] and "--restart" in lines[0]
    assert "input.train" in lines[0]  # says what differs
    assert (c["out"][0] / CHECKPOINT_NAME).exists()  # the user's state is not destroyed
    no_results(c)
    report.append(f"stale checkpoint refused: {lines[0]}")

    # 4. --restart ignores it and fits from scratch: an undisturbed run, same results
    t0 = time.perf_counter()
    rr = run_cli(*c["args"], "--restart")
    undisturbed = time.perf_counter() - t0
    assert rr.returncode == 0, rr.stderr[-3000:]
    assert "resuming" not in rr.stderr
    assert f"solver passes: {passes};" in rr.stdout
    assert_same_results(c["out"], b["out"])
    report.append(f"--restart: from scratch, {passes} passes, {undisturbed:.1f} s; "
                  "the resumed run's results are identical")
    with capsys.disabled():
        print("\n" + "\n".join(report))


# ------------------------------------------------------------------------ read-only output


def _readonly_wrapper(folder: Path):
    """A command prefix under which ``folder`` cannot be written, and an undo function.

    Non-root: chmod a-w. Root (chmod does not stop root): a read-only bind mount in a
    private mount namespace (``unshare -m``), else the immutable attribute (``chattr +i``).
    """
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return [], lambda: os.chmod(folder, 0o755)
    q = shlex.quote(str(folder))
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            f"mount --bind -o ro {q} {q} && ! touch {q}/.w 2>/dev/null"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                str(folder)], lambda: None
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return [], lambda: subprocess.run(["chattr", "-i", str(folder)], check=False)
    pytest.skip("running as root without unshare -m or chattr +i: cannot make a folder read-only")


@pytest.mark.parametrize("ingested", [True, False], ids=["store-ingested", "not-ingested"])
def test_readonly_output_fails_before_any_cluster(run, tmp_path, ingested):
    r = copy_run(run, tmp_path / "ro")
    if ingested:  # the store is already there: the output check is what must fail
        open_csr(r["out"][0] / "token_acts.npz")
    open_csr(r["out"][1] / "token_acts.npz")
    folder = r["out"][0]
    before = sorted(p.name for p in folder.iterdir())
    prefix, undo = _readonly_wrapper(folder)
    try:
        p = run_cli(*r["args"], prefix=prefix, timeout=120)
    finally:
        undo()
    print(f"read-only output ({'store ingested' if ingested else 'not ingested'}): exit "
          f"{p.returncode} in {p.seconds:.1f} s: {p.stderr.strip()}")
    line = assert_one_error_line(p)
    assert "dashboard" not in p.stderr  # no cluster was started
    assert p.seconds < 30
    if ingested:
        assert f"{folder}: output folder is not writable" in line
    else:
        assert f"{folder}/.probe-dask-store: cache_dir: found not writable" in line
        assert "--cache-dir" in line
    assert sorted(p.name for p in folder.iterdir()) == before
