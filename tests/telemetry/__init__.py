"""Tests of probe_dask.telemetry."""
