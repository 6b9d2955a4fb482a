"""Tests of probe_dask.io."""
