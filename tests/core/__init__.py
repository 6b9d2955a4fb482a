"""Tests of probe_dask.core."""
