"""Tests of probe_dask.engine."""
