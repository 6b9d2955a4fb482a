"""The whole job on a real LocalCluster: files, formats, and numbers against dense float64."""

import json

import dask
import numpy as np
import pytest

from probe_dask.app.job import (CHECKPOINT_NAME, CLASSES_NAME, METRICS_NAME, open_inputs,
                                persist_setting, run_job)
from probe_dask.core.settings import FitSettings
from probe_dask.errors import InvalidParameterError, ProbeDaskError
from probe_dask.testing.reference import dense_shard
from probe_dask.testing.reference import dense_metrics


def test_job_writes_what_the_notebooks_read(local_client, tiny_run, tmp_path):
    outs = [tmp_path / "train", tmp_path / "test"]
    inputs = open_inputs(tiny_run.run_dir, tiny_run.train_shard, tiny_run.test_shard,
                         out_dirs=outs, block_nnz=2500)
    result = run_job(local_client, inputs, max_iter=40, log=lambda msg: None)
    b, w = result.fitter.intercept_, result.fitter.coef_
    L, C = b.shape
    assert (L, C) == (128, 8)
    for out, shard in zip(outs, (tiny_run.train_shard, tiny_run.test_shard)):
        with np.load(out / METRICS_NAME) as f:
            assert sorted(f.files) == sorted(["loss", "weights", "biases", "tp", "fp", "tn", "fn", "converged"])
            for key in f.files:
                dtype = np.bool_ if key == "converged" else np.float32
                assert f[key].dtype == dtype and f[key].shape == (L, C), key
            np.testing.assert_array_equal(f["weights"], w.astype(np.float32))
            np.testing.assert_array_equal(f["biases"], b.astype(np.float32))
            X, y = dense_shard(tiny_run.run_dir, shard)
            loss, counts = dense_metrics(X, y, b, w)
            np.testing.assert_allclose(f["loss"], loss, rtol=2e-6, atol=1e-8)
            for key in ("tp", "fp", "tn", "fn"):
                np.testing.assert_array_equal(f[key], counts[key], err_msg=key)
        table = json.loads((out / CLASSES_NAME).read_text())
        assert len(table["classes"]) == C and table["summary"]["n_classes"] == C
        assert not (out / CHECKPOINT_NAME).exists()
        assert sorted(p.name for p in out.iterdir()) == sorted([METRICS_NAME, CLASSES_NAME])

    # the per-class table: best latent on train, R = 1 - loss / baseline, on both splits
    with np.load(outs[0] / METRICS_NAME) as tr, np.load(outs[1] / METRICS_NAME) as te:
        best = np.argmin(tr["loss"], axis=0)
        row = result.table[1]
        assert row["best_latent"] == best[1]
        assert row["test_loss"] == np.float32(te["loss"][best[1], 1])
    planted = dict((c, l) for l, c in tiny_run.planted)
    for c, l in planted.items():  # planted latents are found
        assert result.table[c]["best_latent"] == l, (c, l)
        assert result.table[c]["test_probe_r"] > 0.1


@pytest.mark.parametrize("value, want", [("auto", "auto"), (True, True), ("false", False),
                                         (" True ", True), (False, False)])
def test_persist_setting_reads_the_config(value, want):
    with dask.config.set({"probe-dask.engine.persist": value}):
        assert persist_setting() == want


def test_persist_setting_refuses_other_values():
    with dask.config.set({"probe-dask.engine.persist": "sometimes"}), \
            pytest.raises(ProbeDaskError, match=r"'probe-dask.engine.persist': found 'sometimes'; "
                                                r"expected auto, true or false"):
        persist_setting()


@pytest.mark.parametrize("changes", [{"ridge": 0.0}, {"max_iter": 0}, {"backend": "cuda"},
                                     {"device": "gpu"}])
def test_bad_settings_stop_the_job_before_anything(changes):
    """The settings are checked first: no client or input is touched (both None here)."""
    name, = changes
    with pytest.raises(InvalidParameterError, match=rf"^FitSettings: {name}: found "):
        run_job(None, None, **changes)
    with pytest.raises(InvalidParameterError, match=rf"^FitSettings: {name}: found "):
        run_job(None, None, FitSettings().replace(**changes))
    with pytest.raises(TypeError):
        run_job(None, None, alpha=1.0)  # no such setting
