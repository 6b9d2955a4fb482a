"""probe-dask: 1D logistic-regression probes on SAE activations, out of core, on Dask."""

from probe_dask.engine import sizeof as _sizeof  # noqa: F401  registers dask.sizeof for sparse/torch/blocks

__version__ = "0.1.0"
