"""``probe-dask report``: a fitted run's HTML page, loaded in headless Chromium, shows its figures.

The run is fitted by the CLI with ``--class-names``; the page is then written by the CLI
and opened by Debian's chromium (``--dump-dom`` for the DOM after load, ``--screenshot`` for
the pixels). Marker ``browser``.
"""

import re
import subprocess
import shutil

import numpy as np
import pytest
from matplotlib.image import imread

from probe_dask.io.results import load_results
from probe_dask.testing.runner import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chromium(chromium, *args, timeout=120):
    # A profile of its own per call: two tests (or engineers) never share one.
    return subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox",
                           "--hide-scrollbars", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.browser
def test_report_page_shows_its_figures_in_chromium(tiny_run, chromium, tmp_path):
    shutil.copytree(tiny_run.root, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    train = tmp_path / "copy" / "shards" / tiny_run.train_id
    test = tmp_path / "copy" / "shards" / tiny_run.test_id
    names = [f"thing {i}" for i in range(tiny_run.n_classes)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    data = ("--run", run, "--train-shards", train, "--test-shards", test)
    proc = run_cli("fit", *data, "--workers", 1, "--max-iter", 40,
                   "--class-names", tmp_path / "names.txt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the names travel with the results
    ds = load_results(run, train)
    assert list(ds["class_name"].to_numpy()) == names
    assert ds.attrs["converged_stored"] == 1

    proc = run_cli("report", *data, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = run / "inference" / tiny_run.train_id / "probe1d_report.html"
    assert proc.stdout.strip().splitlines()[-1] == str(page)

    dom = _chromium(chromium, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    srcs = re.findall(r'<img src="([^"]+)"', dom.stdout)
    assert len(srcs) == 5, dom.stdout[:3000]  # probe R, best latents, loss, convergence, memory
    for src in srcs:
        data_png = (page.parent / src).read_bytes()
        assert data_png.startswith(PNG_MAGIC), src
        img = imread(page.parent / src)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.01, src
    assert "thing 3" in dom.stdout  # named classes in the table
    assert "Per-class probe R" in dom.stdout and "Convergence" in dom.stdout

    shot = tmp_path / "shot.png"
    proc = _chromium(chromium, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    # not blank: many distinct colours, and far from all-white
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert (pixels.mean(axis=2) < 0.9).mean() > 0.02


def test_class_names_of_the_wrong_count_are_one_error_line(tiny_run, tmp_path):
    from probe_dask.testing.runner import assert_one_error_line

    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    proc = run_cli("fit", "--run", tiny_run.run_dir, "--train-shards", tiny_run.train_shard,
                   "--test-shards", tiny_run.test_shard, "--out", tmp_path / "out",
                   "--class-names", names)
    assert_one_error_line(proc, str(names), f"found 2 names; expected {tiny_run.n_classes}")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npz"))
