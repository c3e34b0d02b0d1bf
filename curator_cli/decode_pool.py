"""Decode worker processes: images decoded in parallel, returned in submission order, and no
image can hang or crash the run.

Workers report each image as it finishes. An image that takes longer than the per-image timeout,
or kills its worker (a crash in a native decoder), gets an error naming why; its worker is
replaced and the rest of its job is decoded by the next free worker.
"""

from __future__ import annotations

import glob
import itertools
import mmap
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
from PIL import Image

from curator_cli.decode import DecodeError, DecodeOptions, decode_with



class DecodeJob:
    """Encoded images submitted together; :meth:`wait` returns one array or reason string per image."""

    def __init__(self, payloads: Sequence[bytes | None]) -> None:
        self.payloads = list(payloads)
        self.results: list[Any] = [None] * len(self.payloads)
        self.decode_seconds = 0.0
        self.error: BaseException | None = None
        self._done = threading.Event()
        if not self.payloads:
            self._done.set()

    def wait(self) -> list[Any]:
        self._done.wait()
        if self.error is not None:
            raise RuntimeError(f"decoding failed: {self.error}") from self.error
        self.payloads = []
        return self.results

    def _finish(self) -> None:
        self._done.set()


def decode_one(data: bytes | None, options: DecodeOptions) -> Any:
    """Decode one image; an image that cannot be decoded gives its reason as a string."""
    if data is None:
        return "no image data"
    try:
        return decode_with(data, options)
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must cost one image, not the run
        return f"cannot decode: {type(exc).__name__}: {exc}"


READY = "ready"
SHM_DIR = "/dev/shm"
SHM_MIN_FREE = 2 << 30  # below this much free shared memory, pixels go through the pipe instead


def shared_memory_usable() -> bool:
    """True on Linux with a roomy /dev/shm (container defaults of 64 MB are not)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= SHM_MIN_FREE


def _shm_prefix(parent_pid: int) -> str:
    return os.path.join(SHM_DIR, f"curator-{parent_pid}-")


def remove_orphaned_shared_memory() -> None:
    """Delete pixel files left in /dev/shm by runs that were killed (their parent pid is gone)."""
    for path in glob.glob(os.path.join(SHM_DIR, "curator-*-*")):
        try:
            parent = int(os.path.basename(path).split("-")[1])
            os.kill(parent, 0)
        except ProcessLookupError:
            try:
                os.unlink(path)
            except OSError:
                pass
        except (ValueError, IndexError, PermissionError):
            continue


def _ship(array: np.ndarray, prefix: str | None, counter: itertools.count) -> Any:
    """Hand pixels to the parent: through a shared-memory file when possible (no pickling of
    megabytes through a pipe), else as the array itself."""
    if prefix is None or array.nbytes == 0:
        return array
    name = f"{prefix}{os.getpid()}-{next(counter)}"
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except OSError:
        return array
    try:
        os.posix_fallocate(fd, 0, array.nbytes)  # ENOSPC here, rather than SIGBUS on write
        with mmap.mmap(fd, array.nbytes) as view:
            np.frombuffer(view, dtype=np.uint8).reshape(array.shape)[...] = array
    except OSError:
        os.close(fd)
        os.unlink(name)
        return array
    os.close(fd)
    return ("shm", name, array.shape)


def _receive(value: Any) -> Any:
    """The parent's side of :func:`_ship`: map the file privately (writable, copy-on-write) and unlink it."""
    if not (isinstance(value, tuple) and value and value[0] == "shm"):
        return value
    _, name, shape = value
    fd = os.open(name, os.O_RDONLY)
    try:
        size = int(np.prod(shape))
        view = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        os.unlink(name)
    return np.frombuffer(view, dtype=np.uint8).reshape(shape)


def _worker_main(conn: Connection, options: DecodeOptions, shm_prefix: str | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    Image.MAX_IMAGE_PIXELS = options.max_pixels
    counter = itertools.count()
    conn.send(READY)  # timeouts count from here, not from process start-up
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, start, payloads = message
        for offset, data in enumerate(payloads):
            t0 = time.perf_counter()
            value = decode_one(data, options)
            if isinstance(value, np.ndarray):
                value = _ship(value, shm_prefix, counter)
            conn.send((key, start + offset, value, time.perf_counter() - t0))


class Decoder:
    """What the feeder needs of a decoder: ``submit`` a list of encoded images, get a :class:`DecodeJob`."""

    replaced_workers = 0

    def submit(self, payloads: Sequence[bytes | None]) -> DecodeJob:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Worker:
    def __init__(self, ctx: Any, options: DecodeOptions, shm_prefix: str | None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, options, shm_prefix), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.job: DecodeJob | None = None
        self.key = -1
        self.next_index = 0
        self.last_progress = 0.0

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.process.join(timeout=2 if not kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class DecodePool(Decoder):
    """``workers`` decode processes fed from a queue of jobs; a background thread routes results."""

    def __init__(self, workers: int, options: DecodeOptions, timeout_s: float = 60.0) -> None:
        self.options = options
        self.timeout_s = timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._shm_prefix = _shm_prefix(os.getpid()) if shared_memory_usable() else None
        if self._shm_prefix:
            remove_orphaned_shared_memory()
        self._workers = [_Worker(self._ctx, options, self._shm_prefix) for _ in range(workers)]
        self._pending: deque[tuple[DecodeJob, int, int]] = deque()
        self._keys = 0
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self.replaced_workers = 0
        self._startup_failures = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="curator-decode-dispatch", daemon=True)
        self._thread.start()

    def submit(self, payloads: Sequence[bytes | None]) -> DecodeJob:
        if self.error is not None:
            raise RuntimeError(f"decode pool failed: {self.error}") from self.error
        job = DecodeJob(payloads)
        if job.payloads:
            with self._lock:
                self._keys += 1
                self._pending.append((job, self._keys, 0))
            self._wake()
        return job

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _assign(self) -> None:
        with self._lock:
            for worker in self._workers:
                if worker.ready and worker.job is None and self._pending:
                    job, key, start = self._pending.popleft()
                    worker.job, worker.key, worker.next_index = job, key, start
                    worker.last_progress = time.monotonic()
                    worker.conn.send((key, start, job.payloads[start:]))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the pool is unusable: fail every waiting job loudly
            self.error = exc
            with self._lock:
                stranded = [job for job, _, _ in self._pending] + [w.job for w in self._workers if w.job]
                self._pending.clear()
            for job in stranded:
                job.error = exc
                job._finish()

    def _loop(self) -> None:
        while not self._closed:
            self._assign()
            by_conn = {w.conn: w for w in self._workers}
            ready = wait([*by_conn, self._wake_r], timeout=min(0.5, self.timeout_s))
            for conn in ready:
                if conn is self._wake_r:
                    self._wake_r.recv(4096)
                    continue
                worker = by_conn[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=1)
                    self._replace(worker, f"decoder crashed (worker exit code {worker.process.exitcode})")
                    continue
                if message == READY:
                    worker.ready = True
                    continue
                key, index, value, seconds = message
                try:
                    value = _receive(value)
                except OSError as exc:
                    value = f"cannot receive decoded pixels: {exc}"
                if worker.job is None or key != worker.key:
                    continue
                self._record(worker, index, value, seconds)
            now = time.monotonic()
            for worker in self._workers:
                if worker.job is not None and now - worker.last_progress > self.timeout_s:
                    self._replace(worker, f"decode timed out after {self.timeout_s:g}s")

    def _record(self, worker: _Worker, index: int, value: Any, seconds: float) -> None:
        job = worker.job
        assert job is not None
        job.results[index] = value
        job.decode_seconds += seconds
        worker.next_index = index + 1
        worker.last_progress = time.monotonic()
        if worker.next_index >= len(job.payloads):
            worker.job = None
            job._finish()

    def _replace(self, worker: _Worker, reason: str) -> None:
        """The image ``worker`` is on gets ``reason``; the worker is replaced; the rest of its job is requeued."""
        job, key, index = worker.job, worker.key, worker.next_index
        worker.job = None
        worker.stop(kill=True)
        self._startup_failures = 0 if worker.ready else self._startup_failures + 1
        if self._startup_failures >= 3:
            raise RuntimeError("decode worker processes die before they start; try --num-workers 0")
        slot = self._workers.index(worker)
        self._workers[slot] = _Worker(self._ctx, self.options, self._shm_prefix)
        self.replaced_workers += 1
        if job is None:
            return
        job.results[index] = reason
        if index + 1 < len(job.payloads):
            with self._lock:
                self._pending.appendleft((job, key, index + 1))
        else:
            job._finish()

    def close(self) -> None:
        """Stop the workers (jobs still pending are abandoned)."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        for worker in self._workers:
            worker.stop(kill=worker.job is not None)
        self._wake_r.close()
        self._wake_w.close()
        if self._shm_prefix:  # pixels shipped for jobs nobody collected
            for leftover in glob.glob(self._shm_prefix + "*"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


class InlineDecoder(Decoder):
    """``--num-workers 0``: decode in the calling thread (no timeout protection)."""

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options
        Image.MAX_IMAGE_PIXELS = options.max_pixels

    def submit(self, payloads: Sequence[bytes | None]) -> DecodeJob:
        job = DecodeJob(payloads)
        for i, data in enumerate(job.payloads):
            t0 = time.perf_counter()
            job.results[i] = decode_one(data, self.options)
            job.decode_seconds += time.perf_counter() - t0
        job._finish()
        return job
