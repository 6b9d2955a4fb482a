"""On-disk formats, no dask: the saev layout and its paths, npz headers, the ingested CSR store,
labels and metadata, and atomic writing of results."""
