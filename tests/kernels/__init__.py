"""Tests of probe_dask.kernels."""
