"""Tests of probe_dask.cluster."""
