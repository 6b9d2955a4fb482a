"""Checks before a job: train and test differ; results are replaced only when asked."""

import os

import pytest

from probe_dask.errors import ProbeDaskError
from probe_dask.io.preflight import check_distinct_shards, check_no_results, split_out_dirs

NAMES = ("probe1d_metrics.npz", "probe1d_classes.json")


def test_same_shard_refused_after_resolving(tmp_path):
    shard = tmp_path / "shards" / "a1b2"
    shard.mkdir(parents=True)
    (tmp_path / "link").symlink_to(shard)
    for other in (shard, tmp_path / "shards" / ".." / "shards" / "a1b2", tmp_path / "link"):
        with pytest.raises(ProbeDaskError, match="--test-shards is the train shard"):
            check_distinct_shards(shard, other)
    other = tmp_path / "shards" / "c3d4"
    other.mkdir()
    check_distinct_shards(shard, other)


def test_existing_results_refused_unless_overwrite_or_resuming(tmp_path):
    dirs = [tmp_path / "train", tmp_path / "test"]
    for d in dirs:
        d.mkdir()
    check_no_results(dirs, NAMES)  # nothing there yet
    (dirs[1] / NAMES[1]).write_text("{}")
    with pytest.raises(ProbeDaskError) as err:
        check_no_results(dirs, NAMES)
    msg = str(err.value)
    assert msg.startswith(os.fspath(dirs[1] / NAMES[1])) and "--overwrite" in msg
    assert "\n" not in msg
    check_no_results(dirs, NAMES, overwrite=True)
    check_no_results(dirs, NAMES, resuming=True)


def test_out_puts_each_split_under_its_shard_id(tmp_path):
    assert split_out_dirs(tmp_path, ["a1", "b2"]) == [tmp_path / "a1", tmp_path / "b2"]
