"""Tests of probe_dask.testing."""
