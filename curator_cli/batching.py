"""Reading and decoding one shard into batches ready for the stages (the part that runs in decode workers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from curator_cli.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from curator_cli.readers import ReadOptions, Sample, open_shard
from curator_cli.shards import Shard


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode: pixel limit and the smallest shorter side the stages need (None: full size)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int | None = None


@dataclass
class DecodedBatch:
    """Up to ``--batch-size`` consecutive samples of one shard; ``images[i]`` is None when ``samples[i].error`` is set."""

    samples: list[Sample]
    images: list[np.ndarray | None]
    read_seconds: float = 0.0
    decode_seconds: float = 0.0
    passthrough_fields: list = field(default_factory=list)


def iter_decoded_batches(
    shard: Shard, read_options: ReadOptions, decode_options: DecodeOptions, batch_size: int
) -> Iterator[DecodedBatch]:
    """Stream ``shard`` as decoded batches, in input order; a read fault raises after the rows before it."""
    opened = open_shard(shard, read_options)
    samples_iter = iter(opened)
    samples: list[Sample] = []
    images: list[np.ndarray | None] = []
    read_s = decode_s = 0.0
    yielded = False
    while True:
        t0 = time.perf_counter()
        try:
            sample = next(samples_iter, None)
        except BaseException:
            if samples:
                yield DecodedBatch(samples, images, read_s, decode_s, opened.passthrough_fields)
            raise
        t1 = time.perf_counter()
        read_s += t1 - t0
        if sample is None:
            break
        image = None
        if sample.error is None:
            try:
                image = decode_image(sample.data, decode_options.max_pixels, decode_options.min_side)
            except DecodeError as exc:
                sample.error = str(exc)
        sample.data = None  # the encoded bytes are not needed past this point
        decode_s += time.perf_counter() - t1
        samples.append(sample)
        images.append(image)
        if len(samples) >= batch_size:
            yield DecodedBatch(samples, images, read_s, decode_s, opened.passthrough_fields)
            samples, images, read_s, decode_s = [], [], 0.0, 0.0
            yielded = True
    if samples or not yielded:  # an empty shard still yields one (empty) batch
        yield DecodedBatch(samples, images, read_s, decode_s, opened.passthrough_fields)
