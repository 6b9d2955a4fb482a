"""probe-dask: 1D logistic-regression probes on SAE activations, out of core, on Dask."""

__version__ = "0.1.0"
