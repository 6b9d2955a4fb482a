"""Constraint objects (``core.constraints``): each refuses the values it generates, accepts
the values it names, and says what it expects in the words the error messages use."""

import numbers
from pathlib import Path

import numpy as np
import pytest

from probe_dask.core.constraints import (NONE, AnyOf, Booleans, Callables, IndexedName, Instance,
                                         Interval, Options, PathLike, check_value)

#: (constraint, values it must accept, its words).
CASES = [
    (Interval(numbers.Real, 0, None, closed="neither"), [1e-8, 3, np.float32(0.5)],
     "a finite number > 0"),
    (Interval(numbers.Integral, 1, None, closed="left"), [1, 30, np.int64(2)], "an integer >= 1"),
    (Interval(numbers.Real, 0, 1, closed="both"), [0, 0.5, 1.0],
     "a finite number >= 0 and <= 1"),
    (Interval(numbers.Integral, None, 5, closed="neither"), [-3, 4], "an integer < 5"),
    (Options(str, ("auto", "cpu")), ["auto", "cpu"], '"auto" or "cpu"'),
    (Booleans(), [True, False, np.bool_(True)], "True or False"),
    (Booleans(words=("true", "false")), [False], "true or false"),
    (PathLike(), ["a", Path("/x")], "a path"),
    (Instance(dict, "a dict"), [{}, {"GPU": 1}], "a dict"),
    (Callables(), [[], [print], (len, print)], "a list of callables"),
    (IndexedName("cuda"), ["cuda:0", "cuda:12"], '"cuda:<index>"'),
    (AnyOf(NONE, Options(str, ("auto", "cpu")), IndexedName("cuda")), [None, "cpu", "cuda:1"],
     'None, "auto", "cpu" or "cuda:<index>"'),
    (AnyOf(Options(str, ("auto",)), Booleans()), ["auto", True], '"auto", True or False'),
]


@pytest.mark.parametrize("constraint, good, words", CASES, ids=[c[2] for c in CASES])
def test_refuses_its_invalid_values_and_accepts_the_rest(constraint, good, words):
    assert str(constraint) == words
    bad = constraint.invalid_values()
    assert len(bad) >= 2  # every constraint is tested on more than one kind of mistake
    for value in bad:
        assert not constraint.is_satisfied_by(value), value
        assert check_value(constraint, value) == f"found {value!r}; expected {words}"
    for value in good:
        assert constraint.is_satisfied_by(value), value
        assert check_value(constraint, value) is None


def test_interval_bounds_and_kinds():
    positive = Interval(numbers.Real, 0, None, closed="neither")
    assert not positive.is_satisfied_by(0) and positive.is_satisfied_by(5e-324)
    for value in (float("nan"), float("inf"), True, "1", None):
        assert not positive.is_satisfied_by(value)
    integer = Interval(numbers.Integral, 1, 3, closed="both")
    assert [integer.is_satisfied_by(v) for v in (0, 1, 3, 4, 2.0)] == [False, True, True, False,
                                                                       False]
    with pytest.raises(ValueError, match="closed"):
        Interval(numbers.Real, 0, closed="open")
    with pytest.raises(ValueError, match="kind"):
        Interval(int, 0)


def test_options_refuse_a_bool_and_another_type():
    assert not Options(int, (0, 1)).is_satisfied_by(True)  # True == 1, but it is no option
    assert not Options(str, ("cpu",)).is_satisfied_by(["cpu"])
    assert IndexedName("cuda").invalid_values() == ["cuda:", "cuda:x", "cuda:-1"]
    assert not IndexedName("cuda").is_satisfied_by("cuda:\u0661")  # a digit, not ASCII


def test_any_of_lists_each_refused_value_once():
    constraint = AnyOf(NONE, Interval(numbers.Integral, 1, None))
    bad = constraint.invalid_values()
    assert len({repr(v) for v in bad}) == len(bad)
    assert None not in bad and 0 in bad and "" in bad
