"""scikit-learn's estimator contract on ``ProbeFitter`` (``engine.estimator``): parameters,
clone with and without a real client, repr, fitted state and tags, checked with
scikit-learn's own functions."""

import warnings

import pytest
from distributed import Client, LocalCluster
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

from probe_dask.engine.estimator import REPR_WIDTH
from probe_dask.engine.fit import ProbeFitter
from probe_dask.engine.shard import open_shard
from probe_dask.errors import ConvergenceWarning, InvalidParameterError

ALL_PARAMS = {"ridge", "max_iter", "device", "backend", "persist", "chunk_nnz", "layout_dir",
              "resources",
              "checkpoint", "identity", "progress", "callbacks", "client", "keep_state"}


@pytest.fixture(scope="module")
def thread_client():
    """A real client of an in-process LocalCluster (its workers are threads)."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def test_get_params_round_trip():
    fitter = ProbeFitter(1e-6, 7, persist=False, identity={"x": 1}, callbacks=[print])
    params = fitter.get_params()
    assert set(params) == ALL_PARAMS
    assert params["ridge"] == 1e-6 and params["max_iter"] == 7 and params["persist"] is False
    other = ProbeFitter().set_params(**params)
    assert other.get_params() == params
    assert other.set_params(max_iter=3) is other and other.max_iter == 3 and fitter.max_iter == 7


def test_set_params_unknown_name_raises_naming_it_and_the_valid_ones():
    fitter = ProbeFitter()
    with pytest.raises(InvalidParameterError,
                       match=r"^ProbeFitter: no parameter 'maxiter'; expected one of backend, "):
        fitter.set_params(maxiter=3)
    assert fitter.max_iter == 30  # nothing was set


def test_clone_without_client_copies_parameters():
    callbacks = [print]
    fitter = ProbeFitter(1e-6, 7, identity={"files": ["a.npz"]}, callbacks=callbacks)
    copy = clone(fitter)
    assert type(copy) is ProbeFitter and copy is not fitter
    assert copy.get_params() == fitter.get_params()
    # deep-copied as sklearn.base.clone does: changing the clone's leaves the original's
    assert copy.identity is not fitter.identity
    copy.identity["files"].append("b.npz")
    assert fitter.identity == {"files": ["a.npz"]}
    # callbacks: a new list, the same callables
    assert copy.callbacks is not callbacks and copy.callbacks[0] is print


def test_clone_keeps_a_real_client_by_reference(thread_client):
    fitter = ProbeFitter(max_iter=5, client=thread_client)
    copy = clone(fitter)  # a deep copy would raise: cannot pickle '_asyncio.Task'
    assert copy.client is thread_client and copy.max_iter == 5
    assert clone(copy).client is thread_client


def test_repr_shows_non_default_parameters_sorted():
    assert repr(ProbeFitter()) == "ProbeFitter()"
    assert repr(ProbeFitter(1e-6, 7)) == "ProbeFitter(max_iter=7, ridge=1e-06)"
    # a value equal to the default but built anew is not shown (compared by repr)
    assert repr(ProbeFitter(ridge=float("1e-8"), backend="".join(["au", "to"]))) == \
        "ProbeFitter()"


def test_repr_wraps_under_the_parenthesis(thread_client):
    fitter = ProbeFitter(1e-6, 7, persist=False, layout_dir="/scratch/layouts", resources={"GPU": 1},
                         checkpoint="/scratch/runs/one/checkpoint.npz", progress=True,
                         identity={"files": ["train.npz", "test.npz"]})
    text = repr(fitter)
    lines = text.splitlines()
    assert len(lines) > 1 and all(len(line) <= REPR_WIDTH for line in lines)
    assert all(line.startswith(" " * len("ProbeFitter(")) for line in lines[1:])
    assert text.startswith("ProbeFitter(checkpoint='/scratch/runs/one/checkpoint.npz',")
    assert text.endswith("ridge=1e-06)")
    assert repr(ProbeFitter(client=thread_client)) == f"ProbeFitter(client={thread_client!r})"


def test_check_is_fitted_before_and_after_a_fit(thread_client, tiny_run):
    fitter = ProbeFitter(max_iter=2, client=thread_client)
    with pytest.raises(NotFittedError):
        check_is_fitted(fitter)
    shard = open_shard(tiny_run.run_dir, tiny_run.train_shard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 2 passes: some pairs still active
        assert fitter.fit(shard.X, shard.y, n_classes=8) is fitter
    check_is_fitted(fitter)
    assert fitter.coef_.shape == (128, 8)
    with pytest.raises(NotFittedError):
        check_is_fitted(clone(fitter))  # a clone is unfitted


def test_tags():
    tags = get_tags(ProbeFitter())
    assert tags.target_tags.required and tags.input_tags.sparse and tags.requires_fit
