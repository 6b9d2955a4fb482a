"""scikit-learn's estimator contract, without depending on scikit-learn.

``ProbeEstimator`` gives a subclass what ``sklearn.base.BaseEstimator`` would: parameters
read from ``__init__``'s signature (``get_params`` / ``set_params``), a repr that shows the
parameters which differ from their defaults, ``__sklearn_clone__``, ``__sklearn_is_fitted__``
and ``__sklearn_tags__``. scikit-learn is only a test dependency, so it is imported lazily,
by ``__sklearn_tags__`` alone, which only scikit-learn (>= 1.6) calls.

A subclass follows scikit-learn's rules: ``__init__`` stores every argument unchanged as an
attribute of the same name (checked at ``fit``, not there), and fitted attributes end in
``_``.

Memory per process: nothing (no data; a clone copies the parameters, not fitted state).
"""

from __future__ import annotations

import copy
import inspect

from probe_dask.errors import InvalidParameterError

__all__ = ["ProbeEstimator"]

#: Width at which the repr wraps its parameters onto more lines (as scikit-learn's).
REPR_WIDTH = 78


class ProbeEstimator:
    """Base class of the probe estimators: scikit-learn's parameter, clone, repr and
    fitted-state contract.

    Parameters are kept as given; a clone deep-copies them (as ``sklearn.base.clone``)
    except those in :attr:`_shared_params`, which stay shared with the original: a
    ``distributed.Client`` holds sockets and asyncio tasks (it cannot be copied, and a
    copy would be a second connection), and callbacks usually record into something the
    caller reads afterwards.
    """

    #: Parameters a clone shares with the original (lists of them are copied, their items
    #: are not).
    _shared_params = frozenset({"client", "callbacks"})

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def _init_signature(cls) -> list[inspect.Parameter]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [p for p in params if p.name != "self" and p.kind != p.VAR_KEYWORD]

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The parameters of ``__init__``, sorted (as ``sklearn.base.BaseEstimator``)."""
        return sorted(p.name for p in cls._init_signature())

    @classmethod
    def from_settings(cls, settings, **params):
        """An estimator with ``settings``' fields (``settings.fitter_params()``, e.g. a
        ``core.settings.FitSettings``) and the other parameters ``params``."""
        return cls(**settings.fitter_params(), **params)

    def get_params(self, deep=True) -> dict:
        """Every ``__init__`` parameter and its value.

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn's API; no parameter is an estimator, so it changes
            nothing.

        Returns
        -------
        dict
            Parameter name to value.
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters by name (checked at ``fit``).

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            (a ValueError) A name that is not a parameter of ``__init__``.
        """
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise InvalidParameterError(f"{type(self).__name__}: no parameter {name!r}; "
                                            f"expected one of {', '.join(valid)}")
            setattr(self, name, value)
        return self

    # -- scikit-learn protocols ------------------------------------------------------------
    def __sklearn_clone__(self):
        """A new, unfitted estimator with the same parameters (``sklearn.base.clone``).

        Parameters are deep-copied except :attr:`_shared_params` (the client is kept by
        reference: it cannot be pickled or deep-copied).
        """
        params = {}
        for name, value in self.get_params(deep=False).items():
            if name not in self._shared_params:
                value = copy.deepcopy(value)
            elif isinstance(value, list):
                value = list(value)  # a list the clone may change alone, same callables
            params[name] = value
        return type(self)(**params)

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` has set attributes (their names end in ``_``), as
        ``sklearn.utils.validation.check_is_fitted`` decides by default."""
        return any(name.endswith("_") and not name.startswith("__") for name in vars(self))

    def __sklearn_tags__(self):
        """scikit-learn's tags (``sklearn.utils.Tags``, scikit-learn >= 1.6).

        ``fit`` needs ``y``, takes 2D sparse input, and validates its own input (dask
        arrays of CSR row blocks), so scikit-learn's common checks, which fit on NumPy
        arrays without a cluster, are skipped.
        """
        from sklearn.utils import InputTags, Tags, TargetTags  # test-only dependency

        return Tags(estimator_type=None, target_tags=TargetTags(required=True),
                    input_tags=InputTags(two_d_array=True, sparse=True), no_validation=True,
                    _skip_test=True)

    # -- repr ------------------------------------------------------------------------------
    def _changed_params(self) -> dict:
        """The parameters whose value differs from ``__init__``'s default, sorted by name
        (as scikit-learn's repr). Compared by identity then repr, not ``==`` (arrays,
        clients)."""
        changed = {}
        for p in sorted(self._init_signature(), key=lambda p: p.name):
            value = getattr(self, p.name)
            default = p.default
            if default is p.empty or (value is not default and repr(value) != repr(default)):
                changed[p.name] = value
        return changed

    def __repr__(self) -> str:
        """``Name(param=value, ...)`` with the non-default parameters, wrapped at
        :data:`REPR_WIDTH` columns and indented under the opening parenthesis."""
        name = type(self).__name__
        items = [f"{k}={v!r}" for k, v in self._changed_params().items()]
        one_line = f"{name}({', '.join(items)})"
        if len(one_line) <= REPR_WIDTH:
            return one_line
        indent = " " * (len(name) + 1)
        lines, line = [], ""
        for item in items:
            candidate = f"{line}, {item}" if line else item
            if line and len(indent) + len(candidate) + 1 > REPR_WIDTH:
                lines.append(line + ",")
                line = item
            else:
                line = candidate
        lines.append(line)
        return name + "(" + ("\n" + indent).join(lines) + ")"
