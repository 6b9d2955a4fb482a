"""Shared pytest fixtures."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- slurm / browser / triton
# Tests marked @pytest.mark.slurm, @pytest.mark.browser or @pytest.mark.triton need a running
# Slurm, Debian's chromium or an importable triton (kernels run on CUDA, else on CPU under
# TRITON_INTERPRET=1). Without them they are skipped -- unless PROBE_DASK_REQUIRE_SLURM=1 /
# PROBE_DASK_REQUIRE_BROWSER=1 / PROBE_DASK_REQUIRE_TRITON=1, where a missing dependency
# FAILS the test (CI sets these so that a broken Slurm never turns into a silent skip).
# Start Slurm here with scripts/slurm/install.sh && scripts/slurm/start.sh.

CHROMIUM = "/usr/bin/chromium"


def _unavailable(reason: str, require_env: str):
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{reason} (and {require_env}=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm():
    """A working Slurm: ``sinfo`` answers. Returns ``{"partitions": [...]}``."""
    if shutil.which("sinfo") is None:
        _unavailable("Slurm not available: sinfo not on PATH", "PROBE_DASK_REQUIRE_SLURM")
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True,
                           timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"Slurm not available: sinfo failed: {exc}", "PROBE_DASK_REQUIRE_SLURM")
    if r.returncode != 0 or not r.stdout.strip():
        _unavailable(f"Slurm not available: sinfo exit {r.returncode}: "
                     f"{(r.stderr or r.stdout).strip()[-300:]}", "PROBE_DASK_REQUIRE_SLURM")
    return {"partitions": [line.split()[0].rstrip("*") for line in r.stdout.splitlines()]}


@pytest.fixture(scope="session")
def chromium():
    """Path of Debian's chromium (``/usr/bin/chromium``) for browser tests."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"browser not available: {CHROMIUM} missing", "PROBE_DASK_REQUIRE_BROWSER")
    return CHROMIUM


def use_triton_interpreter_without_cuda():
    """Set ``TRITON_INTERPRET=1`` when there is no CUDA device (unless already set).

    Must run before ``probe_dask.kernels.triton_backend`` is imported: triton reads it when it
    decorates the kernels."""
    if "TRITON_INTERPRET" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def triton_kernels():
    """``probe_dask.kernels.triton_backend``, runnable: on CUDA, else under the Triton interpreter."""
    use_triton_interpreter_without_cuda()
    from probe_dask.kernels import triton_backend as tk

    if not tk.available():
        _unavailable(f"triton not available: {tk.unavailable_reason()}",
                     "PROBE_DASK_REQUIRE_TRITON")
    return tk


@pytest.fixture(autouse=True)
def _marker_requirements(request):
    """Gate every test marked ``slurm`` / ``browser`` / ``triton`` on the fixtures above."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm")
    if request.node.get_closest_marker("browser") is not None:
        request.getfixturevalue("chromium")
    if request.node.get_closest_marker("triton") is not None:
        request.getfixturevalue("triton_kernels")


# --------------------------------------------------------------------------- disk
@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(nbytes)``: a folder on a real file system of ``nbytes`` (a tmpfs
    mounted for the test, unmounted after), for tests of what a full disk does. Skips
    where mounting is not allowed (needs root, as CI runs)."""
    mounts = []

    def mount(nbytes: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(nbytes)}", "tmpfs",
                            str(where)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {(r.stderr or r.stdout).strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def require_free_disk():
    """``require_free_disk(path, nbytes, what)``: skip, naming the bytes, when ``path``'s
    file system has less than ``nbytes`` free (a test of real-size files must not fill the
    machine's disk and fail for a reason that is not the code's)."""

    def require(path, nbytes: int, what: str) -> None:
        free = shutil.disk_usage(path).free
        if free < nbytes:
            pytest.skip(f"{what} needs {nbytes / 1e9:.1f} GB of disk at {path}; "
                        f"{free / 1e9:.1f} GB free")

    return require


# --------------------------------------------------------------------------- dask / data
@pytest.fixture(scope="session", autouse=True)
def _layouts_in_the_session_folder(tmp_path_factory):
    """Fits that read their ranges from disk build latent-major layouts under the session's
    temporary folder, not the system's (``probe-dask.engine.layout-dir``)."""
    import dask

    with dask.config.set({"probe-dask.engine.layout-dir": str(tmp_path_factory.mktemp("layouts"))}):
        yield


@pytest.fixture(scope="session")
def local_client():
    """A real ``distributed`` LocalCluster of 2 worker processes, 1 thread each."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="3GB") as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A small synthetic run in the users' layout (about 500 rows, 128 latents, 8 classes)."""
    from probe_dask.testing.synthetic import make_run

    return make_run(tmp_path_factory.mktemp("tiny-run"), n_train_examples=8, n_test_examples=4,
                    tokens_per_example=64, d_sae=128, n_classes=8, mean_nnz_per_row=32, seed=3,
                    n_planted=4)



@pytest.fixture
def clean_dask_config(monkeypatch):
    """Restore dask's config and defaults (and the yaml files probe_dask.cluster merged) after
    a test, and hide DASK_CONFIG so Slurm workers can only get it from their job script."""
    import copy

    import dask

    from probe_dask.cluster import profiles

    saved, saved_defaults = copy.deepcopy(dask.config.config), list(dask.config.defaults)
    monkeypatch.setattr(profiles, "_loaded", [])
    monkeypatch.delenv("DASK_CONFIG", raising=False)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)
    dask.config.defaults[:] = saved_defaults


@pytest.fixture
def small_cpu_profile(tmp_path):
    """``small_cpu_profile(lifetime, walltime)``: keywords of the packaged "cpu" Slurm profile
    shrunk to this machine (1 core, 1 GiB, logs in ``tmp_path``), its worker ``--lifetime``
    kept inside the walltime."""
    from probe_dask.cluster import slurm_profile

    root_yaml = Path(__file__).resolve().parents[1] / "jobqueue.yaml"

    def profile(lifetime="12m", walltime="00:20:00", **extra):
        _, prof = slurm_profile("cpu", jobqueue_config=root_yaml)
        args = list(prof["worker_extra_args"])
        args[args.index("--lifetime") + 1] = lifetime
        args[args.index("--lifetime-stagger") + 1] = "1m"
        return dict(cores=1, memory="1GiB", walltime=walltime, worker_extra_args=args,
                    log_directory=str(tmp_path), **extra)

    return profile
