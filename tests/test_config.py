"""probe-dask's configuration: packaged defaults under every user setting, one clear error."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dask
import pytest

from probe_dask import config
from probe_dask.errors import ProbeDaskError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_config(clean_dask_config):
    yield


def test_defaults_come_from_the_packaged_yaml():
    assert config.get("probe-dask.cluster.wait-timeout") == "300s"
    assert config.get("probe-dask.kernels.ckernel") is True
    assert config.get("probe-dask.slurm.partition") is None  # set to null: no error
    assert config.get("distributed.worker.memory.target") == 0.6  # Dask's own, not copied


def test_missing_key_is_one_error_naming_it():
    with pytest.raises(ProbeDaskError, match=r"'probe-dask.kernels.nope' is not set.*probe-dask.yaml"):
        config.get("probe-dask.kernels.nope")


def test_user_settings_win_over_the_defaults():
    with dask.config.set({"probe-dask.slurm.partition": "gpu"}):
        assert config.get("probe-dask.slurm.partition") == "gpu"
    # DASK_* variables (collected again on refresh), underscores or dashes alike
    dask.config.refresh(env={"DASK_PROBE_DASK__KERNELS__GPU_RESIDENT_FRACTION": "0.25",
                             "DASK_PROBE_DASK__SLURM__INTERFACE": "ib0"})
    assert config.get("probe-dask.kernels.gpu-resident-fraction") == 0.25
    assert config.get("probe-dask.slurm.interface") == "ib0"
    assert config.get("probe-dask.cluster.wait-timeout") == "300s"  # defaults survive refresh


@pytest.mark.slow
def test_built_wheel_carries_the_top_level_jobqueue_yaml(tmp_path):
    # The package's jobqueue.yaml is a link in the source tree; the wheel holds the file.
    for name in ("pyproject.toml", "README.md", "jobqueue.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src" / "probe_dask", tmp_path / "src" / "probe_dask", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    assert (tmp_path / "src" / "probe_dask" / "jobqueue.yaml").is_symlink()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("probe_dask-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("probe_dask/jobqueue.yaml") == (ROOT / "jobqueue.yaml").read_bytes()
        assert z.read("probe_dask/probe-dask.yaml") == (
            ROOT / "src" / "probe_dask" / "probe-dask.yaml").read_bytes()
