"""probe-dask's settings: one ``probe-dask`` section of Dask's configuration.

Every tunable that is not a physical constant lives in ``probe-dask.yaml`` (shipped in
this package) under ``probe-dask:``. Importing this module adds that file to Dask's
*defaults* with ``dask.config.update_defaults``, so every setting of the user wins over
it: a YAML file in ``~/.config/dask`` or ``$DASK_CONFIG``, an environment variable
(``DASK_PROBE_DASK__SLURM__PARTITION=gpu`` sets ``probe-dask.slurm.partition``, see
Dask's configuration docs), or ``dask.config.set({"probe-dask.kernels.ckernel": False})``.
Settings made with ``dask.config.set`` reach LocalCluster workers (the nanny passes the
config on); Slurm-started workers read their own files (``~/.config/dask``, an exported
``DASK_CONFIG``) and the ``DASK_*`` environment over these defaults.

Settings Dask itself owns (the worker memory thresholds ``distributed.worker.memory.*``)
are read from Dask, never copied here.

Memory per process: the parsed ``probe-dask.yaml`` (a few dozen keys), held in Dask's
config and defaults.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import dask.config
import yaml

from probe_dask.errors import ProbeDaskError

__all__ = ["get"]

#: Name of the packaged defaults file.
DEFAULTS_FILE = "probe-dask.yaml"
#: Top-level key of probe-dask's settings in Dask's config.
NAMESPACE = "probe-dask"

_defaults = yaml.safe_load(resources.files("probe_dask").joinpath(DEFAULTS_FILE).read_text())
dask.config.update_defaults(_defaults)


def get(key: str) -> Any:
    """The value of a configuration key, from Dask's config.

    Parameters
    ----------
    key : str
        Dotted key, e.g. ``"probe-dask.slurm.partition"`` or
        ``"distributed.worker.memory.target"`` (dashes and underscores are the same).

    Returns
    -------
    object
        The value (``None`` when the key is set to null). A key that no file, variable or
        default defines raises ProbeDaskError naming the key.
    """
    try:
        return dask.config.get(key)
    except KeyError:
        where = (f"the packaged {DEFAULTS_FILE}" if key.startswith(NAMESPACE + ".")
                 else "Dask's defaults")
        raise ProbeDaskError(
            f"configuration key {key!r} is not set and has no default (looked in Dask's "
            f"config: ~/.config/dask, DASK_CONFIG, DASK_* variables, dask.config.set and "
            f"{where}); set it, or reinstall probe-dask") from None
