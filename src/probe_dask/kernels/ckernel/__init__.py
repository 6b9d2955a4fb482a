"""The fused CPU kernels (``fused.c``, the block sums; ``step.c``, the solver step), built
when the package is installed and loaded with ctypes.

``setup.py`` compiles both sources into one shared library per variant, beside this file:

- ``_fused_generic``: the architecture's baseline, runs on any CPU of it;
- ``_fused_avx2`` (x86-64 only): built with ``-mavx2 -mfma``.

On first use the generic library is loaded and asked whether this CPU (and its OS) runs
AVX2 and FMA (``__builtin_cpu_supports``); if so the AVX2 library is loaded instead. No
compiler is needed where the package runs, and nothing is loaded from outside the
installed package. The config key ``probe-dask.kernels.ckernel`` (environment:
``DASK_PROBE_DASK__KERNELS__CKERNEL``) is ``true`` (the best variant for this CPU),
``false`` (never load the kernel: torch is used instead) or a variant's name (``generic``,
``avx2``). When no variant loads, :func:`available` is False, :func:`unavailable_reason`
says why, and :mod:`probe_dask.kernels` falls back to torch.

ctypes releases the GIL during a call, so threads (``threads=`` here, or dask worker
threads) run the kernel in parallel.

Memory per process: the loaded library (about 100 KB), plus about 40 KB of stack tile
buffers per calling thread; outputs are the ``(6, P)`` / ``(3, P)`` float64 partials (or
the sums are added into a given ``out``), and inputs are used in place (copied only if not
contiguous or of another dtype).
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from probe_dask import config
from probe_dask.core.split import weighted_bounds

__all__ = [
    "VARIANTS",
    "available",
    "unavailable_reason",
    "library",
    "library_path",
    "library_variant",
    "library_flags",
    "variant_path",
    "load_variant",
    "fit_sums",
    "eval_sums",
]

ABI_VERSION = 1
#: Build variants, fastest first; each is ``_fused_<name>`` in this package.
VARIANTS = ("avx2", "generic")

_lock = threading.Lock()
_state: dict = {}


def variant_path(name: str) -> Path | None:
    """The installed library of variant ``name``, or None when it was not built here."""
    if name not in VARIANTS:
        raise ValueError(f"C kernel variant {name!r}; expected one of {', '.join(VARIANTS)}")
    # find_spec locates the file (in place or through an editable install's finder)
    # without loading it: it is a plain shared library, not a Python module.
    spec = importlib.util.find_spec(f"{__name__}._fused_{name}")
    return Path(spec.origin) if spec is not None and spec.origin else None


def _declare(lib: ctypes.CDLL) -> None:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.pd_abi_version.restype = ctypes.c_int
    lib.pd_abi_version.argtypes = []
    for name in ("pd_variant", "pd_flags"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = []
    lib.pd_cpu_avx2_fma.restype = ctypes.c_int
    lib.pd_cpu_avx2_fma.argtypes = []
    lib.pd_fit_sums.restype = ctypes.c_int
    lib.pd_fit_sums.argtypes = [i64, i64, p, p, p, p, p, i64, p]
    lib.pd_eval_sums.restype = ctypes.c_int
    lib.pd_eval_sums.argtypes = [i64, i64, p, p, p, p, p, p, p, p, i64, p]
    lib.pd_step.restype = ctypes.c_int
    lib.pd_step.argtypes = [i64, i64, i64, i64] + [p] * 14


def load_variant(name: str) -> ctypes.CDLL:
    """Load the installed library of variant ``name`` (e.g. ``'generic'``).

    For tests and benchmarks; the kernels use the variant :func:`library` chose. Raises
    RuntimeError when that variant was not built or does not load, or this CPU lacks
    the features it was built for.
    """
    path = variant_path(name)
    if path is None:
        raise RuntimeError(
            f"C kernel variant {name!r} not built (no {__name__}._fused_{name} library in "
            f"{Path(__file__).parent}); install the package with `pip install .` "
            "(or `pip install -e .` in a checkout) on a machine with a C compiler")
    if name == "avx2" and not _cpu_avx2_fma():
        raise RuntimeError("C kernel variant 'avx2': this CPU does not report both AVX2 and FMA")
    try:
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"C kernel {path} not loaded: {exc}") from None
    if lib.pd_abi_version() != ABI_VERSION:
        raise RuntimeError(f"C kernel {path}: ABI {lib.pd_abi_version()}, expected {ABI_VERSION} "
                           "(a stale build: reinstall the package)")
    return lib


def _cpu_avx2_fma() -> bool:
    # The generic build answers: it runs everywhere, and the compiler's own CPU check
    # also asks the OS whether it saves the AVX registers, which /proc/cpuinfo does not say.
    if "avx2_fma" not in _state:
        try:
            _state["avx2_fma"] = bool(load_variant("generic").pd_cpu_avx2_fma())
        except RuntimeError:
            _state["avx2_fma"] = False
    return _state["avx2_fma"]


def _wanted() -> tuple[list[str], str]:
    """The variants to try, in order, and why there are none."""
    setting = config.get("probe-dask.kernels.ckernel")
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        setting = setting.lower() == "true"  # an environment variable arrives as text
    if setting is False:
        return [], "disabled by the config key probe-dask.kernels.ckernel"
    if setting is True or setting is None:
        return list(VARIANTS), ""
    if setting in VARIANTS:
        return [setting], ""
    return [], (f"config key probe-dask.kernels.ckernel is {setting!r}; expected true, false "
                f"or one of {', '.join(VARIANTS)}")


def _load() -> ctypes.CDLL | None:
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        names, why = _wanted()
        errors = [why] if why else []
        for name in names:
            try:
                lib = load_variant(name)
            except RuntimeError as exc:
                errors.append(str(exc))
                continue
            _state["path"], _state["variant"] = variant_path(name), name
            break
        _state["lib"], _state["reason"] = lib, "; ".join(errors)
        return lib


def library() -> ctypes.CDLL | None:
    """The loaded library (loaded on the first call), or None when unavailable."""
    return _load()


def available() -> bool:
    """Whether the C kernel loaded (loads it on the first call)."""
    return _load() is not None


def unavailable_reason() -> str:
    """Why the kernel is unavailable ('' when it is available)."""
    _load()
    return "" if _state["lib"] is not None else _state["reason"]


def library_path() -> Path | None:
    """Path of the loaded shared library, or None."""
    return _state["path"] if _load() is not None else None


def library_variant() -> str | None:
    """Name of the loaded variant (one of :data:`VARIANTS`), or None."""
    return _state["variant"] if _load() is not None else None


def library_flags() -> list[str] | None:
    """Compiler flags the loaded library was built with (as it reports them), or None."""
    lib = _load()
    return lib.pd_flags().decode().split() if lib is not None else None


def _ptr(a: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    a = np.ascontiguousarray(a, dtype=dtype)
    return a, a.ctypes.data


def _ranges(ev_ptr, pair_ptr, threads):
    """Split latents into ``threads`` contiguous ranges of about equal work."""
    n_lat = ev_ptr.size - 1
    if threads <= 1 or n_lat < 2:
        return [(0, n_lat)]
    # a latent's work: its events times its pairs, plus its visit
    return weighted_bounds(np.diff(ev_ptr) * np.diff(pair_ptr) + 1, threads)


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
