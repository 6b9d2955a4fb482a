"""The memory plot (telemetry/plot.py): a PNG of the run, drawn without touching the caller's
matplotlib backend or pyplot's figures."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from probe_dask.stages import Stage
from probe_dask.telemetry.plot import plot_memory
from probe_dask.telemetry.state import Mark, Roster, Sample, Timeline

GIB = 2**30


def _timeline():
    tl = Timeline()
    for t in range(10):
        tl.add_sample(Sample(float(t), GIB + t * 2**20, {"w0": (2 * GIB, GIB, 0)}))
    tl.marks.append(Mark(3.0, Stage.FIT_START, 2 * GIB, {"w0": 3 * GIB}))
    tl.marks.append(Mark(8.0, Stage.FIT_END, 2 * GIB, {"w0": 3 * GIB}))
    roster = Roster(workers={"w0": {"address": "tcp://x:1", "pid": 1, "memory_limit": 4 * GIB}})
    return tl, roster


def test_plot_is_a_png_of_one_panel_per_worker_and_the_driver(tmp_path):
    tl, roster = _timeline()
    path = plot_memory(tmp_path / "memory.png", tl, roster)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    # 10 x (2.2 * 2 panels + 0.6) inches at 90 dpi
    assert img.shape[:2] == (450, 900)
    assert len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 20  # lines drawn, not blank


# Run in a fresh interpreter: the backend is process-wide state, and the test must choose it
# before matplotlib does (as a notebook does: inline) without changing it for other tests.
_CALLER = textwrap.dedent("""
    import sys
    import matplotlib
    matplotlib.use("svg")  # the caller's choice: not Agg
    import matplotlib.pyplot as plt
    mine = plt.figure()
    from probe_dask.telemetry.plot import plot_memory
    sys.path.insert(0, sys.argv[2])
    from test_plot import _timeline
    plot_memory(sys.argv[1], *_timeline())
    print(matplotlib.get_backend(), plt.get_fignums(), plt.gcf() is mine)
""")


def test_plot_leaves_the_callers_backend_and_figures_alone(tmp_path):
    out = tmp_path / "memory.png"
    proc = subprocess.run([sys.executable, "-c", _CALLER, str(out), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["svg", "[1]", "True"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

