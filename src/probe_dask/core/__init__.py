"""Pure math, no I/O and no dask: the shared block and pair types, the probe objective and
the vectorised trust-region solver. Imports nothing else of probe_dask."""
