"""probe-dask test suite, laid out like the package (tests/io tests probe_dask/io, ...)."""
