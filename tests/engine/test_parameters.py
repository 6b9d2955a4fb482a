"""Every declared parameter (``engine.parameters.PARAMETER_CONSTRAINTS``) refuses each of its
constraint's invalid values at ``ProbeFitter.fit``, with a message naming the parameter and
the expectation; every default is accepted; the settings object is checked the same way."""

import pytest

from probe_dask.core.settings import FitSettings
from probe_dask.engine.fit import ProbeFitter
from probe_dask.engine.parameters import PARAMETER_CONSTRAINTS, check_params, check_settings
from probe_dask.engine.shard import open_shard
from probe_dask.errors import InvalidParameterError

CASES = [(name, value) for name, constraint in PARAMETER_CONSTRAINTS.items()
         for value in constraint.invalid_values()]


def test_every_parameter_is_declared_and_has_invalid_values():
    assert set(PARAMETER_CONSTRAINTS) == set(ProbeFitter._get_param_names())
    assert all(len(c.invalid_values()) >= 2 for c in PARAMETER_CONSTRAINTS.values())


@pytest.fixture(scope="module")
def shard(tiny_run):
    return open_shard(tiny_run.run_dir, tiny_run.train_shard)


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_fit_refuses_each_invalid_value_naming_it(shard, name, value):
    fitter = ProbeFitter(**{name: value})  # kept as given; checked at fit
    with pytest.raises(InvalidParameterError) as err:
        fitter.fit(shard.X, shard.y, n_classes=8)  # before any client is looked for
    assert str(err.value) == (f"ProbeFitter: {name}: found {value!r}; "
                              f"expected {PARAMETER_CONSTRAINTS[name]}")


def test_defaults_and_settings_are_accepted():
    check_params("ProbeFitter", ProbeFitter().get_params())  # raises on a refused default
    settings = FitSettings()
    assert check_settings(settings) is settings
    fitter = ProbeFitter.from_settings(settings.replace(ridge=1e-6), keep_state=False)
    assert fitter.get_params() == {**ProbeFitter().get_params(), "ridge": 1e-6,
                                   "keep_state": False}
    # The fitter's own defaults are the settings' (one home).
    assert {k: v for k, v in ProbeFitter().get_params().items()
            if k in FitSettings.field_names()} == settings.fitter_params()


@pytest.mark.parametrize("name", FitSettings.field_names())
def test_settings_refuse_what_the_fitter_refuses(name):
    for value in PARAMETER_CONSTRAINTS[name].invalid_values():
        with pytest.raises(InvalidParameterError, match=rf"^FitSettings: {name}: found "):
            check_settings(FitSettings().replace(**{name: value}))


def test_settings_are_frozen_and_auto_is_none():
    settings = FitSettings(device="auto")
    assert settings.device is None and settings == FitSettings()
    with pytest.raises(AttributeError):
        settings.ridge = 1.0
    with pytest.raises(TypeError):
        settings.replace(alpha=1.0)
