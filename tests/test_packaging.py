"""A clean clone installs with ``pip install .`` and fits with no compiler, torch or pandas.

The repository is cloned (committed files only, as a user gets them) into a fresh virtual
environment's reach and installed without extras, the C kernel being compiled by that
install. Then ``probe-dask fit`` runs on a small synthetic run with ``CC`` unset and
nothing but the environment's own ``bin`` on ``PATH`` (so no C compiler can be found): it
must report the C kernel on its workers, load the library from the installed package, and
leave torch (not installed) and pandas (installed, as bokeh needs it, but unused) out of
the driver. The same clone installed with ``pip install -e .`` loads the library built in
its source tree. Slow: the install resolves every dependency (about a minute).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, *, env=None, cwd=None, timeout=900):
    r = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def _bare_env(venv: Path) -> dict:
    """The environment of a user's shell with only the venv on PATH: no CC, no compiler."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PATH=str(venv / "bin"), PYTHONWARNINGS="ignore")
    for cc in ("cc", "gcc", "clang", "c99"):
        assert shutil.which(cc, path=env["PATH"]) is None, cc
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout")
    dest = tmp_path_factory.mktemp("clone") / "probe-dask"
    _run(["git", "clone", "-q", "--no-hardlinks", ROOT, dest], timeout=300)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory, clone):
    path = tmp_path_factory.mktemp("venv") / "env"
    # The base interpreter, not this venv's: the new one must see none of these packages.
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", path], timeout=300)
    _run([path / "bin" / "python", "-m", "pip", "install", "-q", clone])
    return path


DRIVER = """
    import atexit, json, runpy, sys
    out, argv = sys.argv[1], sys.argv[2:]
    def report():
        from probe_dask.kernels import ckernel
        with open(out, "w") as fh:
            json.dump({"library": str(ckernel.library_path()),
                       "loaded": sorted(m for m in ("torch", "pandas", "xarray", "triton")
                                        if m in sys.modules)}, fh)
    atexit.register(report)  # also on the CLI's sys.exit
    sys.argv = ["probe-dask", *argv]
    runpy.run_module("probe_dask", run_name="__main__")
"""


def test_clean_clone_installs_and_fits_without_a_compiler(clone, venv, tiny_run, tmp_path):
    py = venv / "bin" / "python"
    env = _bare_env(venv)
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                env=env).stdout.strip()
    missing = _run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'triton', "
                    "'xarray') if u.find_spec(m) is None])"], env=env).stdout.strip()
    assert missing == "['torch', 'triton', 'xarray']", missing  # no extras were installed

    run = tmp_path / "run-copy"
    shutil.copytree(tiny_run.root, run)
    report = tmp_path / "driver.json"
    proc = subprocess.run(
        [py, "-c", textwrap.dedent(DRIVER), report, "fit", "--run", run / "run",
         "--train-shards", run / "shards" / tiny_run.train_id,
         "--test-shards", run / "shards" / tiny_run.test_id,
         "--workers", "1", "--max-iter", "20", "--no-telemetry"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "C kernel on cpu" in proc.stderr, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    library = Path(got["library"])
    assert library.parent == Path(site) / "probe_dask" / "kernels" / "ckernel", got
    assert library.name.startswith("_fused_"), got
    assert got["loaded"] == [], got

    # Without the [analysis] extra a reader says which extra it needs, in one line.
    r = subprocess.run([py, "-c", "from probe_dask import load_results; load_results("
                        f"results_dir={str(run / 'run' / 'inference' / tiny_run.test_id)!r})"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "pip install 'probe-dask[analysis]'" in r.stderr, r.stderr[-2000:]

    # An editable install of the same clone builds the library into its source tree.
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "-e", clone])
    where = _run([py, "-c", "from probe_dask.kernels import ckernel; "
                  "print(ckernel.available(), ckernel.library_path())"], env=env, cwd=tmp_path)
    ok, path = where.stdout.split()
    assert ok == "True" and Path(path).parent == clone / "src/probe_dask/kernels/ckernel", where.stdout
