"""On-disk formats, no dask: the saev layout and its paths (``layout``), the npz's zip members
and ``.npy`` headers (``npz``), raw arrays at file offsets (``arrayref``), cutting rows into
blocks (``row_blocks``), the ingested CSR store (``ingest`` writes it, ``store`` reads it), labels
and metadata (``labels``), and atomic writing of results (``outputs``)."""
