"""The job's results commit as one set (in-process ``run_job`` on a LocalCluster, and the
CLI): a failure at any file leaves the previous set whole; a folder in the way is bad input
found before any cluster starts; a full disk is one line naming the path, exit 2."""

import errno
import re
import shutil
import subprocess

import pytest

from probe_dask.app.job import (
    CHECKPOINT_NAME,
    CLASSES_NAME,
    METRICS_NAME,
    open_inputs,
    run_job,
)
from probe_dask.errors import MachineError
from probe_dask.io import resultset
from probe_dask.io.store import open_csr
from probe_dask.testing.runner import assert_one_error_line, run_cli

TEMPORARY = re.compile(r"\.(tmp|bak)$|\.(tmp|old)-")


def _results(out_dirs) -> dict:
    """The result files (and any temporary) of both folders: name -> bytes."""
    got = {}
    for d in out_dirs:
        for p in sorted(d.iterdir()):
            if p.name in (METRICS_NAME, CLASSES_NAME) or TEMPORARY.search(p.name):
                got[str(p)] = p.read_bytes()
    return got


def _job(client, run, out_dirs, ridge):
    inputs = open_inputs(run.run_dir, run.train_shard, run.test_shard, out_dirs=out_dirs)
    return run_job(client, inputs, ridge=ridge, max_iter=50, log=lambda m: None)


def test_failure_at_each_file_keeps_the_previous_set(local_client, tiny_run, tmp_path, monkeypatch):
    out_dirs = [tmp_path / "train", tmp_path / "test"]
    _job(local_client, tiny_run, out_dirs, ridge=0.5)
    old = _results(out_dirs)
    assert len(old) == 4
    real_replace, real_stage = resultset._replace, resultset.ResultSet.stage
    for mode in ("rename", "disk full"):
        for k in range(4):
            calls = []

            def failing_replace(src, dst, calls=calls, k=k):
                calls.append(dst)
                if len(calls) == k + 1:
                    raise OSError(errno.EIO, "Input/output error")
                real_replace(src, dst)

            def full_stage(self, target, write, calls=calls, k=k):
                calls.append(target)
                if len(calls) == k + 1:
                    def write(tmp):
                        with open(tmp, "wb") as f:
                            f.write(b"half")
                        raise OSError(errno.ENOSPC, "No space left on device")
                return real_stage(self, target, write)

            if mode == "rename":
                monkeypatch.setattr(resultset, "_replace", failing_replace)
            else:
                monkeypatch.setattr(resultset.ResultSet, "stage", full_stage)
            with pytest.raises(MachineError) as info:
                _job(local_client, tiny_run, out_dirs, ridge=1e-8)
            monkeypatch.undo()
            line = str(info.value)
            reason = "input/output error" if mode == "rename" else "no space left on device"
            assert line.startswith(f"{calls[k]}: {reason}"), line
            assert _results(out_dirs) == old, f"{mode} at file {k}: the set changed"
    _job(local_client, tiny_run, out_dirs, ridge=1e-8)  # and then the new set, whole
    new = _results(out_dirs)
    assert sorted(new) == sorted(old) and all(new[k] != old[k] for k in old)
    assert not (out_dirs[0] / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_folder_in_the_way_is_bad_input_before_any_cluster(tiny_run, tmp_path, which):
    shutil.copytree(tiny_run.root, tmp_path / "r")
    run_dir, shards = tmp_path / "r" / "run", tmp_path / "r" / "shards"
    outs = [run_dir / "inference" / s for s in (tiny_run.train_id, tiny_run.test_id)]
    blocked = outs[which % 2] / (METRICS_NAME, CLASSES_NAME)[which // 2]
    blocked.mkdir(parents=True)
    p = run_cli("fit", "--run", run_dir, "--train-shards", shards / tiny_run.train_id,
                "--test-shards", shards / tiny_run.test_id, "--workers", "1", "--no-telemetry",
                "--overwrite", timeout=120)
    line = assert_one_error_line(p, f"{blocked}: found a folder; expected a regular file or nothing")
    assert "dashboard" not in p.stderr and p.seconds < 60, line
    for d in outs:
        for name in (METRICS_NAME, CLASSES_NAME):
            assert (d / name).is_dir() if d / name == blocked else not (d / name).exists()


def test_full_disk_during_ingest_names_the_store(tiny_run, tmp_path):
    shutil.copytree(tiny_run.root, tmp_path / "r")
    for p in (tmp_path / "r").rglob(".probe-dask-store"):
        shutil.rmtree(p)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        run_dir, shards = tmp_path / "r" / "run", tmp_path / "r" / "shards"
        p = run_cli("fit", "--run", run_dir, "--train-shards", shards / tiny_run.train_id,
                    "--test-shards", shards / tiny_run.test_id, "--workers", "1",
                    "--no-telemetry", "--cache-dir", small, timeout=120)
        line = assert_one_error_line(p, f"{small}/", ": no space left on device (while ingesting "
                                     "token_acts.npz; free space there or pass --cache-dir DIR)")
        assert "dashboard" not in p.stderr, line
        assert [q.name for q in small.iterdir()] == []  # the partial store is gone
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _pages(folder) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def test_a_disk_too_small_for_the_layout_is_one_line_before_the_fit(tiny_run, tmp_path,
                                                                     small_disk):
    """Ranges read from disk (``persist: false``), on a cache folder that holds the store
    but not the latent-major layout: exit 2 and one line naming the folder and the bytes,
    before any pass, and no partial layout left."""
    shutil.copytree(tiny_run.root, tmp_path / "r")
    for p in (tmp_path / "r").rglob(".probe-dask-store"):
        shutil.rmtree(p)
    run_dir, shards = tmp_path / "r" / "run", tmp_path / "r" / "shards"
    args = ("fit", "--run", run_dir, "--train-shards", shards / tiny_run.train_id,
            "--test-shards", shards / tiny_run.test_id, "--workers", "1", "--no-telemetry", "--quiet")
    env = {"DASK_PROBE_DASK__ENGINE__PERSIST": "False"}
    roomy = tmp_path / "roomy"  # the stores' size, measured on a first ingest
    for npz in run_dir.rglob("token_acts.npz"):
        open_csr(npz, cache_dir=roomy)
    stores = _pages(roomy)
    assert stores > 0
    small = small_disk(stores + 16 * 4096)
    p = run_cli(*args, "--cache-dir", small, timeout=180, env=env)
    # where a Slurm runs (CI), --cluster local on its node is warned about first, in a line
    p.stderr = "\n".join(ln for ln in p.stderr.splitlines()
                         if not ln.startswith("WARNING: --cluster local starts workers"))
    line = assert_one_error_line(p, f"{small}/", ": no space left on device (while building "
                                 "the latent-major layout of ", " MB are free)")
    assert not list(run_dir.rglob("probe1d_*")), line  # stopped before any result
    assert not list(small.rglob("latent-major*")) and not list(small.rglob(".tmp*"))
