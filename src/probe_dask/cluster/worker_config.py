"""Worker preload: the packaged ``jobqueue.yaml`` laid UNDER a Slurm worker's own config.

Slurm-started workers are separate processes on other nodes: a notebook's settings never
reach them, and Dask reads their config from the files and ``DASK_*`` variables there
(``/etc/dask``, ``~/.config/dask``, ``$DASK_CONFIG``). Their job scripts run
``dask worker --preload-nanny probe_dask.cluster.worker_config`` (``--preload`` without a
nanny; :func:`probe_dask.cluster.slurm.slurm_cluster_kwargs` adds it), and importing
this module adds the packaged file to Dask's *defaults* there
(:func:`~probe_dask.cluster.profiles.lay_packaged_defaults`), before the nanny reads its
memory thresholds and hands its config to the worker process: whatever the user set in
those files or variables wins, keys nobody set take the packaged values, as on the driver.

Memory: the parsed packaged file, once per process.
"""

from probe_dask.cluster.profiles import lay_packaged_defaults

__all__ = ["MODULE"]

#: The module name given to ``--preload-nanny`` / ``--preload``.
MODULE = __name__

lay_packaged_defaults()
