"""Starting or joining the Dask cluster probe-dask runs on: local, Slurm profiles, an address."""

from probe_dask.cluster.start import *  # noqa: F401,F403
from probe_dask.cluster.start import __all__  # noqa: F401
