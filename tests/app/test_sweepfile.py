"""Sweep files: Python ``make_cfgs()``, JSON and TOML lists; bad ones are one line."""

import json
from pathlib import Path

import pytest

from probe_dask.app.sweepfile import RUN_CONSTRAINTS, parse_set, read_sweep, run_settings
from probe_dask.core.settings import FitSettings
from probe_dask.engine.parameters import PARAMETER_CONSTRAINTS
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


def test_lists_and_set_make_the_product_in_order(tmp_path):
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps([{**RUNS[0], "ridge": [1e-8, 1e-6]}, RUNS[1]]))
    runs = read_sweep(js, sweeps={"max_iter": [10, 30]})
    # Run 0: its ridge list x --set max_iter (max_iter fastest); run 1: --set only.
    got = [(r.run_id, r.options.get("ridge"), r.options["max_iter"]) for r in runs]
    assert got == [("a", 1e-8, 10), ("a", 1e-8, 30), ("a", 1e-6, 10), ("a", 1e-6, 30),
                   ("b-layer6", 1e-3, 10), ("b-layer6", 1e-3, 30)]
    assert [r.index for r in runs] == list(range(6))
    assert runs[2].swept == {"ridge": 1e-6, "max_iter": 10}
    assert runs[2].label == "run 2 (a, ridge=1e-06, max_iter=10)"
    # Every swept run has a folder of its own, named by its settings, under OUT/results.
    assert runs[2].out == tmp_path / "results" / "a__ridge=1e-06__max_iter=10"
    assert len({r.out for r in runs}) == 6


def test_same_run_twice_gets_two_folders_and_unswept_runs_stay_in_the_run(tmp_path):
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps([RUNS[0], {**RUNS[0], "ridge": 1e-6}, RUNS[1]]))
    runs = read_sweep(js, out=tmp_path / "out")
    assert [r.out for r in runs] == [tmp_path / "out" / "results" / "a__max_iter=5",
                                     tmp_path / "out" / "results" / "a__ridge=1e-06__max_iter=5",
                                     None]
    assert [r.swept for r in runs] == [{}, {}, {}]


@pytest.mark.parametrize("text, field", [
    ("ridge", "no '='"), ("alpha=1", "the key 'alpha'"), ("ridge=1e-8,", "an empty value"),
])
def test_bad_set_is_one_line(text, field):
    with pytest.raises(InputError) as err:
        parse_set(text)
    assert str(err.value).startswith(f"--set: {text}: found {field}")


def test_set_values_are_checked_like_the_files(tmp_path):
    assert parse_set("max-iter=3,5") == ("max_iter", [3, 5])
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps(RUNS))
    with pytest.raises(InputError, match=r"run 0 \(a\): max_iter: found 'x'"):
        read_sweep(js, sweeps=dict([parse_set("max_iter=3,x")]))
    with pytest.raises(InputError, match="both --set ridge"):
        read_sweep(js, {"ridge": 1e-3}, {"ridge": [1e-4]})
    js.write_text(json.dumps([{**RUNS[0], "ridge": []}]))
    with pytest.raises(InputError, match="ridge: found an empty list"):
        read_sweep(js)


def _json_able(value) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


#: Every invalid value a JSON file can hold, of every key a run may have.
BAD_VALUES = [(key, value) for key, constraint in RUN_CONSTRAINTS.items()
              for value in constraint.invalid_values() if _json_able(value)]


@pytest.mark.parametrize("key, value", BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_each_invalid_value_names_file_run_key_and_expectation(tmp_path, key, value):
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps([{**RUNS[0], key: value}]))
    with pytest.raises(InputError) as err:
        read_sweep(js)
    where = "run 0" if key == "run" else "run 0 (a)"
    assert str(err.value) == (f"{js}: {where}: {key}: found {value!r}; "
                              f"expected {RUN_CONSTRAINTS[key]}")


def test_fit_settings_keys_take_the_fitters_constraints_and_defaults(tmp_path):
    for key in ("ridge", "max_iter"):
        assert RUN_CONSTRAINTS[key] is PARAMETER_CONSTRAINTS[key]
    js = tmp_path / "sweep.json"
    js.write_text(json.dumps([{**RUNS[0], "device": "cpu"}, RUNS[1]]))
    runs = read_sweep(js)
    base = FitSettings(backend="c", max_iter=7)
    assert run_settings(runs[0], base) == FitSettings(ridge=FitSettings.ridge, max_iter=5,
                                                      device="cpu", backend="c")
    assert run_settings(runs[1], base) == FitSettings(ridge=1e-3, max_iter=7, backend="c")
