"""Starting or joining the Dask cluster probe-dask runs on: local, Slurm profiles, an address.

Modules, one concern each (imports flow down the list):

- :mod:`~probe_dask.cluster.spec`: cluster specs, the ``(cluster, client)`` handle, waiting;
- :mod:`~probe_dask.cluster.network`: ``sinfo``, the default partition, the interface;
- :mod:`~probe_dask.cluster.profiles`: ``jobqueue.yaml`` in Dask's config, named profiles;
- :mod:`~probe_dask.cluster.tls`: per-run TLS credentials, a joined address's security;
- :mod:`~probe_dask.cluster.tlsfiles`: those credentials as files for shell-started
  schedulers (``python -m``; not imported here);
- :mod:`~probe_dask.cluster.dashboard`: the dashboard's (loopback) address, the ``ssh -L`` hint;
- :mod:`~probe_dask.cluster.worker_config`: the worker preload laying the packaged
  ``jobqueue.yaml`` under a Slurm worker's own config (not imported here);
- :mod:`~probe_dask.cluster.slurm`: ``SLURMCluster`` keywords, checks, start and wait;
- :mod:`~probe_dask.cluster.versions`: driver, scheduler and worker package versions,
  compared and recorded;
- :mod:`~probe_dask.cluster.start`: :func:`make_cluster`, the one entry point.

Memory: nothing of its own (see the modules).
"""

from probe_dask.cluster.dashboard import ssh_tunnel_hint
from probe_dask.cluster.network import detect_interface, detect_partition
from probe_dask.cluster.profiles import load_jobqueue_config, packaged_config_path, slurm_profile
from probe_dask.cluster.slurm import slurm_cluster_kwargs
from probe_dask.cluster.spec import ClusterSpec, parse_spec
from probe_dask.cluster.start import make_cluster
from probe_dask.cluster.tls import INSECURE_WARNING, job_security
from probe_dask.cluster.versions import cluster_versions
from probe_dask.engine.workers import gpu_resources

__all__ = ["ClusterSpec", "parse_spec", "make_cluster", "gpu_resources", "load_jobqueue_config",
           "packaged_config_path", "slurm_profile", "slurm_cluster_kwargs", "detect_partition",
           "detect_interface", "ssh_tunnel_hint", "INSECURE_WARNING", "job_security",
           "cluster_versions"]
