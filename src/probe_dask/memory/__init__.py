"""The memory model of a run: what each process holds, the block size that fits, the report.

``shardinfo`` (what the plan reads of a shard), ``model`` (every buffer per process),
``search`` (:func:`plan_run`: the block size and work chunk that fit), ``plan``
(:class:`Plan`, :func:`format_plan`), ``live`` (:func:`plan_job` on a client, :func:`reblock`).
Stage names come from :mod:`probe_dask.stages`. Memory per process: nothing of its own.
"""

from probe_dask.memory.live import plan_job
from probe_dask.memory.plan import format_plan
from probe_dask.memory.search import default_target_fraction, plan_run
from probe_dask.memory.shardinfo import ShardInfo, read_shard_info
from probe_dask.stages import WORKER_STAGES

__all__ = ["ShardInfo", "plan_run", "plan_job", "format_plan", "read_shard_info",
           "default_target_fraction", "WORKER_STAGES"]
