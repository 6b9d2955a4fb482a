"""How a stopped run ends (app/requeue.py): the walltime signal requeues a Slurm job only when
there is something to resume; elsewhere SIGUSR1 ends a run like SIGTERM; a requeued job's
rerun does not repeat ``--restart``; a refused requeue says why (real ``scontrol``).

The requeue itself, on the real local Slurm with a fit that spans two runs of one job, is
tests/cluster/test_requeue.py.
"""

import io
import signal

import pytest

from probe_dask.app.requeue import after_stop, requeue_job, restart_applies
from probe_dask.app.signals import SIGNALS, Stopped


def never(job_id):
    raise AssertionError(f"requeued {job_id}")


@pytest.fixture
def keep_handlers():
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_sigusr1_outside_slurm_ends_like_sigterm(tmp_path):
    out = io.StringIO()
    status = after_stop(Stopped(signal.SIGUSR1), tmp_path / "ckpt.npz", env={}, requeue=never,
                        out=out)
    assert status == 128 + signal.SIGUSR1
    assert out.getvalue() == ("probe-dask: stopped by SIGUSR1 before the first checkpoint; rerun "
                              "the same command to start again\n")


def test_sigterm_in_slurm_is_not_requeued(tmp_path):
    out = io.StringIO()
    status = after_stop(Stopped(signal.SIGTERM), None, env={"SLURM_JOB_ID": "7"}, requeue=never,
                        out=out)
    assert status == 143 and out.getvalue().startswith("probe-dask: stopped by SIGTERM")


def test_walltime_after_the_results_were_written_is_not_requeued():
    out = io.StringIO()
    status = after_stop(Stopped(signal.SIGUSR1), None, finished=True, env={"SLURM_JOB_ID": "7"},
                        requeue=never, out=out)
    assert status == 0
    assert "after the results were written; Slurm job 7 is not requeued" in out.getvalue()


def test_requeued_rerun_drops_restart():
    assert restart_applies(True, {})
    assert restart_applies(True, {"SLURM_RESTART_COUNT": "0"})
    assert not restart_applies(True, {"SLURM_RESTART_COUNT": "1"})
    assert not restart_applies(False, {})


@pytest.mark.slurm
def test_refused_requeue_says_why_and_how_to_resume(slurm, tmp_path, keep_handlers):
    why = requeue_job("999999999")  # no such job: the real scontrol refuses
    assert why is not None and why.startswith("scontrol requeue 999999999: "), why
    out = io.StringIO()
    status = after_stop(Stopped(signal.SIGUSR1), None, env={"SLURM_JOB_ID": "999999999"},
                        out=out)
    line = out.getvalue()
    assert status == 138
    assert line.startswith("probe-dask: stopped by SIGUSR1 before the first checkpoint; rerun the "
                           "same command to start again (could not requeue: scontrol requeue "
                           "999999999: "), line
