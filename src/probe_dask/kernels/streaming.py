"""Blocks streamed to the GPU while it computes: the next block is read and copied during
the current block's kernel.

A pass over blocks that do not stay on the GPU (read from disk every pass, or beyond
``gpu-resident-fraction``) would otherwise alternate: read a block, copy it, compute,
read the next. :func:`device_blocks` runs the reading and the copying in a helper thread,
one block ahead: the thread takes the next host block from the iterable (reading it from
disk), stages it in page-locked memory and copies it to the device on a CUDA stream of its
own (``triton_backend.to_device(pinned=True)``), waits for that copy on its stream only,
and hands the :class:`~probe_dask.kernels.triton_backend.DeviceBlock` over, while the
caller's thread runs the kernel of the previous block on the default stream. Under
``TRITON_INTERPRET=1`` on CPU (the tests) there are no streams; the thread still reads
ahead.

Memory per process: up to ``lookahead + 1`` blocks on the device and on the host besides
the one being computed (one block ahead by default: twice a block's ``8 nnz + n_rows``
bytes on each side), and the page-locked staging copy of the block in flight.
"""

from __future__ import annotations

import queue
import threading

import torch

from probe_dask.kernels import triton_backend as tb

__all__ = ["device_blocks"]

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _hand_over(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` in ``out`` when there is room; False when the consumer stopped first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(blocks, dev, out: queue.Queue, stop: threading.Event) -> None:
    """The helper thread: read, copy, hand over; stops when asked or at the end."""
    stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    try:
        for block in blocks:
            if stream is not None:
                with torch.cuda.stream(stream):
                    item = tb.to_device(block, dev, pinned=True)
                stream.synchronize()  # this thread waits; the GPU keeps computing
            else:
                item = tb.to_device(block, dev)
            del block
            if not _hand_over(out, item, stop):
                return
        item = _DONE
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        item = _Failed(exc)
    _hand_over(out, item, stop)


def device_blocks(blocks, device=None, *, lookahead: int = 1):
    """Yield the device copy of every block of ``blocks`` (an iterable of host blocks, read
    lazily), in order, the next ones read and copied ahead by a helper thread.

    Parameters
    ----------
    blocks : iterable of LatentBlock
    device : str or torch.device, optional
        A CUDA device (or CPU under ``TRITON_INTERPRET=1``).
    lookahead : int
        Blocks made ready ahead of the one being consumed.

    Raises
    ------
    Exception
        Whatever reading or copying a block raised, when that block's turn comes. Closing
        the generator early (an error in the consumer) stops the thread.
    """
    dev = tb._device(device)
    ready: queue.Queue = queue.Queue(maxsize=max(1, int(lookahead)))
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(iter(blocks), dev, ready, stop),
                              name="probe-dask-stream-blocks", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
            del item
    finally:
        stop.set()
        thread.join()
