"""What a parameter accepts, declared once (as scikit-learn's ``_param_validation``).

A constraint says whether a value is accepted (:meth:`Constraint.is_satisfied_by`), what
it expects in words (``str``: the "expected ..." of an error message) and gives values it
must refuse (:meth:`Constraint.invalid_values`), so that a parameter's check, its error
message and the tests' bad values all come from one declaration. :class:`AnyOf` joins
constraints (``None`` or an integer >= 1). Pure: NumPy only (its bool), no dask.

Memory per process: nothing (small objects, built once at import).
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

__all__ = ["Constraint", "Interval", "Options", "Booleans", "PathLike", "Instance",
           "Callables", "IndexedName", "AnyOf", "NONE", "check_value"]


def _is_bool(value) -> bool:
    # NumPy's bool_ is no ``bool`` subclass, and a bool is an int to Python.
    return isinstance(value, (bool, np.bool_))


def _either(words) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


class Constraint:
    """What one parameter accepts; subclasses define the three methods."""

    def is_satisfied_by(self, value) -> bool:
        """Whether ``value`` is accepted."""
        raise NotImplementedError

    def __str__(self) -> str:
        """What is expected, in words: ``expected <this>``."""
        raise NotImplementedError

    def invalid_values(self) -> list:
        """Values this constraint refuses (each a case of the tests)."""
        raise NotImplementedError

    def alternatives(self) -> list[str]:
        """The words of ``str``, one per accepted alternative (``AnyOf`` lists them all
        in one ``a, b or c``)."""
        return [str(self)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self}>"


class Interval(Constraint):
    """A real or integral number between ``left`` and ``right`` (None: unbounded).

    Parameters
    ----------
    kind : numbers.Real or numbers.Integral
        Integral refuses floats; Real refuses NaN and infinities. Neither takes a bool.
    left, right : number or None
    closed : {"left", "right", "both", "neither"}
        Which bounds belong to the interval.
    """

    def __init__(self, kind, left=None, right=None, *, closed="left"):
        if kind not in (numbers.Real, numbers.Integral):
            raise ValueError(f"kind: found {kind!r}; expected numbers.Real or numbers.Integral")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"closed: found {closed!r}; expected left, right, both or neither")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def _bound_ok(self, value) -> bool:
        if self.left is not None:
            inside = value >= self.left if self.closed in ("left", "both") else value > self.left
            if not inside:
                return False
        if self.right is not None:
            return value <= self.right if self.closed in ("right", "both") else value < self.right
        return True

    def is_satisfied_by(self, value) -> bool:
        if _is_bool(value) or not isinstance(value, self.kind):
            return False
        if self.kind is numbers.Real and not math.isfinite(value):
            return False
        return self._bound_ok(value)

    def __str__(self) -> str:
        what = "an integer" if self.kind is numbers.Integral else "a finite number"
        parts = []
        if self.left is not None:
            parts.append(f"{'>=' if self.closed in ('left', 'both') else '>'} {self.left}")
        if self.right is not None:
            parts.append(f"{'<=' if self.closed in ('right', 'both') else '<'} {self.right}")
        return " ".join([what, " and ".join(parts)]) if parts else what

    def invalid_values(self) -> list:
        bad = [True, str(self.left if self.left is not None else 1), None]
        for bound, side in ((self.left, "left"), (self.right, "right")):
            if bound is None:
                continue
            if self.closed not in (side, "both"):
                bad.append(bound)  # an open bound itself
            step = 1 if side == "right" else -1
            bad.append(bound + step)  # beyond the bound
        if self.kind is numbers.Integral:
            bad.append((self.left if self.left is not None else 0) + 1.5)
        else:
            bad += [float("nan"), float("inf"), float("-inf")]
        return [v for v in bad if not self.is_satisfied_by(v)]


class Options(Constraint):
    """One of ``values``, of type ``kind`` (``Options(str, ("cpu", "cuda"))``)."""

    def __init__(self, kind, values):
        self.kind, self.values = kind, tuple(values)

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, self.kind) and not _is_bool(value) and value in self.values

    def alternatives(self) -> list[str]:
        return [f'"{v}"' if isinstance(v, str) else repr(v) for v in self.values]

    def __str__(self) -> str:
        return _either(self.alternatives())

    def invalid_values(self) -> list:
        first = self.values[0]
        bad = [f"{first}x", 1.5, True] if isinstance(first, str) else [str(first), None]
        return [v for v in bad if not self.is_satisfied_by(v)]


class _Exactly(Constraint):
    """The one value ``None``."""

    def is_satisfied_by(self, value) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"

    def invalid_values(self) -> list:
        return [0, ""]


#: ``None`` (for ``AnyOf(NONE, ...)``: optional parameters).
NONE = _Exactly()


class Booleans(Constraint):
    """True or False (NumPy's bool_ too); ``words`` spell them in messages (a JSON or
    TOML file's ``true`` and ``false``)."""

    def __init__(self, words=("True", "False")):
        self.words = tuple(words)

    def is_satisfied_by(self, value) -> bool:
        return _is_bool(value)

    def alternatives(self) -> list[str]:
        return list(self.words)

    def __str__(self) -> str:
        return _either(self.alternatives())

    def invalid_values(self) -> list:
        return ["yes", 1, None]


class PathLike(Constraint):
    """A path: a ``str`` or an ``os.PathLike``, not empty; ``text`` names it in messages."""

    def __init__(self, text: str = "a path"):
        self.text = text

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, (str, os.PathLike)) and bool(os.fspath(value))

    def __str__(self) -> str:
        return self.text

    def invalid_values(self) -> list:
        return [3, "", ["a"]]


class Instance(Constraint):
    """An instance of ``kind``; ``text`` names it in messages (``"a dict"``)."""

    def __init__(self, kind, text: str):
        self.kind, self.text = kind, text

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        return self.text

    def invalid_values(self) -> list:
        return [v for v in ("tcp://127.0.0.1:8786", ["a"], 1) if not self.is_satisfied_by(v)]


class Callables(Constraint):
    """A list (or tuple) of callables."""

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(callable(c) for c in value)

    def __str__(self) -> str:
        return "a list of callables"

    def invalid_values(self) -> list:
        return [[1], print, "print"]


class IndexedName(Constraint):
    """``<prefix>:<index>``, the index a non-negative integer (``cuda:1``)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def is_satisfied_by(self, value) -> bool:
        head = f"{self.prefix}:"
        return (isinstance(value, str) and value.startswith(head)
                and value[len(head):].isascii() and value[len(head):].isdigit())

    def __str__(self) -> str:
        return f'"{self.prefix}:<index>"'

    def invalid_values(self) -> list:
        return [f"{self.prefix}:", f"{self.prefix}:x", f"{self.prefix}:-1"]


class AnyOf(Constraint):
    """Accepted when any of ``constraints`` accepts it (``AnyOf(NONE, Interval(...))``)."""

    def __init__(self, *constraints: Constraint):
        self.constraints = constraints

    def is_satisfied_by(self, value) -> bool:
        return any(c.is_satisfied_by(value) for c in self.constraints)

    def alternatives(self) -> list[str]:
        return [word for c in self.constraints for word in c.alternatives()]

    def __str__(self) -> str:
        return _either(self.alternatives())

    def invalid_values(self) -> list:
        bad = [v for c in self.constraints for v in c.invalid_values()]
        unique = {repr(v): v for v in bad if not self.is_satisfied_by(v)}
        return list(unique.values())


def check_value(constraint: Constraint, value) -> str | None:
    """None when ``constraint`` accepts ``value``, else ``found <value>; expected <words>``
    (the tail of the one-line error every caller raises with its own prefix)."""
    if constraint.is_satisfied_by(value):
        return None
    return f"found {value!r}; expected {constraint}"
