"""The installed version of probe-dask (base layer: imports nothing of the package)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("probe-dask")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
