"""The fused CPU kernel (``fused.c``), compiled on first use and loaded with ctypes.

The source ships with the package. On first use it is compiled with the system C
compiler (``$CC``, else ``cc``, else ``gcc``) into a cache folder (``<cache-dir>/ckernel``,
``cache-dir`` being the config key ``probe-dask.kernels.cache-dir``, by default
``~/.cache/probe-dask``), under a name keyed by a hash of the source, the
compiler's version, the flags and the machine (architecture and CPU model/flags, since
``-march=native`` code from one node may not run on another node that shares the home
folder). The library is written under a temporary name and renamed, so several worker
processes may compile at once and none ever loads a half-written file. If
``-march=native`` fails a portable build is tried; if no build works,
:func:`available` is False, :func:`unavailable_reason` says why, and
:mod:`probe_dask.kernels` falls back to torch. Set the config key
``probe-dask.kernels.ckernel`` to False (environment: ``DASK_PROBE_DASK__KERNELS__CKERNEL=False``)
to disable the kernel.

ctypes releases the GIL during a call, so threads (``threads=`` here, or dask worker
threads) run the kernel in parallel.

Memory per process: the loaded library, plus about 40 KB of stack tile buffers per
calling thread; outputs are the ``(6, P)`` / ``(3, P)`` float64 partials, and inputs are
used in place (copied only if not contiguous or of another dtype).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from probe_dask import config

__all__ = [
    "available",
    "unavailable_reason",
    "library_path",
    "library_flags",
    "load_variant",
    "fit_sums",
    "eval_sums",
]

ABI_VERSION = 1
SOURCE = Path(__file__).with_name("fused.c")
BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
# Tried in order: tuned for this CPU, then portable (the baseline of the architecture).
VARIANTS = [["-march=native"], []]

_lock = threading.Lock()
_state: dict = {}


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc"):
        if cand and shutil.which(cand.split()[0]):
            return cand
    return None


def _cache_dir() -> Path:
    root = config.get("probe-dask.kernels.cache-dir")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "probe-dask"
    return base / "ckernel"


def _machine_id() -> str:
    ident = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    ident.append(line.strip())
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        ident.append(platform.processor())
    return "\n".join(ident)


def _compiler_version(cc: str) -> str:
    try:
        res = subprocess.run(cc.split() + ["--version"], capture_output=True, text=True, timeout=60)
        return res.stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return repr(exc)


def _build(cc: str, flags: list[str], cache: Path) -> tuple[Path | None, str]:
    """Compile (or reuse) one variant; returns (path or None, error text)."""
    src = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [src, cc.encode(), _compiler_version(cc).encode(), " ".join(flags).encode(),
             _machine_id().encode()]
        )
    ).hexdigest()[:24]
    target = cache / f"fused-{key}.so"
    if target.exists():
        return target, ""
    tmp = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".fused-{key}-", suffix=".so", dir=cache)
        os.close(fd)
        cmd = cc.split() + flags + ["-o", tmp, str(SOURCE)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            return None, f"{' '.join(cmd)}: {res.stderr.strip()[-2000:]}"
        os.chmod(tmp, 0o755)  # mkstemp's 0600 would hide it from a group-shared cache
        os.replace(tmp, target)  # atomic: readers see the old name absent or complete
        return target, ""
    except (OSError, subprocess.SubprocessError) as exc:
        return None, repr(exc)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.pd_abi_version.restype = ctypes.c_int
    lib.pd_abi_version.argtypes = []
    lib.pd_fit_sums.restype = ctypes.c_int
    lib.pd_fit_sums.argtypes = [i64, i64, p, p, p, p, p, i64, p]
    lib.pd_eval_sums.restype = ctypes.c_int
    lib.pd_eval_sums.argtypes = [i64, i64, p, p, p, p, p, p, p, p, i64, p]


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    if lib.pd_abi_version() != ABI_VERSION:
        raise OSError(f"{path}: ABI {lib.pd_abi_version()} != {ABI_VERSION}")
    return lib


def load_variant(extra_flags: list[str], cache_dir: Path | None = None) -> ctypes.CDLL:
    """Compile (or reuse) and load one build variant, e.g. ``[]`` for the portable one.

    For tests and benchmarks; the kernels use the first variant of :data:`VARIANTS` that
    builds. Raises RuntimeError when it does not build.
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc)")
    path, err = _build(cc, BASE_FLAGS + list(extra_flags), cache_dir or _cache_dir())
    if path is None:
        raise RuntimeError(err)
    return _open(path)


def _load() -> ctypes.CDLL | None:
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, errors = None, []
        if not config.get("probe-dask.kernels.ckernel"):
            errors.append("disabled by the config key probe-dask.kernels.ckernel")
        elif (cc := _compiler()) is None:
            errors.append("no C compiler found ($CC, cc, gcc)")
        else:
            for extra in VARIANTS:
                flags = BASE_FLAGS + extra
                path, err = _build(cc, flags, _cache_dir())
                if path is None:
                    errors.append(err)
                    continue
                try:
                    lib = _open(path)
                except (OSError, AttributeError) as exc:
                    errors.append(repr(exc))
                    continue
                _state["path"], _state["flags"] = path, flags
                break
        _state["lib"], _state["reason"] = lib, "; ".join(errors)
        return lib


def available() -> bool:
    """Whether the C kernel compiled and loaded (compiles on the first call)."""
    return _load() is not None


def unavailable_reason() -> str:
    """Why the kernel is unavailable ('' when it is available)."""
    _load()
    return "" if _state["lib"] is not None else _state["reason"]


def library_path() -> Path | None:
    """Path of the loaded shared library, or None."""
    return _state.get("path") if _load() is not None else None


def library_flags() -> list[str] | None:
    """Compiler flags of the loaded library, or None."""
    return list(_state["flags"]) if _load() is not None else None


def _ptr(a: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    a = np.ascontiguousarray(a, dtype=dtype)
    return a, a.ctypes.data


def _ranges(ev_ptr, pair_ptr, threads):
    """Split latents into ``threads`` contiguous ranges of about equal work."""
    n_lat = ev_ptr.size - 1
    if threads <= 1 or n_lat < 2:
        return [(0, n_lat)]
    work = np.cumsum(np.diff(ev_ptr) * np.diff(pair_ptr) + 1)
    cuts = np.searchsorted(work, work[-1] * np.arange(1, threads) / threads)
    bounds = np.unique(np.concatenate([[0], cuts, [n_lat]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def _run(kind, block, pairs, threads, lib=None):
    lib = lib if lib is not None else _load()
    if lib is None:
        raise RuntimeError(f"C kernel unavailable: {_state['reason']}")
    n_out = 6 if kind == "fit" else 3
    n_pairs = pairs.n_pairs
    out = np.zeros((n_out, n_pairs), dtype=np.float64)
    keep = []  # holds converted arrays alive during the calls
    ev_ptr, ev_p = _ptr(block.latent_ptr, np.int64)
    pr_ptr, pr_p = _ptr(pairs.latent_ptr, np.int64)
    args = [ev_p]
    for arr, dt in ((block.values, np.float32),) + (
        ((block.rows, np.int32), (block.labels, np.uint8)) if kind == "eval" else ()
    ):
        a, ptr = _ptr(arr, dt)
        keep.append(a)
        args.append(ptr)
    args.append(pr_p)
    for arr, dt in (((pairs.classes, np.int32),) if kind == "eval" else ()) + (
        (pairs.b, np.float64),
        (pairs.w, np.float64),
    ):
        a, ptr = _ptr(arr, dt)
        keep.append(a)
        args.append(ptr)
    args += [n_pairs, out.ctypes.data]
    fn = lib.pd_fit_sums if kind == "fit" else lib.pd_eval_sums
    ranges = _ranges(ev_ptr, pr_ptr, int(threads))
    if len(ranges) == 1:
        fn(*ranges[0], *args)
    else:
        # latent ranges own disjoint pair columns of out: no reduction needed
        with ThreadPoolExecutor(len(ranges)) as pool:
            list(pool.map(lambda r: fn(r[0], r[1], *args), ranges))
    return out


def fit_sums(block, pairs, threads: int = 1) -> np.ndarray:
    """C-kernel :func:`probe_dask.kernels.fit_sums` (CPU), float64 (6, P)."""
    return _run("fit", block, pairs, threads)


def eval_sums(block, pairs, threads: int = 1) -> np.ndarray:
    """C-kernel :func:`probe_dask.kernels.eval_sums` (CPU), float64 (3, P)."""
    return _run("eval", block, pairs, threads)
