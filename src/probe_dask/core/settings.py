"""The settings a user chooses for a fit, and their defaults, in one place.

``FitSettings`` is what the command line (``probe-dask fit``, ``demo``), a sweep file's run
and a library caller of ``app.job.run_job`` carry to ``engine.fit.ProbeFitter``: the ridge
penalty, the most solver passes, the device and the block kernel. Every default of these
lives here (``ProbeFitter``'s signature, the flags' defaults, the sweep's and the
objective's read it). What each field accepts is declared beside the fitter's other
parameters (``engine.parameters.PARAMETER_CONSTRAINTS``), which checks a settings object
too (``engine.parameters.check_settings``). Per-job choices that are no user's setting
(where the ranges live, the chunk size: the memory plan's) stay parameters of the fitter.

Memory per process: nothing (a few numbers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["FitSettings"]


@dataclass(frozen=True)
class FitSettings:
    """The fit's user settings (frozen: one object, passed along, never edited).

    Attributes
    ----------
    ridge, max_iter, device, backend
        As the ``engine.fit.ProbeFitter`` parameters of the same names; ``device="auto"``
        is kept as None (the same choice).
    """

    ridge: float = 1e-8
    max_iter: int = 30
    device: str | None = None
    backend: str = "auto"

    def __post_init__(self):
        if self.device == "auto":  # the same choice as None: one spelling in every record
            object.__setattr__(self, "device", None)

    def replace(self, **changes) -> "FitSettings":
        """A copy with ``changes`` (field name -> value); TypeError for another name."""
        return dataclasses.replace(self, **changes)

    def fitter_params(self) -> dict:
        """The settings as ``ProbeFitter`` keyword arguments."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings' names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))
