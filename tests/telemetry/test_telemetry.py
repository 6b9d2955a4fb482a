"""Telemetry: strict JSON lines with memory at every stage, solver stats, plan vs measured,
a memory plot, and the command line's files beside the results."""

import json
import math
import shutil
import sys
import types

import numpy as np
import pytest
from distributed import Client, LocalCluster

from probe_dask.app.job import open_inputs, run_job
from probe_dask.stages import (DRIVER_PLAN_STAGE, DRIVER_STAGES, MEASURED, WORKER_PLAN_STAGES, WORKER_STAGES,
                               Stage)
from probe_dask.telemetry import (MEMORY_PLOT_NAME, PERFORMANCE_REPORT_NAME, TELEMETRY_NAME, Telemetry,
                                  memory_plot_path, read_telemetry, run_telemetry, strict_json,
                                  worker_memory)
from probe_dask.telemetry.plot import stage_markers
from probe_dask.testing.runner import run_cli


def _strict_load(path):
    def bad(token):
        raise ValueError(f"not strict JSON: {token}")

    with open(path) as f:
        return [json.loads(line, parse_constant=bad) for line in f]


def test_strict_json_makes_nan_and_numpy_plain():
    obj = {"a": float("nan"), "b": [np.float64("inf"), np.int64(3), np.bool_(True)],
           "c": np.array([1.5, np.nan]), 4: np.float32(2.5), "d": -math.inf}
    out = strict_json(obj)
    assert out == {"a": None, "b": [None, 3, True], "c": [1.5, None], "4": 2.5, "d": None}
    json.dumps(out, allow_nan=False)


def test_stage_mapping_covers_every_plan_stage():
    # every plan stage is measured by a run stage that takes a memory reading
    assert {st for sts in WORKER_PLAN_STAGES.values() for st in sts} == set(WORKER_STAGES)
    assert set(DRIVER_PLAN_STAGE.values()) == set(DRIVER_STAGES)
    assert set(WORKER_PLAN_STAGES) | set(DRIVER_PLAN_STAGE) <= MEASURED
    # str enum: compares, hashes and serialises as its value
    assert Stage.WRITE_END == "write_end" and {"write_end": 1}[Stage.WRITE_END] == 1
    assert json.dumps(strict_json({Stage.FIT: [Stage.WRITE_END]})) == '{"fit": ["write_end"]}'


def test_worker_memory_reports_gpu_peak_where_torch_used_cuda(monkeypatch):
    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                 device_count=lambda: 2, memory_allocated=lambda d: 10 + d,
                                 max_memory_allocated=lambda d: 1000 * (d + 1))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    got = worker_memory()
    assert got["gpu_peak_allocated"] == 2000 and got["gpu_allocated"] == 21
    assert got["rss"] > 0 and got["stage_peak_rss"] >= got["rss"] // 2


@pytest.fixture
def fresh_client():
    """Workers of this test alone: their RSS is not inflated by earlier tests' data."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="3GB") as cluster, Client(cluster) as client:
        yield client


def test_telemetry_of_a_job(fresh_client, tiny_run, tmp_path):
    local_client = fresh_client
    outs = [tmp_path / "train", tmp_path / "test"]
    inputs = open_inputs(tiny_run.run_dir, tiny_run.train_shard, tiny_run.test_shard, out_dirs=outs)
    tele = Telemetry(tmp_path / TELEMETRY_NAME, interval=0.1)
    tele.host_mem("open")
    tele.attach(local_client)
    result = run_job(local_client, inputs, max_iter=5, callbacks=[tele], log=lambda m: None)
    summary = tele.close()
    events = _strict_load(tmp_path / TELEMETRY_NAME)
    assert events == read_telemetry(tmp_path / TELEMETRY_NAME)
    kinds = {e["event"] for e in events}
    assert {"host_mem", "iteration", "plan", "sample", "summary"} <= kinds
    stages = [e["stage"] for e in events if e["event"] == "host_mem"]
    assert stages[:3] == ["open", "label_counts_start", "fit_start"]
    assert stages[-5:] == ["evaluate_train_start", "evaluate_train_end", "evaluate_test_end",
                           "write_end", "end"]
    assert stages.count("iteration") == result.n_iter
    for e in events:
        if e["event"] == "host_mem" and e["stage"] != "open":
            assert e["driver"]["rss"] > 0 and e["driver"]["peak_rss"] >= e["driver"]["stage_peak_rss"] > 0
            assert len(e["workers"]) == 2
            for w in e["workers"].values():
                for key in ("rss", "peak_rss", "stage_peak_rss", "managed", "unmanaged", "spilled",
                            "memory_limit", "status"):
                    assert key in w, key
                assert 0 < w["rss"] <= w["peak_rss"] + 2**20 and w["memory_limit"] == 3 * 10**9
    iters = [e for e in events if e["event"] == "iteration"]
    assert [e["passes"] for e in iters] == list(range(1, result.n_iter + 1))
    for e, h in zip(iters, result.fitter.history_):
        for key in ("active_pairs", "max_gradient", "max_scaled_step", "mean_damping", "mean_loss",
                    "pass_seconds"):
            assert key in e, key
        assert e["active_pairs"] == h["active_after"] and e["max_gradient"] == pytest.approx(h["max_grad"])
    plan = next(e for e in events if e["event"] == "plan")
    assert plan["fits"] and plan["worker_peak"] > 0 and plan["worker"] and plan["driver"]
    # the summary sets the measured peaks beside the plan's
    assert summary["worker_restarts"] == 0 and summary["workers_under_limit"]
    assert summary["predicted"]["worker_peak"] == plan["worker_peak"]
    measured = summary["measured"]
    assert set(measured["workers"]) == set(next(e for e in events if e.get("stage") == "end")["workers"])
    assert 0.3 < summary["measured_over_predicted"]["worker"] < 1.5
    # The driver here is the pytest process, which holds whatever earlier tests loaded: only a
    # lower bound means something (a fresh driver is compared in benchmarks/bench_memory.py).
    assert summary["measured_over_predicted"]["driver"] > 0.3
    assert set(summary["worker_peak_by_stage"]) == {"label_train", "fit", "eval_train",
                                                     "label_test+eval_test"}
    assert set(summary["driver_peak_by_stage"]) == set(DRIVER_STAGES)
    png = tmp_path / MEMORY_PLOT_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the plot marks the start and end of the fit, each evaluation, and the end of writing
    assert [st for _, st in stage_markers(tele.timeline)] == [
        "fit_start", "fit_end", "evaluate_train_start", "evaluate_train_end", "evaluate_test_end",
        "write_end"]


def test_telemetry_counts_a_worker_restart(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        tele = Telemetry(tmp_path / "t.jsonl", interval=0)
        tele.attach(client)
        tele.host_mem("before")
        client.restart()
        client.wait_for_workers(1)
        tele.host_mem("after")
        summary = tele.close()
    assert summary["worker_restarts"] == 1
    assert [e["worker_restarts"] for e in read_telemetry(tmp_path / "t.jsonl")
            if e["event"] == "host_mem"][:2] == [0, 1]


def test_cli_writes_telemetry_plot_and_performance_report(tiny_run, tmp_path):
    shutil.copytree(tiny_run.root, tmp_path / "copy")
    run, shards = tmp_path / "copy" / "run", tmp_path / "copy" / "shards"
    out = run / "inference" / tiny_run.train_id
    before = set(run_telemetry(out))  # the shared tiny run may hold other tests' runs
    proc = run_cli("fit", "--run", run, "--train-shards", shards / tiny_run.train_id, "--test-shards",
                   shards / tiny_run.test_id, "--workers", "2", "--memory-limit", "2GB", "--max-iter", "4",
                   "--performance-report", "--telemetry-interval", "0.2", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # probe1d_telemetry-<UTC stamp>.jsonl: one new file per run, earlier ones kept
    (path,) = [p for p in run_telemetry(out) if p not in before]
    assert before <= set(run_telemetry(out))
    assert path.name.startswith("probe1d_telemetry-") and path.name.endswith("Z.jsonl")
    events = _strict_load(path)
    stages = [e["stage"] for e in events if e["event"] == "host_mem"]
    assert stages[:5] == ["open", "ingest", "cluster", "label_counts_start", "fit_start"]
    assert stages[-2:] == ["write_end", "end"] and stages.count("iteration") >= 1
    assert events[-1]["event"] == "summary" and events[-1]["worker_restarts"] == 0
    assert memory_plot_path(path).stat().st_size > 1000
    assert (out / PERFORMANCE_REPORT_NAME).read_text().lstrip().lower().startswith("<!doctype html")
    assert "memory: peak RSS of a worker" in proc.stderr and "planned" in proc.stderr
    # nothing of the telemetry lands beside the test results
    assert not run_telemetry(run / "inference" / tiny_run.test_id)


def test_cli_no_telemetry_flag():
    from probe_dask.app.cli import build_parser

    base = ["fit", "--run", "r", "--train-shards", "a", "--test-shards", "b"]
    assert build_parser().parse_args(base).telemetry is True
    args = build_parser().parse_args([*base, "--no-telemetry"])
    assert args.telemetry is False and args.performance_report is None
