"""``benchmarks/bench_gpu_device.py``, the script for the GPU machine: it runs with torch and
triton only (dask never imported), and reports equal bits run to run and the float64 error,
the warm-up's compile time and the device label sums (equal to the host's, the same bits).
Here under Triton's interpreter on a tiny block; on the GPU it is run by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_device.py"


@pytest.mark.triton
def test_device_script_needs_no_dask_and_gives_the_same_bits(tmp_path):
    out = tmp_path / "device.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--rows", "512",
                           "--latents", "128", "--classes", "3", "--row-nnz", "4",
                           "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dask_imported"] is False and result["same_bits_run_to_run"] is True
    assert result["max_rel_error_vs_float64"] < 1e-5  # float32 transcendentals
    assert result["label_sums_match_host"] is True and result["label_sums_same_bits"] is True
    for key in ("fit_vs_sigmoid", "eval_vs_sigmoid", "replan_ns_per_latent", "warm_up_s",
                "label_sums_s"):
        assert result[key] > 0
