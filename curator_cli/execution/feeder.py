"""The feeder: reads shards in a background thread, sends their images to the decoders, and hands
the runner an ordered stream of events (shard opened, batch ready, shard finished).

At most ``prefetch`` batches are read or decoding ahead of the one the stages hold, so memory is
bounded whatever the dataset size, and decoding of the next batches overlaps the stages working on
the current one (and the stages' setup, before the first). Only batches count against the bound:
the small shard-opened/finished events between them never hold the read-ahead back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from curator_cli.decode.jobs import DecodeFailure, DecodeJob
from curator_cli.decode.transport import PixelBatch
from curator_cli.execution.reader_process import ReaderProcess
from curator_cli.io.readers import OpenShard, ReadOptions, Sample, ShardReadError, open_shard
from curator_cli.io.shards import Shard


@dataclass
class DecodedBatch:
    """Consecutive samples of one shard; ``images[i]`` is None when ``samples[i].error`` is set.

    ``squares``: on the tensor path, when every image decoded, all of them as one
    ``N x S x S x 3`` array in input order (``images`` are its rows): the stages' batch as it is
    (a CUDA tensor when the GPU decoder made it).
    The images may be views of the decoder's shared memory, valid until :meth:`release`."""

    samples: list[Sample]
    images: list[np.ndarray | None]
    decode_seconds: float = 0.0
    decode_cpu_seconds: float = 0.0
    squares: np.ndarray | None = None
    pixels: PixelBatch | None = None

    def release(self) -> None:
        """The stages are done with the pixels: the decoder may reuse their memory."""
        if self.pixels is not None:
            self.pixels.release()
            self.pixels = None


@dataclass
class ShardOpened:
    shard: Shard
    passthrough_fields: list[pa.Field]


@dataclass
class BatchReady:
    """A batch whose images are being decoded; :meth:`resolve` waits for them."""

    shard: Shard
    index: int
    samples: list[Sample]
    jobs: list[tuple[list[int], DecodeJob]] = field(default_factory=list)
    pixels: PixelBatch | None = None  # where the decoders put this batch's pixels, if they offer one

    def resolve(self) -> DecodedBatch:
        images: list[np.ndarray | None] = [None] * len(self.samples)
        seconds = cpu_seconds = 0.0
        decoded = spilled = 0
        for positions, job in self.jobs:
            for position, result in zip(positions, job.wait()):
                if isinstance(result, DecodeFailure):
                    self.samples[position].error = result
                else:
                    images[position] = result
                    decoded += 1
            seconds += job.decode_seconds
            cpu_seconds += job.decode_cpu_seconds
            spilled += job.spilled
        pixels, self.pixels = self.pixels, None
        squares = None  # the arena's rows are the batch only if every image decoded into its row
        if pixels is not None and pixels.stride and decoded == pixels.rows and decoded and not spilled:
            side = next(image for image in images if image is not None).shape[0]
            squares = pixels.rows_view(decoded, side)
        elif len(self.jobs) == 1 and self.jobs[0][1].squares is not None and decoded == len(self.samples):
            squares = self.jobs[0][1].squares  # the GPU decoder's batch: one tensor on the device
        return DecodedBatch(self.samples, images, seconds, cpu_seconds, squares, pixels)

    def abandon(self) -> None:
        """Not run (the run is stopping): its pixel memory goes back once its jobs are done."""
        if self.pixels is not None:
            self.pixels.release()
            self.pixels = None


@dataclass
class ShardFinished:
    """End of a shard: ``error`` is set when it could not be read to the end."""

    shard: Shard
    samples: int
    read_seconds: float
    error: str | None = None


@dataclass
class FeederCrashed:
    error: BaseException


class Feeder:
    """Streams every shard as events, in order, from a background thread."""

    def __init__(self, shards: list[Shard], read_options: ReadOptions, decoder: Any, batch_size: int,
                 chunk_size: int, prefetch: int = 2, reader: ReaderProcess | None = None) -> None:
        """``reader``: a process that reads tar shards for this feeder (else it reads them itself)."""
        self.shards = shards
        self.reader = reader
        self.read_options = read_options
        self.decoder = decoder
        self.batch_size = batch_size
        self.chunk_size = max(1, chunk_size)
        self._events: queue.Queue = queue.Queue()
        self._batch_slots = threading.Semaphore(max(1, prefetch))  # one per batch read ahead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="curator-feeder", daemon=True)

    def start(self) -> None:
        """Start reading and decoding (iterating starts it too); idempotent."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def __iter__(self) -> Iterator[Any]:
        self.start()
        while True:
            event = self._events.get()
            if event is None:
                return
            if isinstance(event, BatchReady):
                self._batch_slots.release()  # the stages hold this one now: read the next
            yield event

    def stop(self) -> None:
        """Ask the feeder to stop early (the runner is aborting)."""
        self._stop.set()
        self._drain()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._drain()

    def _drain(self) -> None:
        """Drop the events nobody will take, giving back the pixel memory of their batches."""
        try:
            while True:
                event = self._events.get_nowait()
                if isinstance(event, BatchReady):
                    event.abandon()
        except queue.Empty:
            pass

    def _put(self, event: Any) -> None:
        if self._stop.is_set():
            if isinstance(event, BatchReady):
                event.abandon()
            raise _Stopped
        self._events.put(event)

    def _new_batch(self, shard: Shard, index: int) -> BatchReady:
        """Wait for a free read-ahead slot, then start batch ``index`` of ``shard`` (its pixel memory
        is taken when its first image is sent to the decoders)."""
        while not self._batch_slots.acquire(timeout=0.2):
            if self._stop.is_set():
                raise _Stopped
        return BatchReady(shard, index, [])

    def _run(self) -> None:
        try:
            for shard in self.shards:
                self._feed_shard(shard)
            self._put(None)
        except _Stopped:
            return
        except BaseException as exc:  # a bug: the runner re-raises it with its traceback
            try:
                self._put(FeederCrashed(exc))
                self._put(None)
            except _Stopped:
                return

    def _submit(self, batch: BatchReady, chunk: list[int]) -> None:
        if not batch.jobs:
            batch.pixels = self.decoder.new_batch(self.batch_size)
        payloads = [batch.samples[i].data for i in chunk]
        batch.jobs.append((chunk, self.decoder.submit(payloads, batch.pixels)))
        for i in chunk:
            batch.samples[i].data = None  # the decoder has the bytes now

    def _feed_shard(self, shard: Shard) -> None:
        t0 = time.perf_counter()
        try:
            opened = open_shard(shard, self.read_options)
            if shard.format == "tar" and self.reader is not None and self.reader.usable:
                opened = OpenShard(self.reader.samples(shard.path, self.read_options), opened.passthrough_fields)
        except ShardReadError as exc:
            self._put(ShardFinished(shard, 0, time.perf_counter() - t0, str(exc)))
            return
        self._put(ShardOpened(shard, opened.passthrough_fields))
        samples = iter(opened)
        try:
            self._feed_samples(shard, samples)
        finally:
            close = getattr(samples, "close", None)
            if close is not None:  # a shard given up part-way: its reader stops now, not when collected
                close()

    def _feed_samples(self, shard: Shard, samples: Iterator[Sample]) -> None:
        """``shard``'s samples in batches, each image sent to the decoders, then its end."""
        read_seconds = 0.0
        count = 0
        error: str | None = None
        batch_index = 0
        batch = self._new_batch(shard, batch_index)
        chunk: list[int] = []
        while True:
            t0 = time.perf_counter()
            try:
                sample = next(samples, None)
            except ShardReadError as exc:
                error = str(exc)
                sample = None
            read_seconds += time.perf_counter() - t0
            if sample is None:
                break
            count += 1
            batch.samples.append(sample)
            if sample.error is None:
                chunk.append(len(batch.samples) - 1)
                if len(chunk) >= self.chunk_size:
                    self._submit(batch, chunk)
                    chunk = []
            else:
                sample.data = None
            if len(batch.samples) >= self.batch_size:
                if chunk:
                    self._submit(batch, chunk)
                    chunk = []
                self._put(batch)
                batch_index += 1
                batch = self._new_batch(shard, batch_index)
        if chunk:
            self._submit(batch, chunk)
        if batch.samples:
            self._put(batch)
        else:
            self._batch_slots.release()  # the shard ended on a batch boundary: that slot is unused
        self._put(ShardFinished(shard, count, read_seconds, error))


class _Stopped(Exception):
    pass
