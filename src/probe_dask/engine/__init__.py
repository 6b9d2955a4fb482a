"""Everything that talks to Dask: shards as dask arrays of CSR row blocks, passes over them,
the fit loop with its checkpoint, and evaluation."""
