"""``probe-dask report``: one HTML page with static PNG figures of a finished run.

The page (default ``probe1d_report.html`` beside the train results) shows the run's
provenance, the figures of :mod:`probe_dask.app.figures` (per-class probe R on train and
test, the best latents per class, the loss distribution, convergence) and the latest memory
plot of the run (``probe1d_memory-<stamp>.png``), and the per-class table with names. The
PNGs are files in ``probe1d_report_files/`` beside the page, so the page opens from a
cluster's shared file system, a laptop copy, or JupyterHub's file browser alike. Every file
is written under a temporary name and renamed.

Memory per process: both splits' results (``io.results``) and one figure at a time.
"""

from __future__ import annotations

import logging
import html
from pathlib import Path

from probe_dask.app.figures import (best_latents_figure, convergence_figure, figure_png,
                                    loss_figure, probe_r_figure)
from probe_dask.io.outputs import atomic_path
from probe_dask.io.results import load_class_table, load_results, results_dir_of

__all__ = ["write_report", "REPORT_NAME"]

logger = logging.getLogger(__name__)

REPORT_NAME = "probe1d_report.html"
FIGURES_DIR = "probe1d_report_files"

_PROVENANCE = ("version", "command", "device", "kernel", "started", "finished", "n_latents",
               "n_classes", "solver_passes", "converged_pairs", "pairs", "ridge", "run",
               "train_shard", "test_shard", "host")


def latest_memory_plot(folder):
    """The newest ``probe1d_memory-<stamp>.png`` (or unstamped ``probe1d_memory.png``) in ``folder``."""
    plots = sorted(Path(folder).glob("probe1d_memory*.png"), key=lambda p: p.stat().st_mtime_ns)
    return plots[-1] if plots else None


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _table_html(table) -> str:
    cols = ["name", "best_latent", "train_loss", "test_loss", "train_baseline_ce",
            "train_probe_r", "test_probe_r"]
    head = "".join(f"<th>{c}</th>" for c in ["class", *cols])
    rows = []
    for c, row in table.iterrows():
        cells = [str(c)] + [html.escape(str(row[k])) if k in ("name", "best_latent")
                            else ("" if row[k] != row[k] else f"{row[k]:.4f}") for k in cols]
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(run, train_shards, test_shards, *, out=None, results_dirs=None,
                 log=None) -> Path:
    """Write the HTML report of a finished run; return its path.

    Parameters
    ----------
    run, train_shards, test_shards : path
        As given to ``probe-dask fit``.
    out : path, optional
        The HTML file (default: ``probe1d_report.html`` beside the train results); its
        figures go to ``probe1d_report_files/`` beside it.
    results_dirs : (path, path), optional
        The train and test results folders when they are not the run's inference folders
        (``fit --out DIR``: ``DIR/<shard_id>``).
    log : callable, optional
        Receives one line naming the page (default: this module's logger, at INFO).
    """
    log = logger.info if log is None else log
    if results_dirs is None:
        results_dirs = (results_dir_of(run, train_shards), results_dir_of(run, test_shards))
    train_dir, test_dir = map(Path, results_dirs)
    train = load_results(results_dir=train_dir)
    test = load_results(results_dir=test_dir)
    table = load_class_table(results_dir=train_dir)
    out = Path(out) if out is not None else train_dir / REPORT_NAME
    figs_dir = out.parent / FIGURES_DIR
    figs_dir.mkdir(parents=True, exist_ok=True)

    sections = _write_figures(figs_dir, train, test, table, train_dir)
    page = _page(run, train.attrs, train_dir, test_dir, sections, table)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log(f"report: {out} ({len(sections)} figures in {figs_dir})")
    return out


def _write_figures(figs_dir: Path, train, test, table, train_dir: Path) -> list[tuple[str, str]]:
    """Every figure of the page as a PNG in ``figs_dir``, the run's latest memory plot
    among them when there is one; returns ``(title, src)`` of each, in page order."""
    figures = [
        ("probe_r.png", "Per-class probe R (train bars, test dots)", probe_r_figure(table)),
        ("best_latents.png", "Best latents per class", best_latents_figure(train, table)),
        ("loss.png", "Loss distribution", loss_figure(train, test, table)),
        ("convergence.png", "Convergence", convergence_figure(train)),
    ]
    sections = []
    for name, title, fig in figures:
        _write_bytes(figs_dir / name, figure_png(fig))
        sections.append((title, f"{FIGURES_DIR}/{name}"))
    memory = latest_memory_plot(train_dir)
    if memory is not None:
        _write_bytes(figs_dir / "memory.png", memory.read_bytes())
        sections.append((f"Memory over time ({memory.name})", f"{FIGURES_DIR}/memory.png"))
    stale = figs_dir / "memory.png"
    if memory is None and stale.exists():
        stale.unlink()  # a plot of an earlier report must not pass as this run's
    return sections


def _page(run, attrs, train_dir: Path, test_dir: Path, sections, table) -> str:
    """The HTML page: provenance, the figures' sections and the per-class table."""
    prov = "".join(f"<tr><th>{k}</th><td>{html.escape(str(attrs[k]))}</td></tr>"
                   for k in _PROVENANCE if k in attrs)
    body = "\n".join(
        f'<section><h2>{html.escape(t)}</h2><img src="{html.escape(src)}" '
        f'alt="{html.escape(t)}"></section>' for t, src in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>probe-dask report: {html.escape(Path(str(attrs.get('run', run))).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
img{{max-width:100%;border:1px solid #ddd}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}</style></head>
<body><h1>probe-dask report</h1>
<p>train results: {html.escape(str(train_dir))}<br>test results: {html.escape(str(test_dir))}</p>
<table class="provenance">{prov}</table>
{body}
<section><h2>Per-class table</h2>{_table_html(table)}</section>
</body></html>
"""
