"""probe-dask: 1D logistic-regression probes on SAE activations, out of core, on Dask.

The public API; the layers below it (see docs/architecture.md) are importable on their own:
``probe_dask.io`` (formats), ``core`` (the math), ``kernels``, ``engine`` (Dask),
``memory`` (the memory plan), ``cluster``, ``telemetry``, ``app`` (job, CLI).
"""

from probe_dask._version import __version__
from probe_dask.app.job import open_inputs, run_job
from probe_dask.engine import sizeof as _sizeof  # noqa: F401  registers dask.sizeof for our blocks
from probe_dask.engine.evaluate import evaluate_split
from probe_dask.engine.fit import ProbeFitter
from probe_dask.engine.shard import open_shard
from probe_dask.errors import InputError, ProbeDaskError
from probe_dask.io.results import load_class_table, load_results


__all__ = ["ProbeFitter", "open_shard", "open_inputs", "run_job", "evaluate_split", "InputError",
           "ProbeDaskError", "load_results", "load_class_table", "__version__"]
