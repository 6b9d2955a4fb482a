"""The statistics of one solver step: :class:`StepStats`, built by :meth:`StepStats.from_totals`
from the step's running totals, whichever step computed them (``core.solver.step``, the
compiled ``kernels.step.solver_step``) and whichever pairs it stepped (a latent range, or
the ranges of one pass combined, :meth:`StepStats.combine`).

The driver's record of a pass is a plain dict with these names (``ProbeFitter.history_``,
telemetry's ``iteration`` event): :meth:`StepStats.as_record` and :func:`combine_stats`
write it, :meth:`StepStats.from_record` reads one back.

Pure: no numpy arrays kept. Memory: a dozen numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["StepStats", "combine_stats"]


@dataclass(frozen=True)
class StepStats:
    """What one trust-region step did to the pairs it stepped.

    Parameters
    ----------
    n_iter : int
        Passes made, this one included.
    active_before, active_after : int
        Pairs iterating before and after the step.
    n_stopped, n_clipped, n_fallback, n_backtracked : int
        Pairs that stopped, whose step the logit budget clipped, that took the downhill
        fallback, that went halfway back.
    max_grad, max_decrement, max_step : float
        Largest scaled gradient, Newton decrement and scaled step.
    mean_lam : float
        Mean damping of the pairs that stepped (NaN if none did).
    mean_loss : float
        Mean F of the pairs of this pass (NaN if none).
    """

    n_iter: int
    active_before: int
    active_after: int
    n_stopped: int
    n_clipped: int
    n_fallback: int
    n_backtracked: int
    max_grad: float
    max_decrement: float
    max_step: float
    mean_lam: float
    mean_loss: float

    @classmethod
    def from_totals(cls, *, n_iter, active_before, active_after, n_stopped, n_clipped,
                    n_fallback, n_backtracked, max_grad, max_decrement, max_step, sum_lam,
                    sum_loss) -> StepStats:
        """The statistics from a step's totals: ``sum_lam`` over the pairs that stepped
        (``active_before - n_stopped``), ``sum_loss`` over all ``active_before``; counts
        and maxima as they are (numpy scalars become plain numbers)."""
        n_moved = int(active_before) - int(n_stopped)
        return cls(n_iter=int(n_iter), active_before=int(active_before),
                   active_after=int(active_after), n_stopped=int(n_stopped),
                   n_clipped=int(n_clipped), n_fallback=int(n_fallback),
                   n_backtracked=int(n_backtracked), max_grad=float(max_grad),
                   max_decrement=float(max_decrement), max_step=float(max_step),
                   mean_lam=float(sum_lam) / n_moved if n_moved else float("nan"),
                   mean_loss=(float(sum_loss) / int(active_before) if int(active_before)
                              else float("nan")))

    @classmethod
    def combine(cls, parts) -> StepStats:
        """The statistics of one step over all pairs, from those of steps over disjoint
        sets of pairs taken at the same iteration (latent ranges): counts add, maxima take
        the largest, means are weighted by the pairs they are means of."""
        parts = list(parts)
        if not parts:
            raise ValueError("no statistics to combine")
        moved = [p.active_before - p.n_stopped for p in parts]
        counts = {key: sum(getattr(p, key) for p in parts)
                  for key in ("active_before", "active_after", "n_stopped", "n_clipped",
                              "n_fallback", "n_backtracked")}
        maxima = {key: max(getattr(p, key) for p in parts)
                  for key in ("max_grad", "max_decrement", "max_step")}
        return cls.from_totals(
            n_iter=max(p.n_iter for p in parts), **counts, **maxima,
            sum_lam=sum(p.mean_lam * m for p, m in zip(parts, moved) if m),
            sum_loss=sum(p.mean_loss * p.active_before for p in parts if p.active_before))

    @classmethod
    def from_record(cls, record) -> StepStats:
        """The statistics of a record (a mapping holding at least the field names; other
        keys, such as a range's ``n_active``, are left out)."""
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})

    def as_record(self) -> dict:
        """The statistics as a plain dict, in field order: the keys telemetry writes."""
        return dataclasses.asdict(self)


def combine_stats(records) -> dict:
    """The driver's record of a pass from its ranges' records (mappings holding the
    :class:`StepStats` names): :meth:`StepStats.combine` of them, as a dict."""
    return StepStats.combine(StepStats.from_record(r) for r in records).as_record()
