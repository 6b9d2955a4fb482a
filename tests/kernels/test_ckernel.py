"""The C kernel as installed: built variants, the variant chosen for this CPU, the config key.

Each variant's numbers are checked against a dense reference in ``test_kernels.py``; here,
which library is loaded and why. The choice for this CPU is checked against the kernel's
own feature probe and, independently, against the flags the Linux kernel lists in
``/proc/cpuinfo``. Settings that change the loaded library run in a fresh interpreter,
since the library is loaded once per process.
"""

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask import kernels as K
from probe_dask.kernels import ckernel

SRC = Path(ckernel.__file__).resolve().parents[3]
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _python(code: str, *, path: str | None = None, unset=(), **env_extra) -> str:
    """Run ``code`` in a fresh interpreter; returns its stdout, fails on a non-zero exit."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DASK_PROBE_DASK__") and k not in unset}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_generic_variant_is_built_portable():
    lib = ckernel.load_variant("generic")
    assert lib.pd_variant() == b"generic" and lib.pd_abi_version() == ckernel.ABI_VERSION
    flags = lib.pd_flags().decode().split()
    assert "-O3" in flags
    # A wheel runs on other machines than the one that built it; -ffast-math would also
    # switch the loading process to flush-to-zero.
    assert not any(f.startswith(("-march", "-mavx", "-mfma", "-ffast-math")) for f in flags), flags


@pytest.mark.skipif(not X86, reason="the AVX2 variant is built on x86-64 only")
def test_variant_follows_the_cpu():
    has = {"avx2", "fma"} <= _cpuinfo_flags()
    assert bool(ckernel.load_variant("generic").pd_cpu_avx2_fma()) == has
    assert ckernel.available(), ckernel.unavailable_reason()
    assert ckernel.library_variant() == ("avx2" if has else "generic")
    assert ckernel.library_path() == ckernel.variant_path(ckernel.library_variant())
    assert ckernel.library_path().parent == Path(ckernel.__file__).parent  # the package's own
    if has:
        assert {"-mavx2", "-mfma"} <= set(ckernel.library_flags())
        assert ckernel.load_variant("avx2").pd_variant() == b"avx2"


def test_no_compiler_needed_and_config_key(tmp_path):
    # CC unset and no compiler on PATH: the installed library loads all the same.
    bare = tmp_path / "bin"
    bare.mkdir()
    os.symlink(sys.executable, bare / "python")
    code = """
        from probe_dask.kernels import ckernel
        print(ckernel.available(), ckernel.library_variant(), ckernel.unavailable_reason())
    """
    out = _python(code, unset=("CC",), PATH=str(bare)).split(maxsplit=2)
    assert out[0] == "True" and out[1] in ckernel.VARIANTS, out
    out = _python(code, DASK_PROBE_DASK__KERNELS__CKERNEL="generic").split(maxsplit=2)
    assert out[:2] == ["True", "generic"], out
    out = _python(code, DASK_PROBE_DASK__KERNELS__CKERNEL="False").split(maxsplit=2)
    assert out[:2] == ["False", "None"] and "probe-dask.kernels.ckernel" in out[2], out
    out = _python(code, DASK_PROBE_DASK__KERNELS__CKERNEL="avx512").split(maxsplit=2)
    assert out[0] == "False" and "'avx512'" in out[2] and "generic" in out[2], out


def test_not_built_falls_back_to_torch_or_says_why(tmp_path):
    # A copy of the sources without the built libraries, as a checkout before `pip install -e .`
    shutil.copytree(SRC / "probe_dask", tmp_path / "probe_dask",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    code = """
        import sys
        import numpy as np, scipy.sparse as sp
        from probe_dask import kernels as K
        from probe_dask.kernels import ckernel
        assert ckernel.__file__.startswith(%r), ckernel.__file__  # the copy
        assert not ckernel.available()
        print(ckernel.unavailable_reason())
        blk = K.LatentBlock.from_csr(sp.csr_matrix(np.eye(3, dtype=np.float32)), np.zeros(3, np.uint8))
        pairs = K.ActivePairs.all_pairs(np.zeros((3, 2)), np.ones((3, 2)))
        assert K.choose_backend("cpu") == ("torch", "cpu")
        assert K.fit_sums(blk, pairs, "cpu").shape == (6, 6)
        try:
            K.fit_sums(blk, pairs, "cpu", backend="c")
        except RuntimeError as exc:
            assert "not built" in str(exc), exc
        else:
            raise AssertionError("backend='c' did not raise")
        sys.modules["torch"] = None  # as if torch (the [gpu] extra) were not installed
        try:
            K.fit_sums(blk, pairs, "cpu")
        except RuntimeError as exc:
            print(exc)
        else:
            raise AssertionError("no C kernel and no torch, yet no error")
    """ % str(tmp_path)
    out = _python(code, path=str(tmp_path)).splitlines()
    assert "variant 'avx2' not built" in out[0] and "pip install" in out[0], out
    assert "variant 'generic' not built" in out[0], out
    assert out[1].startswith("C kernel unavailable: ") and "probe-dask[gpu]" in out[1], out


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="expected one of avx2, generic"):
        ckernel.variant_path("sse9")


def test_threads_split_gives_the_same_sums():
    # Latent ranges on several threads write disjoint columns: the same bits as one call.
    rng = np.random.default_rng(3)
    X = sp.random(400, 40, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    labels = rng.integers(0, 4, 400).astype(np.uint8)
    pairs = K.ActivePairs.all_pairs(rng.normal(size=(40, 4)), rng.normal(size=(40, 4)))
    block = K.LatentBlock.from_csr(X, labels)
    for kind in ("fit", "eval"):
        one = ckernel._run(kind, block, pairs, 1)
        np.testing.assert_array_equal(ckernel._run(kind, block, pairs, 3), one)
