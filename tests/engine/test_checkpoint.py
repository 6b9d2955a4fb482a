"""The checkpoint file (``engine.checkpoint``): streamed from latent ranges (the file
``np.savez`` writes of the whole state), read back whole or a range at a time, never
waited for by the next pass, and refused in one line when it is not the fit's."""

import threading

import numpy as np
import pytest

from probe_dask.core.state import TrustRegionState
from probe_dask.engine.checkpoint import Checkpoint, CheckpointMoved, load_range, stored_pass
from probe_dask.errors import ProbeDaskError

FIELDS = TrustRegionState.FLOAT_FIELDS + TrustRegionState.BOOL_FIELDS


def _state(n_latents=7, n_classes=3, n_iter=4):
    rng = np.random.default_rng(n_latents)
    return TrustRegionState(**{n: rng.normal(size=(n_latents, n_classes))
                               for n in TrustRegionState.FLOAT_FIELDS},
                            **{n: rng.random((n_latents, n_classes)) > 0.5
                               for n in TrustRegionState.BOOL_FIELDS}, n_iter=n_iter)


def _savez(path, state, identity="{}"):
    """The file of ``state`` written whole by numpy itself: the reference format."""
    np.savez(path, identity=np.array(identity), **state.to_dict(copy=False))


def _bounds_reader(state, bounds):
    return lambda n: (getattr(state, n)[a:z] for a, z in bounds)


def _same(a, b):
    return a.n_iter == b.n_iter and all(
        np.array_equal(getattr(a, n), getattr(b, n), equal_nan=True) for n in FIELDS)


def test_streamed_from_ranges_is_the_file_of_the_whole_state(tmp_path):
    state = _state()
    whole = Checkpoint(tmp_path / "whole.npz", "{}")
    parts = Checkpoint(tmp_path / "parts.npz", "{}")
    _savez(whole.path, state)
    assert parts.save_parts(4, (7, 3), _bounds_reader(state, [(0, 2), (2, 5), (5, 7)]))
    parts.wait()
    for path in (whole.path, parts.path):
        assert stored_pass(path) == 4
    assert _same(parts.load(), state) and _same(whole.load(), state)
    with np.load(whole.path) as a, np.load(parts.path) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype
    got = load_range(parts.path, "{}", 4, 2, 5)
    assert _same(got, state.latent_slice(2, 5))
    with pytest.raises(CheckpointMoved, match="no longer pass 3"):
        load_range(parts.path, "{}", 3, 2, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.npz", "whole.npz"]


def test_a_short_stream_leaves_the_previous_checkpoint_whole(tmp_path):
    ckpt = Checkpoint(tmp_path / "c.npz", "{}")
    ckpt.save_parts(2, (7, 3), _bounds_reader(_state(n_iter=2), [(0, 7)]))
    ckpt.wait()
    ckpt.save_parts(3, (7, 3), lambda n: iter([getattr(_state(), n)[:5]]))  # 5 rows of 7
    with pytest.raises(ValueError, match="5 rows; expected 7"):
        ckpt.wait()
    assert stored_pass(ckpt.path) == 2 and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_other_input_or_a_damaged_file_is_refused_in_one_line(tmp_path):
    ckpt = Checkpoint(tmp_path / "c.npz", '{"input": {"x": 1}}')
    _savez(ckpt.path, _state(), '{"input": {"x": 1}}')
    with pytest.raises(ProbeDaskError, match=r"other input or settings \(differs in input.x\)"):
        Checkpoint(ckpt.path, '{"input": {"x": 2}}').load()
    with np.load(ckpt.path) as f:  # a field missing
        np.savez(tmp_path / "short.npz", **{k: f[k] for k in f.files if k != "budget"})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, why in (("short.npz", "no budget"), ("junk.npz", "ValueError")):
        with pytest.raises(ProbeDaskError, match=rf"checkpoint unreadable .*({why}).*--restart"):
            Checkpoint(tmp_path / name, '{"input": {"x": 1}}').load()
        with pytest.raises(ProbeDaskError, match="checkpoint unreadable"):
            load_range(tmp_path / name, '{"input": {"x": 1}}', 4, 0, 1)


def test_a_pass_ending_while_a_write_is_in_flight_does_not_wait_for_it(tmp_path):
    """The write of pass 1 is held up (a slow file system); pass 2 ends meanwhile: its
    write is skipped at once, and the file then holds pass 1, whole. The next write, once
    the first is done, goes through."""
    ckpt = Checkpoint(tmp_path / "c.npz", "{}")
    release = threading.Event()
    state = _state(n_iter=1)

    def slow(name):
        release.wait(30)
        yield getattr(state, name)

    assert ckpt.save_parts(1, (7, 3), slow) is True
    assert ckpt.busy()
    assert ckpt.save_parts(2, (7, 3), _bounds_reader(state, [(0, 7)])) is False  # no wait
    release.set()
    ckpt.wait()
    assert not ckpt.busy() and stored_pass(ckpt.path) == 1
    assert _same(ckpt.load(), state)
    assert ckpt.save_parts(3, (7, 3), _bounds_reader(state, [(0, 3), (3, 7)])) is True
    ckpt.wait()
    assert stored_pass(ckpt.path) == 3 and [p.name for p in tmp_path.iterdir()] == ["c.npz"]
