"""The fused CPU kernels (``fused.c``, the block sums; ``step.c``, the solver step),
compiled on first use into one library and loaded with ctypes.

The sources ship with the package. On first use it is compiled with the system C
compiler (``$CC``, else ``cc``, else ``gcc``) into a cache folder (``<cache-dir>/ckernel``,
``cache-dir`` being the config key ``probe-dask.kernels.cache-dir``, by default
``~/.cache/probe-dask``), under a name keyed by a hash of the source, the
compiler's version, the flags and the machine (architecture and CPU model/flags, since
``-march=native`` code from one node may not run on another node that shares the home
folder). The library is written under a temporary name and renamed, so several worker
processes may compile at once and none ever loads a half-written file.

The key is a hash of public inputs, so anyone who can write into the cache folder could
plant a library under the next key and have every worker load it. A library is therefore
loaded only from a folder owned by the user, not writable by group or others, whose
ancestors are owned by the user or root and not writable by others unless sticky
(:func:`trusted_folder`), and only when the file itself is a regular file owned by the
user and not writable by group or others. Builds are private (0700 folder, 0700 file):
there is no group-shared cache. When the configured folder fails the check, the kernel is
built into a fresh private folder instead (:func:`cache_note` says why, once, in the log).
If
``-march=native`` fails a portable build is tried; if no build works,
:func:`available` is False, :func:`unavailable_reason` says why, and
:mod:`probe_dask.kernels` falls back to torch. Set the config key
``probe-dask.kernels.ckernel`` to False (environment: ``DASK_PROBE_DASK__KERNELS__CKERNEL=False``)
to disable the kernel.

ctypes releases the GIL during a call, so threads (``threads=`` here, or dask worker
threads) run the kernel in parallel.

Memory per process: the loaded library, plus about 40 KB of stack tile buffers per
calling thread; outputs are the ``(6, P)`` / ``(3, P)`` float64 partials (or the sums are
added into a given ``out``), and inputs are used in place (copied only if not contiguous or of another dtype).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
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
    "library",
    "library_path",
    "library_flags",
    "load_variant",
    "library_name",
    "trusted_folder",
    "cache_note",
    "fit_sums",
    "eval_sums",
]

ABI_VERSION = 1
SOURCES = [Path(__file__).with_name("fused.c"), Path(__file__).with_name("step.c")]
BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
# Tried in order: tuned for this CPU, then portable (the baseline of the architecture).
VARIANTS = [["-march=native"], []]

_lock = threading.Lock()
_state: dict = {}
logger = logging.getLogger(__name__)


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc"):
        if cand and shutil.which(cand.split()[0]):
            return cand
    return None


def _configured_cache_dir() -> Path:
    root = config.get("probe-dask.kernels.cache-dir")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "probe-dask"
    return base / "ckernel"


def trusted_folder(folder: Path) -> str:
    """Why nobody but the user (and root) may plant a file in ``folder``; '' when trusted.

    ``folder`` must be a real folder (not a link) owned by the user and not writable by
    group or others; each ancestor must be owned by the user or root and not writable by
    others unless sticky (``/tmp``): otherwise someone could rename the folder away and
    put their own in its place.
    """
    uid = os.getuid()
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"{folder}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder}: not a folder"
    if st.st_uid != uid or st.st_mode & 0o022:
        return (f"{folder}: owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o} "
                "(others could plant a library; expected yours and not group/world-writable)")
    for parent in Path(os.path.abspath(folder)).parents:
        try:
            pst = os.stat(parent)
        except OSError as exc:
            return f"{parent}: {exc.strerror}"
        if pst.st_uid not in (uid, 0) or (pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX):
            return (f"{parent}: owned by uid {pst.st_uid}, mode {stat.S_IMODE(pst.st_mode):o} "
                    "(others could replace the cache folder inside it)")
    return ""


def _trusted_file(path: Path) -> str:
    """'' when ``path`` is a regular file of the user's, not writable by group or others."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return (f"{path}: not a regular file of yours that only you can write "
                f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
    return ""


def _cache_dir() -> Path:
    """The configured cache folder when it is (or can be made) trusted, else a private one."""
    if "cache" in _state:
        return _state["cache"]
    folder = _configured_cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        why = trusted_folder(folder)
    except OSError as exc:
        why = f"{folder}: {exc.strerror}"
    if why:
        # A fresh folder per process: nothing planted can be there, at the cost of a build.
        private = Path(tempfile.mkdtemp(prefix="probe-dask-ckernel-"))
        atexit.register(shutil.rmtree, private, True)
        _state["note"] = f"C kernel cache not used: {why}; building in {private} instead"
        logger.warning(_state["note"])
        folder = private
    _state["cache"] = folder
    return folder


def cache_note() -> str:
    """Why the configured kernel cache was not used ('' when it was)."""
    _cache_dir()
    return _state.get("note", "")


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


def library_name(cc: str, flags: list[str]) -> str:
    """File name of one build variant: ``fused-<key>.so``, the key a hash of public inputs."""
    key = hashlib.sha256(
        b"\0".join(
            [*(src.read_bytes() for src in SOURCES), cc.encode(), _compiler_version(cc).encode(), " ".join(flags).encode(),
             _machine_id().encode()]
        )
    ).hexdigest()[:24]
    return f"fused-{key}.so"


def _build(cc: str, flags: list[str], cache: Path) -> tuple[Path | None, str]:
    """Compile (or reuse) one variant; returns (path or None, error text)."""
    name = library_name(cc, flags)
    target = cache / name
    why = trusted_folder(cache) if cache.exists() else ""
    if why:
        return None, f"C kernel cache not used: {why}"
    if target.exists() or target.is_symlink():
        why = _trusted_file(target)
        if not why:
            return target, ""
        logger.warning("C kernel %s not loaded: %s; rebuilding it", target, why)
    tmp = None
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name[:-3]}-", suffix=".so", dir=cache)
        os.close(fd)
        cmd = cc.split() + flags + ["-o", tmp] + [str(src) for src in SOURCES] + ["-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            return None, f"{' '.join(cmd)}: {res.stderr.strip()[-2000:]}"
        # The linker may recreate its output under the umask: make it the user's alone.
        os.chmod(tmp, 0o700)
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
    lib.pd_step.restype = ctypes.c_int
    lib.pd_step.argtypes = [i64, i64, i64, i64] + [p] * 14


def _open(path: Path) -> ctypes.CDLL:
    why = _trusted_file(path)
    if why:  # checked again right before loading: the folder is the user's alone
        raise OSError(f"C kernel not loaded: {why}")
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


def library() -> ctypes.CDLL | None:
    """The loaded library (compiled on the first call), or None when unavailable."""
    return _load()


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


def _run(kind, block, pairs, threads, lib=None, out=None):
    lib = lib if lib is not None else _load()
    if lib is None:
        raise RuntimeError(f"C kernel unavailable: {_state['reason']}")
    n_out = 6 if kind == "fit" else 3
    n_pairs = pairs.n_pairs
    if out is None:
        out = np.zeros((n_out, n_pairs), dtype=np.float64)
    elif out.shape != (n_out, n_pairs) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous float64 array of shape {(n_out, n_pairs)}")
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


def fit_sums(block, pairs, threads: int = 1, out=None) -> np.ndarray:
    """C-kernel :func:`probe_dask.kernels.fit_sums` (CPU), float64 (6, P), added into
    ``out`` when given."""
    return _run("fit", block, pairs, threads, out=out)


def eval_sums(block, pairs, threads: int = 1, out=None) -> np.ndarray:
    """C-kernel :func:`probe_dask.kernels.eval_sums` (CPU), float64 (3, P), added into
    ``out`` when given."""
    return _run("eval", block, pairs, threads, out=out)
