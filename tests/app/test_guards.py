"""Tests of app/guards.py: flags that would make a run crawl are refused before anything
starts, with the numbers and the override named (one line, exit 2)."""

import pytest

from probe_dask.app.guards import check_block_count, check_local_threads
from probe_dask.errors import ProbeDaskError
from probe_dask.testing.runner import run_cli, stderr_lines
from probe_dask.testing.synthetic import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """About 4,000 rows (3,072 train), 190k non-zeros: --block-nnz 1 makes 4,077 blocks
    (a 3,192-block run of this kind took 285 s instead of 6 s)."""
    return make_run(tmp_path_factory.mktemp("guards-run"), n_train_examples=24, n_test_examples=8,
                    tokens_per_example=128, d_sae=512, n_classes=24, mean_nnz_per_row=48, seed=5,
                    n_planted=6)


def _fit(run, *extra):
    return run_cli("fit", "--run", run.run_dir, "--train-shards", run.train_shard,
                   "--test-shards", run.test_shard, *extra, timeout=120)


def _one_error(r):
    errors = [ln for ln in stderr_lines(r) if ln.startswith("probe-dask: error: ")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "dashboard" not in r.stderr and r.stdout == ""  # no cluster was started
    return errors[0]


def test_block_nnz_so_small_it_needs_thousands_of_blocks(run):
    r = _fit(run, "--block-nnz", "1")
    line = _one_error(r)
    print(f"exit {r.returncode} in {r.seconds:.1f} s: {line}")
    assert "--block-nnz 1: the run needs" in line and "--allow-many-blocks" in line
    assert r.seconds < 30


def test_more_worker_threads_than_cores(run):
    r = _fit(run, "--workers", "64")
    line = _one_error(r)
    print(f"exit {r.returncode} in {r.seconds:.1f} s: {line}")
    assert "--workers 64 x --threads 1 = 64 worker threads on" in line
    assert "--allow-oversubscribe" in line and r.seconds < 30


def test_local_threads_rule():
    check_local_threads("local", 2, 1, cores=2)
    check_local_threads("local", None, None, cores=2)  # Dask's choice fits the machine
    check_local_threads("slurm:gpu", 64, 4, cores=2)  # jobs ask for their own cores
    check_local_threads("local", 64, 1, cores=2, allow=True)
    with pytest.raises(ProbeDaskError, match="= 4 worker threads on 2 cores"):
        check_local_threads("local", 2, 2, cores=2)
    with pytest.raises(ProbeDaskError, match=r"--workers 1 x --threads 3 = 3 worker threads"):
        check_local_threads("local", None, 3, cores=2)


class _Shard:
    def __init__(self, n_blocks, nnz):
        self.row_blocks, self.nnz = [(0, 1)] * n_blocks, nnz


class _Inputs:
    def __init__(self, train, test):
        self.train, self.test = _Shard(*train), _Shard(*test)


def test_block_count_rule():
    check_block_count(_Inputs((900, 9_000), (100, 1_000)), 10)  # 1,000 small blocks: allowed
    check_block_count(_Inputs((9_000, 9 * 10**10), (1_000, 10**10)), 10**7)  # 10,000 big ones
    check_block_count(_Inputs((5_000, 5_000), (5_000, 5_000)), None)  # the plan's size: never
    check_block_count(_Inputs((5_000, 5_000), (5_000, 5_000)), 1, allow=True)
    with pytest.raises(ProbeDaskError, match=r"1,001 blocks .* --block-nnz 65536 or more"):
        check_block_count(_Inputs((901, 9_010), (100, 1_000)), 10)
    with pytest.raises(ProbeDaskError, match="more than 10,000 blocks"):
        check_block_count(_Inputs((9_001, 9 * 10**10), (1_000, 10**10)), 10**7)
