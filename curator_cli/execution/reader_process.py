"""Reading tar shards in a process of its own: the main process receives samples, it does not parse them.

Walking a tar's headers, reading its caption and metadata members and building one ``Sample`` per
image cost the main process 55-60 us per image (bench/RESULTS.md), the largest part of its work per
image: with 16 decode workers that is what would cap a run. A :class:`ReaderProcess` runs the tar
reader (``io.readers.tar``) in a child process and sends its samples to the feeder in chunks, one
pickled message per :data:`CHUNK` samples, each a plain tuple (a few us per sample to receive).
Image bytes stay in the shard: a sample carries its byte range, which the decode workers read
themselves.

The feeder reads one shard at a time; the child reads ahead of it by the pipe's buffer and one
chunk. A shard given up part-way (a failing run, an interrupt) is stopped between chunks. Errors
reach the feeder where they happened, after the samples before them, as reading in the feeder
did. If the child dies, the shard fails with a reason and later shards are read in the feeder.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curator_cli.decode.pool import start_helper_process
from curator_cli.io.readers.base import ByteRange, ReadOptions, Sample, ShardReadError
from curator_cli.io.readers.tar import read_tar

CHUNK = 128  # samples per message


def _packed(sample: Sample, path: str) -> tuple | Sample:
    """A sample as a plain tuple, when its image is a byte range of the shard (the usual case):
    unpickling tuples costs the feeder a third less than dataclasses and named tuples."""
    data = sample.data
    if type(data) is not ByteRange or data.path != path:
        return sample
    return (sample.image_id, sample.image_path, data.offset, data.size, sample.caption, sample.metadata,
            sample.passthrough, sample.error, sample.metadata_text)


def _unpacked(item: tuple | Sample, path: str) -> Sample:
    if type(item) is not tuple:
        return item
    image_id, image_path, offset, size, caption, metadata, passthrough, error, metadata_text = item
    return Sample(image_id, image_path, ByteRange(path, offset, size), caption, metadata, passthrough, error,
                  metadata_text)


def _serve(conn: Any, parent_pid: int, nice: int) -> None:
    """The child: read each shard it is sent, chunk by chunk, until told to stop (None)."""
    start_helper_process(parent_pid, nice)  # nice beside CPU stages: never preempt the model's threads
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        if request == "stop":  # for a shard that had ended before the request to stop it arrived
            continue
        path, options = request
        chunk: list[tuple | Sample] = []
        try:
            for sample in read_tar(Path(path), options):
                chunk.append(_packed(sample, path))
                if len(chunk) >= CHUNK:
                    conn.send(("samples", chunk))
                    chunk = []
                    if conn.poll() and conn.recv() == "stop":
                        break
            else:
                if chunk:
                    conn.send(("samples", chunk))
            conn.send(("end", None))
        except (EOFError, OSError, BrokenPipeError):
            return
        except Exception as exc:  # the reader's error (ShardReadError, or a bug): the feeder reports it
            try:
                if chunk:  # the samples before the error first, as the reader yielded them
                    conn.send(("samples", chunk))
                conn.send(("error", exc))
            except Exception:
                conn.send(("error", ShardReadError(f"{type(exc).__name__}: {exc}")))


class ReaderProcess:
    """A child process reading tar shards for the feeder (:meth:`samples`), one shard at a time."""

    def __init__(self, start_method: str = "fork", nice: int = 0) -> None:
        """``nice``: added to the child's niceness (lower priority), for runs whose stages use the CPU."""
        ctx = multiprocessing.get_context(start_method)
        self._conn, child = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=_serve, args=(child, os.getpid(), nice), name="curator-reader",
                                    daemon=True)
        self._process.start()
        child.close()
        self.broken = False

    @property
    def usable(self) -> bool:
        return not self.broken and self._process.is_alive()

    def samples(self, path: Path, options: ReadOptions) -> Iterator[Sample]:
        """The samples of the tar shard ``path``, as ``read_tar`` gives them (errors included)."""
        shard = str(Path(path))  # as the tar reader names the shard in its byte ranges
        self._conn.send((shard, options))
        done = False
        try:
            while True:
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    self.broken = done = True
                    raise ShardReadError("the reader process ended unexpectedly") from None
                if kind == "samples":
                    for item in payload:
                        yield _unpacked(item, shard)
                elif kind == "end":
                    done = True
                    return
                else:
                    done = True
                    raise payload
        finally:
            if not done:  # given up part-way: stop the child and let it finish its message
                self._stop_shard()

    def _stop_shard(self) -> None:
        try:
            self._conn.send("stop")
            while True:
                kind, _ = self._conn.recv()
                if kind in ("end", "error"):
                    return
        except (EOFError, OSError):
            self.broken = True

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()
