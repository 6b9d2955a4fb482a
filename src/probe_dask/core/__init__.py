"""Pure math, no I/O and no dask; imports nothing else of probe_dask. ``datatypes``: the block,
pair and label-sum types every layer shares; ``objective``: the probe objective in closed
form; ``tuning``: the solver's constants; ``state``: the per-pair solver state;
``solver``: one trust-region iteration; ``stats``: what a step did; ``split``: contiguous
splits; ``metrics``: evaluation metrics from summed sums."""
