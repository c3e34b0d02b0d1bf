"""The decoder protocol: submit a list of encoded images, get a :class:`DecodeJob` whose
:meth:`~DecodeJob.wait` gives one array or :class:`DecodeFailure` per image, in order. The
decoders: :class:`InlineDecoder` (here), the worker pool (``pool.py``), nvJPEG (``gpu.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from PIL import Image

from curator_cli.decode.pillow import DecodeError, decode_with
from curator_cli.io.readers.base import ByteRange
from curator_cli.options import DecodeOptions


class DecodeFailure(str):
    """An image that could not be decoded; the string is the short reason written to ``error``."""


DecodeResult = Union[np.ndarray, DecodeFailure]


class DecodeJob:
    """Encoded images submitted together; :meth:`wait` returns one :data:`DecodeResult` per image."""

    def __init__(self, payloads: Sequence[bytes | ByteRange | None]) -> None:
        self.payloads = list(payloads)
        self.results: list[Any] = [None] * len(self.payloads)  # DecodeResult once done
        self.decode_seconds = 0.0
        self.error: BaseException | None = None
        # images whose decode worker died under them once (killed from outside, e.g. by the OOM
        # killer, or a native crash): retried once in a fresh worker; a second death fails the image
        self.crashed: set[int] = set()
        self._done = threading.Event()
        if not self.payloads:
            self._done.set()

    def wait(self) -> list[DecodeResult]:
        self._done.wait()
        if self.error is not None:
            raise RuntimeError(f"decoding failed: {self.error}") from self.error
        self.payloads = []
        return self.results

    def _finish(self) -> None:
        self._done.set()


def decode_one(data: bytes | ByteRange | None, options: DecodeOptions) -> DecodeResult:
    """Read (if the reader deferred it) and decode one image; a failure gives its reason."""
    if data is None:
        return DecodeFailure("no image data")
    if isinstance(data, ByteRange):
        try:
            data = data.read()
        except OSError as exc:
            return DecodeFailure(f"unreadable: {exc.strerror or exc}")
    try:
        return decode_with(data, options)
    except DecodeError as exc:
        return DecodeFailure(str(exc))
    except Exception as exc:  # a decoder bug must cost one image, not the run
        return DecodeFailure(f"cannot decode: {type(exc).__name__}: {exc}")


class Decoder:
    """What the feeder needs of a decoder: ``submit`` a list of encoded images, get a :class:`DecodeJob`."""

    replaced_workers = 0

    def submit(self, payloads: Sequence[bytes | ByteRange | None]) -> DecodeJob:
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

    def submit(self, payloads: Sequence[bytes | ByteRange | None]) -> DecodeJob:
        job = DecodeJob(payloads)
        for i, data in enumerate(job.payloads):
            t0 = time.perf_counter()
            job.results[i] = decode_one(data, self.options)
            job.decode_seconds += time.perf_counter() - t0
        job._finish()
        return job
