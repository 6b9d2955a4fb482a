"""Per-block sums: the label pass, the six fit sums and the evaluation sums of one block.

Backends: the fused C kernel on CPU (:mod:`probe_dask.kernels.ckernel`), fused Triton kernels on
CUDA (:mod:`probe_dask.kernels.triton_backend`), torch as the slow fallback
(:mod:`probe_dask.kernels.torch_backend`). :func:`choose_backend` picks one.
"""

from probe_dask.core.datatypes import ActivePairs, LabelSums, LatentBlock
from probe_dask.kernels.dispatch import (BACKENDS, choose_backend, device_type, eval_sums, fit_sums,
                                         kernel_for, label_sums, resolve_device, stream_blocks)

__all__ = ["LatentBlock", "ActivePairs", "LabelSums", "label_sums", "fit_sums", "eval_sums",
           "resolve_device", "stream_blocks", "device_type", "choose_backend", "kernel_for",
           "BACKENDS"]
