"""Progress of a run: plain lines off a terminal (no carriage return), bars on one."""

import io

from probe_dask.app.progress import Progress
from probe_dask.stages import Stage

EVENTS = [
    (Stage.OPEN, {}), (Stage.INGEST, {"seconds": 0.5}),
    (Stage.LABEL_COUNTS_START, {"n_blocks": 4}),
    (Stage.FIT_START, {"n_pairs": 100, "n_total": 120}),
    (Stage.ITERATION, {"n_iter": 1, "active_before": 100, "active_after": 60, "pass_seconds": 0.1}),
    (Stage.ITERATION, {"n_iter": 2, "active_before": 60, "active_after": 0, "pass_seconds": 0.1}),
    (Stage.FIT_END, {"n_iter": 2, "n_active": 0}),
    (Stage.EVALUATE_TRAIN_START, {}), (Stage.EVALUATE_TRAIN_END, {"seconds": 0.2}),
    (Stage.EVALUATE_TEST_END, {"seconds": 0.3}), (Stage.WRITE_END, {"paths": ["a", "b"]}),
]


def _feed(progress):
    for stage, info in EVENTS:
        progress(stage, info)
    progress.log("WARNING: 3 of 120 pairs did not converge")
    progress.close()


def test_not_a_terminal_one_plain_line_per_stage_and_pass(tmp_path):
    out = io.StringIO()  # not a tty: what sbatch, papermill and a pipe give
    _feed(Progress(out, log_file=tmp_path / "log.txt"))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("solver pass")] == [
        "solver pass 1: 60 pairs active (40 stopped), 0.1 s",
        "solver pass 2: 0 pairs active (60 stopped), 0.1 s"]
    for word in ("ingest:", "label pass:", "solver: 100 of 120 pairs", "evaluate:", "write:"):
        assert any(ln.startswith(word) for ln in lines), word
    logged = (tmp_path / "log.txt").read_text().splitlines()
    assert len(logged) == len(lines) and all(ln[:4].isdigit() and ln[19] == "Z" for ln in logged)


def test_quiet_keeps_warnings_and_the_log_file_keeps_all(tmp_path):
    out = io.StringIO()
    _feed(Progress(out, quiet=True, log_file=tmp_path / "log.txt"))
    assert out.getvalue() == "WARNING: 3 of 120 pairs did not converge\n"
    assert len((tmp_path / "log.txt").read_text().splitlines()) > 8


def test_terminal_bars_count_pairs_not_passes():
    out = io.StringIO()
    progress = Progress(out, bars=True)
    totals = []
    for stage, info in EVENTS[:6]:
        progress(stage, info)
        if stage == Stage.ITERATION:
            totals.append((progress._bar.n, progress._bar.total))
    progress.close()
    # the solver bar starts at the pairs already done and ends at all pairs
    assert totals == [(60, 120), (120, 120)]
    assert "solver" in out.getvalue() and "active=0" in out.getvalue()
