"""The C kernel cache cannot be planted: a library in a folder others can write is never loaded.

A real compiler builds an impostor library (the kernel's ABI, and a constructor that writes
a marker file when anything loads it) and plants it in a mode-0777 cache folder under
every name the loader would try (:func:`ckernel.library_name` of each build variant).
The loader must refuse the folder, build the real kernel into a private folder, and say
why; the workers of a real local cluster must run the fit with the C kernel while no
process maps a file of the planted folder (``/proc/<pid>/maps``). A trusted folder with a
group/world-writable library file is rebuilt, not loaded.
"""

import os
import shutil
import stat
import subprocess

import dask
import numpy as np
import pytest

from probe_dask.kernels import ckernel

pytestmark = pytest.mark.timeout(300)

IMPOSTOR = r"""
#include <stdio.h>
#include <stdint.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "a"); if (f) { fputs("loaded\n", f); fclose(f); }
}
int pd_abi_version(void) { return 1; }
int pd_fit_sums(int64_t a, int64_t b, void *c, void *d, void *e, void *f, void *g, int64_t h,
                void *i) { return 0; }
int pd_eval_sums(int64_t a, int64_t b, void *c, void *d, void *e, void *f, void *g, void *h,
                 void *i, void *j, int64_t k, void *l) { return 0; }
"""


@pytest.fixture
def compiler():
    cc = ckernel._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    return cc


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader that has loaded nothing yet (state restored afterwards)."""
    monkeypatch.setattr(ckernel, "_state", {})
    yield


def plant(cc, tmp_path):
    """A 0777 cache with the impostor under every name the loader tries; (cache root, marker)."""
    root = tmp_path / "shared-cache"
    folder = root / "ckernel"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    marker = tmp_path / "impostor-was-loaded"
    src = tmp_path / "impostor.c"
    src.write_text(IMPOSTOR)
    lib = tmp_path / "impostor.so"
    subprocess.run(cc.split() + ["-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(lib),
                                 str(src)], check=True, capture_output=True)
    names = {ckernel.library_name(cc, ckernel.BASE_FLAGS + extra) for extra in ckernel.VARIANTS}
    for name in names:
        shutil.copy(lib, folder / name)
        os.chmod(folder / name, 0o777)
    assert len(names) == len(ckernel.VARIANTS)
    return root, folder, marker


def maps_naming(folder) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line.strip() for line in f if str(folder) in line]


def test_planted_world_writable_cache_is_never_loaded(compiler, fresh_loader, tmp_path, caplog):
    root, folder, marker = plant(compiler, tmp_path)
    with dask.config.set({"probe-dask.kernels.cache-dir": str(root)}):
        assert ckernel.available(), ckernel.unavailable_reason()
        path = ckernel.library_path()
    assert folder not in path.parents
    assert not marker.exists(), "the planted library was loaded"
    assert maps_naming(folder) == []
    note = ckernel.cache_note()
    assert "not used" in note and str(folder) in note and "777" in note
    assert any("not used" in r.getMessage() for r in caplog.records)
    st = path.parent.stat()
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert path.name in {ckernel.library_name(compiler, ckernel.BASE_FLAGS + extra)
                         for extra in ckernel.VARIANTS}


def test_writable_library_in_a_trusted_cache_is_rebuilt(compiler, fresh_loader, tmp_path):
    root = tmp_path / "mine"
    folder = root / "ckernel"
    folder.mkdir(parents=True, mode=0o700)
    _, _, marker = plant(compiler, tmp_path)
    name = ckernel.library_name(compiler, ckernel.BASE_FLAGS + ckernel.VARIANTS[0])
    shutil.copy(tmp_path / "impostor.so", folder / name)
    os.chmod(folder / name, 0o666)  # in my folder, but anyone could have rewritten it
    with dask.config.set({"probe-dask.kernels.cache-dir": str(root)}):
        assert ckernel.available(), ckernel.unavailable_reason()
        assert ckernel.library_path().parent == folder and ckernel.cache_note() == ""
    assert not marker.exists()
    assert stat.S_IMODE((folder / name).stat().st_mode) == 0o700


def test_cluster_fit_with_planted_cache_uses_the_real_kernel(compiler, fresh_loader, tmp_path,
                                                             tiny_run, capsys):
    from probe_dask.app.job import open_inputs, run_job
    from probe_dask.cluster import make_cluster

    root, folder, marker = plant(compiler, tmp_path)

    def worker_view():
        from probe_dask.kernels import ckernel as ck

        with open("/proc/self/maps") as f:
            named = [line for line in f if str(folder) in line]
        return os.getpid(), str(ck.library_path()), ck.cache_note(), named

    with dask.config.set({"probe-dask.kernels.cache-dir": str(root)}):
        inputs = open_inputs(tiny_run.run_dir, tiny_run.train_shard, tiny_run.test_shard,
                             out_dirs=[tmp_path / "train", tmp_path / "test"])
        lines = []
        with make_cluster("local", n_workers=2, threads_per_worker=1) as (cluster, client):
            result = run_job(client, inputs, max_iter=30, log=lines.append, device="cpu",
                             backend="c")
            views = client.run(worker_view)
            worker_pids = [pid for pid, *_ in views.values()]
            outside = {}
            for pid in worker_pids:  # and as seen from outside each worker process
                with open(f"/proc/{pid}/maps") as f:
                    outside[pid] = [line for line in f if str(folder) in line]
    with capsys.disabled():
        print(f"\nworkers {worker_pids}: kernels "
              f"{sorted({lib for _, lib, _, _ in views.values()})}; note: "
              f"{next(iter(views.values()))[2][:120]}")
    assert len(views) == 2
    for pid, lib, note, named in views.values():
        assert lib != "None" and str(folder) not in lib and named == [] and outside[pid] == []
        assert "not used" in note
    assert not marker.exists(), "the planted library was loaded by a worker"
    with np.load(result.train_metrics) as f:
        assert np.isfinite(f["loss"]).all() and (f["tp"] + f["fn"]).sum() > 0
    assert any("C kernel" in line for line in lines), lines
