"""Host staging for batches bound for the GPU: a small ring of reusable page-locked buffers, so a
batch costs one copy into memory that is already pinned, never an allocation or page-locking per
batch (a fresh 50 MB pinned allocation per batch was most of the main process's time on an H200).

A slot is reused only after the work queued on the device while its batch was in use has finished
(a CUDA event recorded when the stages return), so an asynchronous upload from it is never overwritten.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SLOTS = 3  # one in the stages' hands, one being filled, one whose upload may still be running


def pinned_buffer(shape: tuple[int, ...]) -> Any:
    """A page-locked uint8 host tensor of ``shape``."""
    import torch

    return torch.empty(shape, dtype=torch.uint8, pin_memory=True)


def cuda_fence(device: Any = None) -> Any:
    """A CUDA event recorded on ``device``'s current stream (the current device's when None): done
    once that stream reaches this point."""
    import torch

    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


class HostStaging:
    """``SLOTS`` reusable host buffers, handed out in turn; each grows only when a batch outgrows it.

    ``allocate`` (a shape -> uint8 tensor) and ``fence`` (-> an object with ``synchronize()``, or
    None) default to pinned memory and CUDA events on ``device``'s current stream (where the batches
    are uploaded: not necessarily the calling thread's current device); tests pass CPU stand-ins and
    count allocations.
    """

    def __init__(self, allocate: Callable[[tuple[int, ...]], Any] = pinned_buffer,
                 fence: Callable[[], Any] | None = cuda_fence, slots: int = SLOTS, device: Any = None) -> None:
        self._allocate = allocate
        self._fence = (lambda: cuda_fence(device)) if fence is cuda_fence else fence
        self._buffers: list[Any] = [None] * slots
        self._fences: list[Any] = [None] * slots
        self._next = 0
        self._current: int | None = None
        self.allocations = 0

    def stack(self, squares: Sequence[Any]) -> Any:
        """``squares`` (N tensors of one shape) stacked into the next slot: an N x ... view of it."""
        import torch

        view = self._slot((len(squares), *squares[0].shape))
        torch.stack(list(squares), out=view)
        return view

    def stack_arrays(self, arrays: Sequence[np.ndarray]) -> Any:
        """``arrays`` (N uint8 arrays of one shape) stacked into the next slot by numpy (one thread:
        the decode workers need the cores more than this copy needs torch's thread pool)."""
        view = self._slot((len(arrays), *arrays[0].shape))
        np.stack(arrays, out=view.numpy())
        return view

    def copy(self, batch: np.ndarray) -> Any:
        """``batch`` (one N x ... uint8 array, e.g. the decoders' shared memory) copied into the next
        slot by numpy, on one thread: torch's ``copy_`` ran on all 16 intra-op threads of an H200
        machine for a 50 MB batch (4 ms of wall time, 58 ms of CPU) beside 16 decode workers."""
        view = self._slot(tuple(batch.shape))
        np.copyto(view.numpy(), batch)
        return view

    def _slot(self, shape: tuple[int, ...]) -> Any:
        """The next slot, once the device is done with it, as an uninitialised view of ``shape``."""
        slot = self._next
        self._next = (slot + 1) % len(self._buffers)
        if self._fences[slot] is not None:
            self._fences[slot].synchronize()  # the device is done with what this slot held before
            self._fences[slot] = None
        buffer = self._buffers[slot]
        if buffer is None or tuple(buffer.shape[1:]) != shape[1:] or buffer.shape[0] < shape[0]:
            buffer = self._allocate(shape)
            self._buffers[slot] = buffer
            self.allocations += 1
        self._current = slot
        return buffer[: shape[0]]

    def done(self) -> None:
        """The stages returned from the batch last stacked: fence its slot against reuse too early."""
        if self._current is not None and self._fence is not None:
            self._fences[self._current] = self._fence()
        self._current = None


_UPLOADS: dict[str, HostStaging] = {}  # per CUDA device, for the stages' own uploads (``upload``)
_UPLOADS_LOCK = threading.Lock()


def upload(arrays: Sequence[np.ndarray], device: Any) -> Any:  # -> torch.Tensor on ``device``
    """``arrays`` (uint8, one shape) stacked into one tensor on the CUDA ``device``: a copy into this
    process's reusable pinned ring and an asynchronous upload, instead of ``pin_memory()`` per batch
    (a fresh page-locked allocation each time) or a synchronous copy from pageable memory."""
    import torch

    device = torch.device(device)
    with _UPLOADS_LOCK, torch.cuda.device(device):
        staging = _UPLOADS.get(str(device))
        if staging is None:
            staging = _UPLOADS[str(device)] = HostStaging(device=device)
        pixels = staging.stack_arrays(arrays).to(device, non_blocking=True)
        staging.done()  # the slot is reused once this upload (queued on the current stream) is done
    return pixels
