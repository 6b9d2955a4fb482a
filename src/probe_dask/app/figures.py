"""The figures of a probe run's results: static matplotlib figures, one function each.

What ``probe-dask report`` puts on its page and the notebook shows inline: per-class probe
R on train and test (sorted, named), the best latents of each class, the distribution of
the per-pair losses, and convergence (pairs still iterating after each solver pass, i.e.
how many passes each pair took; the converged share per class). Each function takes what
``io.results`` loads and returns a ``matplotlib.figure.Figure`` drawn without pyplot (no
GUI backend, safe on a headless node); :func:`figure_png` renders one to PNG bytes.

Memory per process: one ``(L, C)`` float64 matrix at a time (probe R of every pair) and the
figure being drawn.
"""

from __future__ import annotations

import io
import json

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["probe_r_figure", "best_latents_figure", "loss_figure", "convergence_figure",
           "figure_png"]

_DPI = 100
_TRAIN, _TEST = "#1f77b4", "#d62728"


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _labels(table) -> list[str]:
    return [f"{c} {n}" for c, n in zip(table.index, table["name"])]


def _tall(n_rows: int) -> float:
    """Height in inches that gives every class its own readable row."""
    return max(3.0, 0.15 * n_rows + 1.2)


def probe_r_figure(table) -> Figure:
    """Probe R of each class's best latent on train (bars) and test (dots), sorted, named.

    ``table`` is :func:`probe_dask.io.results.load_class_table`'s DataFrame.
    """
    order = table.sort_values(["train_probe_r", "test_probe_r"], ascending=True,
                              na_position="first")
    y = np.arange(len(order))
    fig = Figure(figsize=(8, _tall(len(order))), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    ax.barh(y, order["train_probe_r"].fillna(0.0), color=_TRAIN, alpha=0.6, label="train")
    # A class rare in test can have R far below 0 there; clip at -1 so the rest stays legible
    # and mark the clipped classes at the left edge.
    test_r = order["test_probe_r"].to_numpy(dtype=float)
    low = test_r < -1.0
    ax.plot(np.where(low, np.nan, test_r), y, "o", color=_TEST, markersize=3, label="test")
    if low.any():
        ax.plot(np.full(int(low.sum()), -1.0), y[low], "<", color=_TEST, markersize=4,
                label="test, R < -1")
    ax.set_xlim(-1.05, 1.0)
    ax.set_yticks(y, _labels(order), fontsize=6)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("probe R = 1 - loss / baseline cross-entropy (best latent of the class)")
    ax.set_title("Per-class probe R, sorted by train")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def pair_probe_r(ds, table, split: str = "train") -> np.ndarray:
    """``1 - loss / baseline`` of every pair, ``(L, C)`` (NaN for a class absent from ``split``)."""
    base = table[f"{split}_baseline_ce"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 - ds["loss"].to_numpy().astype(float) / base[None, :]
    r[:, ~(base > 0)] = np.nan
    return r


def best_latents_figure(train, table, k: int = 5) -> Figure:
    """For every class, its ``k`` best latents by train loss: train probe R as colour, ids as text.

    Rows are the classes in the order of :func:`probe_r_figure` (best at the top).
    """
    r = pair_probe_r(train, table, "train")
    k = min(k, r.shape[0])
    loss = train["loss"].to_numpy()
    best = np.argsort(loss, axis=0, kind="stable")[:k].T  # (C, k): lowest train loss first
    order = np.argsort(np.nan_to_num(table["train_probe_r"].to_numpy(dtype=float), nan=-np.inf),
                       kind="stable")[::-1]
    vals = np.take_along_axis(r.T, best, axis=1)[order]
    fig = Figure(figsize=(2.2 + 1.3 * k, _tall(len(order))), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(vals, aspect="auto", cmap="viridis", vmin=min(0.0, np.nanmin(vals, initial=0)),
                   vmax=max(1e-9, np.nanmax(vals, initial=0)), interpolation="nearest")
    for i, c in enumerate(order):
        for j in range(k):
            ax.text(j, i, str(best[c, j]), ha="center", va="center", fontsize=5,
                    color="white" if not vals[i, j] > 0.5 * np.nanmax(vals) else "black")
    labels = _labels(table)
    ax.set_yticks(np.arange(len(order)), [labels[c] for c in order], fontsize=6)
    ax.set_xticks(np.arange(k), [f"#{j + 1}" for j in range(k)])
    ax.set_xlabel("rank by train loss (text: latent index)")
    ax.set_title(f"The {k} best latents of each class")
    fig.colorbar(im, ax=ax, label="train probe R", shrink=0.5)
    return fig


def loss_figure(train, test=None, table=None) -> Figure:
    """Distribution of the per-pair losses on train (and test): all pairs, and best per class."""
    fig = Figure(figsize=(9, 3.4), dpi=_DPI, layout="constrained")
    ax_all, ax_best = fig.subplots(1, 2)
    splits = [("train", train, _TRAIN)] + ([("test", test, _TEST)] if test is not None else [])
    finite = np.concatenate([s["loss"].to_numpy().ravel() for _, s, _ in splits])
    finite = finite[np.isfinite(finite)]
    hi = float(finite.max()) if finite.size else 1.0
    bins = np.linspace(0.0, hi if hi > 0 else 1.0, 60)
    for name, split, colour in splits:
        loss = split["loss"].to_numpy()
        ax_all.hist(loss[np.isfinite(loss)].ravel(), bins=bins, histtype="step", color=colour,
                    label=name)
        ax_best.hist(np.nanmin(loss, axis=0) if name == "train" else
                     loss[np.nanargmin(train["loss"].to_numpy(), axis=0),
                          np.arange(loss.shape[1])],
                     bins=30, histtype="step", color=colour, label=name)
    ax_all.set_yscale("log")
    ax_all.set_title(f"Loss of every pair ({finite.size // len(splits):,} per split)")
    ax_best.set_title("Loss of each class's best latent")
    for ax in (ax_all, ax_best):
        ax.set_xlabel("mean negative log-likelihood")
        ax.legend()
    ax_all.set_ylabel("pairs")
    ax_best.set_ylabel("classes")
    return fig


def active_after_pass(summary: dict):
    """``(passes, active pairs after each)`` stored in a run's summary; None if not stored."""
    raw = summary.get("active_after_pass")
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not raw:
        return None
    arr = np.asarray(raw, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def convergence_figure(train, summary=None) -> Figure:
    """Convergence: pairs still active after each pass (passes per pair) and converged share.

    Left: how many pairs the solver was still iterating after each pass (the drop at a pass
    is the number of pairs that took that many passes), when the run stored it; right: the
    share of converged pairs per class.
    """
    summary = dict(summary if summary is not None else train.attrs)
    conv = train["converged"].to_numpy()
    fig = Figure(figsize=(9, 3.4), dpi=_DPI, layout="constrained")
    ax_pass, ax_cls = fig.subplots(1, 2)
    curve = active_after_pass(summary)
    total = conv.size
    if curve is not None:
        passes, active = curve
        ax_pass.step(np.r_[0, passes], np.r_[total, active], where="post", color=_TRAIN)
        ax_pass.set_yscale("symlog", linthresh=1)
        ax_pass.set_xlabel("solver pass")
        ax_pass.set_ylabel("pairs still active")
        ax_pass.set_title("Pairs still iterating after each pass")
    else:
        ax_pass.text(0.5, 0.5, "passes per pair not stored in this run\n"
                     f"({summary.get('solver_passes', '?')} solver passes)",
                     ha="center", va="center", transform=ax_pass.transAxes)
        ax_pass.set_axis_off()
    share = conv.mean(axis=0)
    ax_cls.bar(np.arange(share.size), share, width=1.0, color=_TRAIN)
    ax_cls.set_ylim(0, 1.02)
    ax_cls.set_xlabel("class")
    ax_cls.set_ylabel("converged share of its latents")
    ax_cls.set_title(f"{int(conv.sum()):,} of {total:,} pairs converged "
                     f"({summary.get('solver_passes', '?')} passes)", fontsize=10)
    return fig
