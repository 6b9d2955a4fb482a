"""Blocks streamed to the device one ahead (``kernels.streaming``), under the Triton
interpreter on CPU (on CUDA with pinned memory and a stream of their own)."""

import os
import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch

# Before probe_dask.kernels.triton_backend is imported: triton reads it when it decorates kernels.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from probe_dask import kernels as K  # noqa: E402
from probe_dask.kernels import LatentBlock  # noqa: E402
from probe_dask.kernels.streaming import device_blocks  # noqa: E402
from probe_dask.testing.reference import subset_pairs  # noqa: E402

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def host_blocks(n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        X = sp.random(40, 6, density=0.3, random_state=seed + i, dtype=np.float32, format="csr")
        out.append(LatentBlock.from_csr(X, rng.integers(0, 3, 40).astype(np.uint8)))
    return out


def streamer_threads():
    return [t for t in threading.enumerate() if t.name == "probe-dask-stream-blocks"]


def test_blocks_arrive_in_order_as_device_copies():
    blocks = host_blocks()
    got = list(device_blocks(iter(blocks), DEV))
    assert len(got) == len(blocks)
    for host, dev in zip(blocks, got):
        np.testing.assert_array_equal(dev.latent_ptr, host.latent_ptr)
        np.testing.assert_array_equal(dev.values.cpu().numpy(), host.values)
        np.testing.assert_array_equal(dev.rows.cpu().numpy(), host.rows)
        np.testing.assert_array_equal(dev.labels.cpu().numpy(), host.labels)
    assert not streamer_threads()


def test_a_failing_read_raises_at_its_turn_and_stops_the_thread():
    blocks = host_blocks(3)

    def reads():
        yield blocks[0]
        raise OSError("disk gone")

    stream = device_blocks(reads(), DEV)
    assert next(stream).values.shape[0] == blocks[0].nnz
    with pytest.raises(OSError, match="disk gone"):
        next(stream)
    assert not streamer_threads()


def test_closing_early_stops_the_thread():
    stream = device_blocks(iter(host_blocks(6)), DEV)
    next(stream)
    stream.close()
    assert not streamer_threads()


def test_streamed_sums_equal_host_sums():
    blocks = host_blocks(3, seed=5)
    rng = np.random.default_rng(1)
    b, w = rng.normal(0, 1, (6, 3)), rng.normal(0, 1, (6, 3))
    pairs = subset_pairs(b, w, rng.random(b.shape) < 0.7)
    for fn in (K.fit_sums, K.eval_sums):
        host = sum(fn(blk, pairs, DEV, backend="triton") for blk in blocks)
        streamed = None
        for dblk in K.stream_blocks(iter(blocks), DEV, "triton"):
            streamed = fn(dblk, pairs, DEV, backend="triton", out=streamed)
        np.testing.assert_allclose(streamed, host, rtol=1e-12, atol=1e-300)


def test_other_backends_get_the_blocks_unchanged():
    blocks = iter(host_blocks(2))
    assert K.stream_blocks(blocks, "cpu", "c") is blocks
