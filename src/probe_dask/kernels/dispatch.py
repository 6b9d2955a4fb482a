"""Per-block math: label sums, fit sums and evaluation sums over the non-zeros of a block.

A block of rows is held as a :class:`LatentBlock`: its non-zero events grouped by latent
(the CSC layout of the block), so that every per-latent sum is a reduction over a
contiguous run of events. The parameters of the pairs still being fitted travel as
:class:`ActivePairs`, also grouped by latent, so stopped pairs cost nothing and latents
without pairs are skipped.

Three backends compute :func:`fit_sums` and :func:`eval_sums` (:func:`choose_backend`):

- ``'c'``: a fused CPU kernel (:mod:`probe_dask.kernels.ckernel`), built when the package
  is installed (its AVX2/FMA variant where the CPU has both) and used by default on CPU (about 1.7 ns per non-zero x pair for the fit
  pass on one AVX2 core, 1.3 ns for eval).
- ``'triton'``: fused Triton kernels (:mod:`probe_dask.kernels.triton_backend`), the default
  on CUDA; on CPU only under ``TRITON_INTERPRET=1`` (the tests).
- ``'torch'``: chunked torch ops, on CPU or CUDA: the slow fallback (about 20 to 30 ns per
  element on CPU). torch and triton come with the ``[gpu]`` extra; a CPU fit on the C
  kernel never imports them.

Numerics (every backend): ``eta = b + w v`` is formed in float64 (``v`` promoted), the
transcendental part (``exp(-|eta|)``, ``log1p``) is float32, every accumulation is
float64, and the decision ``eta > 0`` is taken on the float64 ``eta``. Results therefore
do not depend on how rows are split into blocks, beyond float64 summation order. Each
float32 term is within a few ``2**-24 (1 + |eta|)`` relative of its exact value (the
rounding of ``|eta|`` to float32 dominates); values below about 1e-38 flush to 0.

Memory per process, per call:

- the block itself, ``LatentBlock.nbytes`` = ``8 (L+1) + 8 nnz + n_rows`` bytes
  (int32 row + float32 value per non-zero, one label byte per row); the torch backend on
  CUDA also holds a device copy of it during the call, the Triton backend too, or keeps it
  between calls with ``resident=True`` (:mod:`probe_dask.kernels.resident`, bounded);
- the pairs, ``ActivePairs.nbytes`` = ``8 (L+1) + 20 P`` bytes (plus a device copy on CUDA);
- the partials returned: ``48 P`` (fit) or ``24 P`` (eval) bytes, none with ``out=``
  on the C backend (the sums are added into it); :func:`label_sums`
  returns two ``(L, C)`` float64 arrays (``16 L C`` bytes, 79 MB at 32768 x 151) and
  needs about ``33 nnz + 8 L C`` bytes of temporaries;
- temporaries of the torch backend: one chunk of at most ``2 work_chunk`` (event x pair)
  elements at a time, about 100 bytes each (``work_chunk`` is 2**18 on CPU, 2**22 on CUDA:
  at most about 50 MB / 800 MB); of the C backend: about 40 KB of stack per thread.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os

import numpy as np

from probe_dask.core.datatypes import EVAL_FIELDS, FIT_FIELDS, ActivePairs, LabelSums, LatentBlock
from probe_dask.kernels import ckernel
from probe_dask.kernels.labels import device_label_sums, host_label_sums
from probe_dask.kernels.torch_backend import torch_sums

__all__ = [
    "LatentBlock",
    "ActivePairs",
    "LabelSums",
    "label_sums",
    "fit_sums",
    "eval_sums",
    "resolve_device",
    "stream_blocks",
    "device_type",
    "warm_up",
    "FIT_FIELDS",
    "EVAL_FIELDS",
]

def label_sums(block: LatentBlock, n_classes: int, device="cpu") -> LabelSums:
    """Label-dependent sums of one block (:mod:`probe_dask.kernels.labels`).

    Parameters
    ----------
    block : LatentBlock
    n_classes : int
        ``C``; every label must be below it.
    device : str or torch.device
        Where they are computed: a CUDA device (a GPU worker's label pass) with torch ops
        there, else on the host with numpy. ``None`` or ``'auto'`` as in
        :func:`resolve_device`; the host by default, so that a CPU task never touches a GPU.

    Returns
    -------
    LabelSums
    """
    if device_type(device) == "cuda":
        return device_label_sums(block, n_classes, resolve_device(device))
    return host_label_sums(block, n_classes)


def _cuda_possible() -> bool:
    # CUDA needs the NVIDIA driver's device nodes (or WSL's /dev/dxg); without them there is
    # no GPU, and importing torch only to learn that would cost each worker ~200 MB.
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def device_type(device=None) -> str:
    """``"cuda"`` or ``"cpu"`` (or another torch device type) without importing torch
    unless a GPU may be present."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return resolve_device(device).type if _cuda_possible() else "cpu"
    return device.split(":")[0] if isinstance(device, str) else device.type


def resolve_device(device=None):
    """The torch device to compute on: ``None``/``'auto'`` = CUDA if available, else CPU."""
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit_sums(block, pairs, device=None, *, backend="auto", work_chunk=None, threads=1,
             resident=False, out=None):
    """Label-free sums of a solver iteration over one block.

    Parameters
    ----------
    block : LatentBlock
    pairs : ActivePairs
        Pairs to compute; must have ``block.n_latents`` latents.
    device : str or torch.device, optional
        See :func:`resolve_device`.
    backend : {'auto', 'c', 'triton', 'torch'}
        See :func:`choose_backend`.
    work_chunk : int, optional
        Torch backend: (event x pair) elements per chunk of temporaries.
    threads : int
        C backend: threads splitting the latents of this call (each releases the GIL).
    resident : bool
        Triton backend: keep the block's device copy for the next pass
        (:mod:`probe_dask.kernels.resident`; for persisted blocks), else copy it per call.
    out : ndarray of float64, shape (6, P), optional
        Add the sums into it and return it (a pass sums its blocks so: no new partial per
        block; the C kernel adds in place, the others add their result).

    Returns
    -------
    ndarray of float64, shape (6, P)
        Per pair, over the non-zero events of its latent with ``eta = b + w v``:
        ``[sum mu, sum mu v, sum s, sum s v, sum s v^2, sum softplus(eta)]`` with
        ``mu = sigmoid(eta)``, ``s = mu (1 - mu)`` (rows named in :data:`FIT_FIELDS`).
    """
    return _dispatch("fit", block, pairs, device, backend, work_chunk, threads, resident, out)


def eval_sums(block, pairs, device=None, *, backend="auto", work_chunk=None, threads=1,
              resident=False, out=None):
    """Evaluation sums over one block.

    Parameters are those of :func:`fit_sums` (``out`` of shape (3, P)).

    Returns
    -------
    ndarray of float64, shape (3, P)
        Per pair, over the non-zero events of its latent: ``[sum softplus(eta),
        count(eta > 0), count(eta > 0 and label of the event's row == pair's class)]``.
    """
    return _dispatch("eval", block, pairs, device, backend, work_chunk, threads, resident, out)


def _check(kind: str, block: LatentBlock, pairs: ActivePairs) -> None:
    # O(L + P) (plus O(nnz) rows for eval) checks, because the C kernel trusts offsets.
    if pairs.latent_ptr.shape[0] != block.latent_ptr.shape[0]:
        raise ValueError(
            f"pairs have {pairs.latent_ptr.shape[0] - 1} latents, block {block.n_latents}"
        )
    for name, ptr, n in (("block", block.latent_ptr, block.nnz), ("pairs", pairs.latent_ptr, pairs.n_pairs)):
        if ptr[0] != 0 or ptr[-1] != n or np.any(np.diff(ptr) < 0):
            raise ValueError(f"{name}.latent_ptr: not offsets from 0 to {n}")
    if block.rows.shape != block.values.shape:
        raise ValueError(f"block: {block.rows.shape[0]} rows for {block.nnz} values")
    if not pairs.b.shape == pairs.w.shape == pairs.classes.shape:
        raise ValueError("pairs: classes, b, w differ in length")
    if kind == "eval" and block.nnz and (block.rows.min() < 0 or block.rows.max() >= block.n_rows):
        raise ValueError(f"block.rows: outside [0, {block.n_rows})")


BACKENDS = ("auto", "c", "triton", "torch")


def _triton():
    # The Triton backend imports torch and triton (hundreds of MB, seconds): loaded by name,
    # on first use, so CPU workers running the C kernel never pay for it.
    return importlib.import_module("probe_dask.kernels.triton_backend")


def _resident():
    # Imports the Triton backend too: loaded by name for the same reason.
    return importlib.import_module("probe_dask.kernels.resident")


def triton_reason(dev_type: str) -> str:
    """Why the Triton kernels cannot run on ``dev_type`` here ("" when they can)."""
    if dev_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CUDA (or on CPU under TRITON_INTERPRET=1)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    module = _triton()
    return "" if module.available() else module.unavailable_reason()


def choose_backend(device=None, backend="auto") -> tuple[str, str]:
    """The kernel that runs on ``device``: ``(backend, device type)``.

    ``'auto'`` takes the C kernel on CPU, the fused Triton kernels on CUDA, and torch (the
    slow fallback) when the preferred one cannot run. ``'c'`` always means the CPU; asked
    for a GPU it is an error. Raises ``RuntimeError`` when an explicit backend cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "c":
        if device is not None and device != "auto" and device_type(device) != "cpu":
            raise ValueError(f"backend='c' runs on CPU only, not {device}")
        if not ckernel.available():
            raise RuntimeError(f"C kernel unavailable: {ckernel.unavailable_reason()}")
        return "c", "cpu"
    dev_type = device_type(device)
    if backend == "torch":
        return _torch_fallback(dev_type, "")
    if backend == "triton" or (dev_type == "cuda" and backend == "auto"):
        why = triton_reason(dev_type)
        if not why:
            return "triton", dev_type
        if backend == "triton":
            raise RuntimeError(f"Triton kernels unavailable: {why}")
        return _torch_fallback(dev_type, f"Triton kernels unavailable: {why}")
    if ckernel.available():
        return "c", dev_type
    return _torch_fallback(dev_type, f"C kernel unavailable: {ckernel.unavailable_reason()}")


def _torch_fallback(dev_type: str, why: str) -> tuple[str, str]:
    # Asked without importing torch (hundreds of MB): only whether it is installed.
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError(("; ".join(filter(None, [why, "the torch fallback needs torch"])))
                           + ", which is not installed (pip install 'probe-dask[gpu]')")
    return "torch", dev_type


def stream_blocks(blocks, device=None, backend="auto"):
    """``blocks`` (an iterable of host blocks read lazily) as :func:`fit_sums` and
    :func:`eval_sums` should get them: on the Triton backend, device copies made one block
    ahead while the previous block computes (:mod:`probe_dask.kernels.streaming`); on the
    others, unchanged."""
    if choose_backend(device, backend)[0] != "triton":
        return blocks
    # Loaded by name, on first use, for the reason given in _triton().
    return importlib.import_module("probe_dask.kernels.streaming").device_blocks(blocks, device)


def kernel_for(device=None, backend="auto") -> tuple[str, str]:
    """:func:`choose_backend`, and for a CUDA device also whether this process has one.

    Raises ``RuntimeError`` saying what is missing (no CUDA device, a torch without CUDA)
    where :func:`choose_backend` would fall back or fail later, mid-pass.
    """
    name, dev_type = choose_backend(device, backend)
    if dev_type == "cuda":
        if not _cuda_possible():
            raise RuntimeError("no CUDA device (no /dev/nvidia*)")
        import torch  # lazy: only a process asked for CUDA pays for torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"no CUDA device usable by torch {torch.__version__} "
                               f"(torch.cuda.is_available() is False)")
    return name, dev_type


def warm_up(device=None, backend="auto") -> float:
    """Compile what ``device`` and ``backend`` run, before the first pass.

    On the Triton kernels, their fit and eval variants for the default tile
    (:func:`probe_dask.kernels.warmup.warm_up`): a worker that calls it as it
    starts, or as it is first asked for its kernel, compiles nothing mid-job. Nothing to do
    for the C kernel (built at install time) or torch.

    Returns
    -------
    float
        Seconds it took (0.0 when there is nothing to compile).
    """
    name, dev_type = choose_backend(device, backend)
    if name != "triton":
        return 0.0
    # Loaded by name, on first use, for the reason given in _triton().
    return importlib.import_module("probe_dask.kernels.warmup").warm_up(dev_type)


def _check_out(kind, pairs, out):
    shape = (6 if kind == "fit" else 3, pairs.n_pairs)
    if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.float64
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out: expected a writable C-contiguous float64 array of shape {shape}")


def _dispatch(kind, block, pairs, device, backend, work_chunk, threads, resident=False,
              out=None):
    _check(kind, block, pairs)
    if out is not None:
        _check_out(kind, pairs, out)
    name, dev_type = choose_backend(device, backend)
    if name == "c":
        fn = ckernel.fit_sums if kind == "fit" else ckernel.eval_sums
        return fn(block, pairs, threads=threads, out=out)
    if name == "triton":
        sums = _resident().resident_sums(kind, block, pairs, dev_type, resident=resident)
    else:
        sums = torch_sums(kind, block, pairs,
                          resolve_device(device if dev_type != "cpu" else "cpu"), work_chunk)
    if out is None:  # contiguous, so that the next block can be added into it
        return np.require(sums, np.float64, ["C_CONTIGUOUS", "WRITEABLE"])
    np.add(out, sums, out=out)
    return out
