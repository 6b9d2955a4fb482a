"""The memory model of a run: what each process holds, the block size that fits, the report."""
