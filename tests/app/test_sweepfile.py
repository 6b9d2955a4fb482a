"""Sweep files: Python ``make_cfgs()``, JSON and TOML lists; bad ones are one line."""

import json
from pathlib import Path

import pytest

from probe_dask.app.sweepfile import read_sweep
from probe_dask.errors import InputError

RUNS = [{"run": "runs/a", "train_shards": "/s/train", "test_shards": "/s/test", "max_iter": 5},
        {"run": "/abs/b", "train_shards": "/s/train", "test_shards": "/s/test", "ridge": 1e-3,
         "name": "b-layer6"}]


def _check(runs, root):
    assert [r.run_id for r in runs] == ["a", "b-layer6"]
    assert runs[0].run == Path(root, "runs", "a").resolve()  # relative to the sweep file
    assert runs[1].run == Path("/abs/b")
    assert runs[0].options == {"max_iter": 5} and runs[1].options == {"ridge": 1e-3}


def test_python_json_toml_agree(tmp_path):
    py = tmp_path / "sweep.py"
    py.write_text(f"def make_cfgs():\n    return {RUNS!r}\n")
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps(RUNS))
    toml = tmp_path / "sweep.toml"
    toml.write_text(
        '[[runs]]\nrun = "runs/a"\ntrain_shards = "/s/train"\ntest_shards = "/s/test"\nmax_iter = 5\n'
        '[[runs]]\nrun = "/abs/b"\ntrain_shards = "/s/train"\ntest_shards = "/s/test"\n'
        'ridge = 1e-3\nname = "b-layer6"\n')
    for path in (py, js, toml):
        _check(read_sweep(path), tmp_path)


def test_overrides_win(tmp_path):
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps(RUNS))
    runs = read_sweep(js, {"max_iter": 2, "ridge": None, "test_shards": "/other/test"})
    assert [r.options.get("max_iter") for r in runs] == [2, 2]
    assert runs[1].options["ridge"] == 1e-3  # None: not given on the command line
    assert {r.test_shards for r in runs} == {Path("/other/test")}


@pytest.mark.parametrize("runs, field", [
    ([{**RUNS[0], "max_iters": 5}], "run 0 (a): max_iters"),
    ([RUNS[0], {k: v for k, v in RUNS[1].items() if k != "test_shards"}], "run 1 (b-layer6): test_shards"),
    ([RUNS[0], {**RUNS[1], "max_iter": 0}], "run 1 (b-layer6): max_iter"),
    ([RUNS[0], {**RUNS[0], "name": "again"}], "run 1 (again)"),
    ([], "runs"),
    ({"run": "x"}, "runs"),
])
def test_bad_sweep_names_file_run_and_key(tmp_path, runs, field):
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps(runs))
    with pytest.raises(InputError) as err:
        read_sweep(js)
    assert str(js) in str(err.value) and field in str(err.value)
    assert "\n" not in str(err.value)


def test_python_errors_are_input_errors(tmp_path):
    py = tmp_path / "sweep.py"
    py.write_text("def make_cfgs():\n    return 1 / 0\n")
    with pytest.raises(InputError, match="make_cfgs.*ZeroDivisionError"):
        read_sweep(py)
    py.write_text("x = 1\n")
    with pytest.raises(InputError, match="make_cfgs: found missing"):
        read_sweep(py)
    with pytest.raises(InputError, match="suffix"):
        read_sweep(tmp_path / "sweep.yaml")
