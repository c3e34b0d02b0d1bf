"""The decoder protocol: submit a list of encoded images, get a :class:`DecodeJob` whose
:meth:`~DecodeJob.wait` gives one array or :class:`DecodeFailure` per image, in order. A decoder
may also offer a :class:`~curator_cli.decode.transport.PixelBatch` per batch (``new_batch``): the
jobs of that batch then decode into it, and their arrays are views of it. The decoders:
:class:`InlineDecoder` (here), the worker pool (``pool.py``), nvJPEG (``gpu.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from PIL import Image

from curator_cli.decode.pillow import DecodeError, picture_with
from curator_cli.decode.transport import PixelBatch
from curator_cli.io.readers.base import ByteRange
from curator_cli.options import DecodeOptions


class DecodeFailure(str):
    """An image that could not be decoded; the string is the short reason written to ``error``."""


DecodeResult = Union[np.ndarray, DecodeFailure]


class DecodeJob:
    """Encoded images submitted together; :meth:`wait` returns one :data:`DecodeResult` per image."""

    def __init__(self, payloads: Sequence[bytes | ByteRange | None], pixels: PixelBatch | None = None) -> None:
        """``pixels``: the batch these images decode into (a part of it is reserved for them here)."""
        self.payloads = list(payloads)
        self.pixels = pixels
        self.place = pixels.reserve(len(self.payloads)) if pixels is not None and self.payloads else None
        self.results: list[Any] = [None] * len(self.payloads)  # DecodeResult once done
        self.decode_seconds = 0.0
        self.decode_cpu_seconds = 0.0  # CPU time of the decode workers for this job, where known
        self.spilled = 0  # images that had a place in the batch's arena but came through the pipe
        # every image of the job as one N x S x S x 3 tensor, in order, when the decoder made them so
        # (``--decode gpu`` on the tensor path): the stages' batch as it is, no stacking
        self.squares: Any = None
        self.error: BaseException | None = None
        # images whose decode worker died under them once (killed from outside, e.g. by the OOM
        # killer, or a native crash): retried once in a fresh worker; a second death fails the image
        self.crashed: set[int] = set()
        self.parts_open = 0  # parts of it queued for, or held by, a decode worker (the pool's count)
        # held until the job is done: a plain lock (an Event's set goes through a Condition: a few
        # times the cost, once per job in the dispatcher thread)
        self._done = threading.Lock()
        self._finished = False
        if self.payloads:
            self._done.acquire()
        else:
            self._finished = True

    def wait(self) -> list[DecodeResult]:
        with self._done:  # free once finished
            pass
        if self.error is not None:
            raise RuntimeError(f"decoding failed: {self.error}") from self.error
        self.payloads = []
        return self.results

    def _finish(self) -> None:
        if self.place is not None and self.pixels is not None:
            self.pixels.job_done()  # nothing writes into its part of the batch any more
            self.place = None
        if not self._finished:
            self._finished = True
            self._done.release()


def decode_one(data: bytes | ByteRange | None, options: DecodeOptions) -> DecodeResult:
    """Read (if the reader deferred it) and decode one image to an array; a failure gives its reason."""
    picture = picture_one(data, options)
    return picture if isinstance(picture, DecodeFailure) else np.array(picture, dtype=np.uint8)


def picture_one(data: bytes | ByteRange | None, options: DecodeOptions) -> Image.Image | DecodeFailure:
    """Read (if the reader deferred it) and decode one image to an RGB picture, or why not."""
    if data is None:
        return DecodeFailure("no image data")
    if isinstance(data, ByteRange):
        try:
            data = data.read()
        except OSError as exc:
            return DecodeFailure(f"unreadable: {exc.strerror or exc}")
    try:
        return picture_with(data, options)
    except DecodeError as exc:
        return DecodeFailure(str(exc))
    except Exception as exc:  # a decoder bug must cost one image, not the run
        return DecodeFailure(f"cannot decode: {type(exc).__name__}: {exc}")


class Decoder:
    """What the feeder needs of a decoder: ``submit`` a list of encoded images, get a :class:`DecodeJob`."""

    replaced_workers = 0

    def new_batch(self, images: int) -> PixelBatch | None:
        """Where the next batch of ``images`` decodes into, or None (each image its own array)."""
        return None

    def submit(self, payloads: Sequence[bytes | ByteRange | None], pixels: PixelBatch | None = None) -> DecodeJob:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineDecoder(Decoder):
    """``--num-workers 0``: decode in the calling thread (no timeout protection)."""

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options
        Image.MAX_IMAGE_PIXELS = options.max_pixels

    def submit(self, payloads: Sequence[bytes | ByteRange | None], pixels: PixelBatch | None = None) -> DecodeJob:
        job = DecodeJob(payloads)
        for i, data in enumerate(job.payloads):
            t0, cpu0 = time.perf_counter(), time.thread_time()
            job.results[i] = decode_one(data, self.options)
            job.decode_seconds += time.perf_counter() - t0
            job.decode_cpu_seconds += time.thread_time() - cpu0
        job._finish()
        return job
