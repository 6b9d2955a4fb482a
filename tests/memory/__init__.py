"""Tests of probe_dask.memory."""
