"""notebooks/probe_slurm.ipynb runs top to bottom, unattended, against the local Slurm.

The notebook is executed with nbclient in a fresh ipykernel (this interpreter, so the worker
jobs run the same ``sys.executable``). Parameters are injected the way papermill does it: a
cell tagged ``injected-parameters`` is inserted after the cell tagged ``parameters``. They
point the notebook at a small synthetic run and shrink the ``cpu`` profile to this machine
(2 jobs of 1 core and 1.5 GiB; worker lifetime inside a 10-minute walltime). The executed
notebook is saved beside the run (``executed.ipynb``) for inspection.

Needs a running Slurm (marker ``slurm``).
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "probe_slurm.ipynb"
ROOT_YAML = ROOT / "jobqueue.yaml"
JOB_NAME = "pd-test-notebook"


def inject_parameters(nb, params: dict):
    """Insert a cell after the ``parameters`` cell, as papermill does."""
    import nbformat

    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    src = "# Parameters injected by tests/test_notebook.py\n" + "".join(
        f"{k} = {v!r}\n" for k, v in params.items())
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))


def outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            data = out["data"]
            parts.append(data.get("text/markdown") or data.get("text/plain", ""))
    return "".join(parts)


def test_notebook_runs_unattended_on_slurm(slurm, tmp_path, capsys):
    import nbformat
    from nbclient import NotebookClient

    from probe_dask.cluster import slurm_profile
    from probe_dask.testing.synthetic import make_run

    run = make_run(tmp_path / "data", n_train_examples=8, n_test_examples=4, tokens_per_example=64,
                   d_sae=128, n_classes=8, mean_nnz_per_row=32, seed=3, n_planted=4)
    _, prof = slurm_profile("cpu", jobqueue_config=ROOT_YAML)
    args = list(prof["worker_extra_args"])
    args[args.index("--lifetime") + 1] = "8m"
    args[args.index("--lifetime-stagger") + 1] = "1m"
    overrides = dict(cores=1, memory="1536MiB", walltime="00:10:00", worker_extra_args=args,
                     job_name=JOB_NAME, log_directory=str(tmp_path / "slurm-logs"),
                     scheduler_options={"dashboard_address": ":0"})
    params = dict(run_dir=str(run.run_dir), train_shards=str(run.train_shard),
                  test_shards=str(run.test_shard), profile="cpu", jobs=2,
                  jobqueue_config=str(ROOT_YAML), cluster_overrides=overrides, max_iter=10,
                  wait_timeout=120, memory_sample_interval=0.2)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    inject_parameters(nb, params)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        wall = time.perf_counter() - t0
        nbformat.write(nb, tmp_path / "executed.ipynb")
        # A failed cell leaves the kernel's jobs to its atexit hook; make sure here.
        subprocess.run(["scancel", "--name", JOB_NAME], check=False, capture_output=True)

    texts = [outputs_text(c) for c in nb.cells if c.cell_type == "code"]
    every = "\n".join(texts)
    scale = re.search(r"scale\(jobs=2\) -> 2 workers ready in ([0-9.]+) s", every)
    with capsys.disabled():
        print(f"\nnotebook ran top to bottom in {wall:.1f} s (nbclient, fresh kernel, 2 Slurm jobs)"
              f"; scale -> ready {scale.group(1) if scale else '?'} s; executed copy: "
              f"{tmp_path / 'executed.ipynb'}")
    assert scale, every[-3000:]
    # The kernel (and so every worker job) runs this interpreter.
    assert f"python (the worker jobs run the same): {sys.executable}" in every
    assert "#SBATCH -J " + JOB_NAME in every and "export DASK_CONFIG=" in every  # job script
    # make_cluster's default TLS: the job script names key files, never key material, and
    # the workers (printed by address) joined over tls://.
    assert "--tls-key" in every and "PRIVATE KEY" not in every, every[-3000:]
    assert re.search(r"^\s+tls://\S+\s+threads", every, re.MULTILINE), every[-3000:]
    assert re.search(r"http://[^\s]+/status", every)  # dashboard link
    assert "/proxy/" in every  # the jupyter-server-proxy form

    # The per-class table: a header and one row per class.
    table_cell = next(t for t in texts if t.lstrip().startswith("class latent"))
    rows = table_cell.strip().splitlines()
    assert rows[0].split()[:3] == ["class", "latent", "train"]
    assert [int(r.split()[0]) for r in rows[1:]] == list(range(run.n_classes))

    # The memory plot was drawn from samples and shown.
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 5  # the report's four figures (below) and the memory plot
    fig_cell = next(c for c in nb.cells if "probe_r_figure(classes)" in c.source)
    shown = [o["data"]["image/png"] for o in fig_cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == 4 and all(len(png) > 10_000 for png in shown)
    train_dir = Path(run.run_dir) / "inference" / run.train_id
    assert (train_dir / "probe1d_notebook_memory.png").stat().st_size > 10_000

    for shard_id in (run.train_id, run.test_id):
        path = Path(run.run_dir) / "inference" / shard_id / "probe1d_metrics.npz"
        with np.load(path) as f:
            assert {"loss", "weights", "biases", "tp", "fp", "tn", "fn"} <= set(f.files)
            assert f["loss"].shape == (run.d_sae, run.n_classes)
            assert np.isfinite(f["loss"]).all()
    assert "worker jobs still queued or running: none" in every
