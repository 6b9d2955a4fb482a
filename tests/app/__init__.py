"""Tests of probe_dask.app."""
