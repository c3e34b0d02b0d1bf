"""Decode worker processes: images decoded in parallel, returned in submission order, and no
image can hang or crash the run.

Each worker holds up to two jobs, answers each with one message, and publishes in shared memory
which image it is on. Jobs go to a worker through its own sender thread, so the dispatch thread,
the one that drains every worker's answers and watches for hangs, never blocks on a pipe: a worker
blocked sending a large answer is always read, whatever the payload sizes (the pipe's buffer is
smaller than one job of small images inline, or one answer of small decoded images). An image that
takes longer than the per-image timeout gets an error naming why; its worker is replaced and the
rest of its jobs is decoded by the next free worker. An image whose worker dies under it (killed
from outside, as the OOM killer does, or a crash in a native decoder) is retried once in a fresh
worker, and only a second death makes it a "decoder crashed" row. Pixels come back through the
batch's arena in shared memory (``transport.py``): a worker writes each picture into its place in
the batch and answers the job with one message saying where each lies (or why it failed).

Workers die with their parent: on Linux the kernel sends each a SIGKILL when the thread that started
it ends (``PR_SET_PDEATHSIG``; that thread is the one that built the pool, or the dispatch thread for
replacements, so a ``kill -9`` of the run takes its workers with it, and none of them keeps holding
the run's stdout or writing shared memory). A forked worker also closes its copies of the parent's
ends of every worker pipe, so a worker never keeps another one's pipe open: elsewhere, a worker
whose parent is gone sees the end of its pipe and stops. Shared-memory buffers of a run killed
that way are removed by the next run (``transport.remove_orphaned_shared_memory``).

When the stages compute on the same CPUs (no GPU), workers run at a low priority (nice): the model
is what bounds such a run, so decoding should fill its idle moments, not preempt its threads. The
timeout then counts only the time a worker could run (wall time less time spent waiting for a CPU),
so a worker starved by a busy model is not taken for a hung one.
"""

from __future__ import annotations

import ctypes
import glob
import multiprocessing
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from PIL import Image

from curator_cli.decode.jobs import DecodeFailure, DecodeJob, Decoder, picture_one
from curator_cli.decode.transport import (
    ARENAS,
    ArenaRing,
    ArenaWriter,
    PixelBatch,
    Place,
    remove_orphaned_shared_memory,
    shared_memory_usable,
    shm_prefix,
)
from curator_cli.io.readers.base import ByteRange, OpenFiles
from curator_cli.options import DecodeOptions

READY = "ready"
JOBS_PER_WORKER = 2  # jobs a worker holds: it starts the next while its answer to the last is read
ARENA_WAIT_S = 0.2  # how long new_batch waits for a free arena before checking again
UNSEEN = (-2, -2)  # no (job key, position) a worker publishes: the next look restarts its timeout
HANG_CHECK_S = 0.1  # how often the dispatcher looks for workers stuck on an image
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def cpu_wait_seconds(pid: int) -> float | None:
    """Seconds process ``pid`` has spent runnable but waiting for a CPU (Linux /proc/PID/schedstat),
    or None where that is not known."""
    stat = _SchedStat(pid)
    try:
        return stat.wait_seconds()
    finally:
        stat.close()


class _SchedStat:
    """A process's /proc/PID/schedstat, kept open and read again from its start for each look (the
    dispatcher looks at every busy worker 10 times a second: opening the file each time cost it
    more than everything else it does per image)."""

    def __init__(self, pid: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def wait_seconds(self) -> float | None:
        """As :func:`cpu_wait_seconds`; None once the process is gone or where the file is missing."""
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it ends, its whole process
    included (``kill -9``); Linux only, elsewhere the end of the pipe stops an idle worker. Exits at
    once when that parent is gone already (it died before the request took effect)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def start_helper_process(parent_pid: int, nice: int) -> None:
    """What a helper process of the run (a decode worker, the tar reader) does first: die with its
    parent, leave SIGINT to the parent and take SIGTERM's default (not the parent's handler, when
    forked), and lower its priority by ``nice`` (beside stages that use the CPU)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass


def _worker_main(conn: Connection, current: Any, progress: Any, moved: Any, options: DecodeOptions,
                 nice: int, parent_pid: int, inherited: list[Any]) -> None:
    """Decode jobs until told to stop. ``current`` and ``progress`` (shared memory) hold the key of
    the job being decoded and the position in it, ``moved`` the ``time.monotonic()`` at which they
    last changed: the parent's watch on hangs and crashes, at no message cost. ``inherited``: the
    parent's ends of the pool's pipes and sockets, copied into this process by fork, closed here at
    once (so that this worker never keeps a pipe open, its own included)."""
    start_helper_process(parent_pid, nice)
    for handle in inherited:
        try:
            handle.close()
        except OSError:
            pass
    Image.MAX_IMAGE_PIXELS = options.max_pixels
    arenas = ArenaWriter()
    files = OpenFiles()
    conn.send(READY)  # timeouts count from here, not from process start-up
    mark = time.process_time()  # the worker's CPU is reported from here on, messages included
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, indices, payloads, place = message
        moved.value = time.monotonic()
        progress.value = -1
        current.value = key
        t0 = time.perf_counter()
        values = _decode_job(indices, payloads, place, options, arenas, files, progress, moved)
        cpu, mark = time.process_time() - mark, time.process_time()  # since the last answer: all of its work
        conn.send((key, values, time.perf_counter() - t0, cpu))


def _decode_job(indices: list[int], payloads: list[Any], place: Place | None, options: DecodeOptions,
                arenas: ArenaWriter, files: OpenFiles, progress: Any, moved: Any) -> list[Any]:
    """One job's answer, an item per image: a failure's reason, ``("at", offset, shape)`` for a
    picture written into the batch's arena, or an array (no arena, or it did not fit)."""
    values: list[Any] = []
    cursor = place.offset if place is not None else 0
    for position, (index, data) in enumerate(zip(indices, payloads)):
        moved.value = time.monotonic()
        progress.value = position
        picture = picture_one(files.read(data), options)
        if isinstance(picture, DecodeFailure):
            values.append(picture)
            continue
        token = None
        if place is not None:
            token = arenas.write(place, place.offset + index * place.stride if place.stride else cursor, picture)
            if token is not None and not place.stride:
                cursor += picture.size[0] * picture.size[1] * 3
        values.append(token if token is not None else np.array(picture, dtype=np.uint8))
    return values


_CLOSE = object()  # tells a worker's sender thread to stop


class _Worker:
    def __init__(self, ctx: Any, options: DecodeOptions, nice: int, inherited: list[Any]) -> None:
        """``inherited``: the parent's other pipe ends and sockets a forked worker gets copies of
        (ignored when spawned: a spawned process inherits none)."""
        self.conn, child = ctx.Pipe(duplex=True)
        self.current = ctx.RawValue("q", -1)
        self.progress = ctx.RawValue("q", -1)
        self.moved = ctx.RawValue("d", 0.0)
        close_in_child = [*inherited, self.conn] if ctx.get_start_method() == "fork" else []
        self.process = ctx.Process(target=_worker_main, daemon=True,
                                   args=(child, self.current, self.progress, self.moved, options, nice,
                                         os.getpid(), close_in_child))
        self.process.start()
        child.close()
        self.ready = False
        # (job, key, indices, place) sent and not answered yet, oldest first: two, so a worker never waits for us
        self.assigned: deque[tuple[DecodeJob, int, list[int], Place | None]] = deque()
        # the last (job key, position) seen, and when it changed; UNSEEN: the timeout restarts at the next look
        self.seen: tuple[int, int] = UNSEEN
        self.reset_at = 0.0  # time.monotonic() when ``seen`` was last set to UNSEEN
        self.last_progress = 0.0
        self._waited = 0.0  # seconds this worker spent runnable but without a CPU, as last read
        self.waited_lately = 0.0  # of those, the ones counted since the read before
        self._clock = 0.0
        self._schedstat = _SchedStat(self.process.pid)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name=f"curator-decode-send-{self.process.pid}",
                                         daemon=True)
        self._sender.start()

    def post(self, message: Any) -> None:
        """Queue ``message`` for the worker; never blocks (the sender thread waits on the pipe)."""
        self._outbox.put(message)

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is _CLOSE:
                return
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the worker is gone: the dispatcher notices and replaces it
                return

    def clock(self) -> float:
        """The clock decode timeouts run on: monotonic time less the time the worker waited for a CPU
        (plain monotonic time where the kernel does not say). Never goes back: the kernel adds a
        wait to its count only when the wait ends."""
        waited = self._schedstat.wait_seconds()
        if waited is not None:
            self.waited_lately, self._waited = max(0.0, waited - self._waited), waited
        self._clock = max(self._clock, time.monotonic() - self._waited)
        return self._clock

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            self.post(None)
        self.post(_CLOSE)
        self.process.join(timeout=2 if not kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self._sender.join(timeout=5)  # a send to a dead worker fails at once
        self._schedstat.close()
        self.conn.close()


class DecodePool(Decoder):
    """``workers`` decode processes fed from a queue of jobs; a background thread routes results."""

    def __init__(self, workers: int, options: DecodeOptions, timeout_s: float = 60.0,
                 start_method: str = "spawn", nice: int = 0, arenas: int = ARENAS) -> None:
        """``start_method``: "fork" starts workers in milliseconds (start the pool before threads or
        models exist, as the runner does); "spawn" is the safe choice inside processes with threads (Ray).
        ``nice``: added to the workers' niceness (lower priority), for runs whose stages use the CPU.
        ``arenas``: batches with pixels at once (those read ahead, one in the stages, one being given back)."""
        self.options = options
        self.timeout_s = timeout_s
        self.nice = nice
        self._ctx = multiprocessing.get_context(start_method)
        self._shm_prefix = shm_prefix(os.getpid()) if shared_memory_usable() else None
        self._arenas: ArenaRing | None = None
        if self._shm_prefix:
            remove_orphaned_shared_memory()
            self._arenas = ArenaRing(self._shm_prefix, arenas)
        self._wake_r, self._wake_w = socket.socketpair()
        self._workers: list[_Worker] = []
        self._worker_set = 0  # changes whenever a worker is replaced (the dispatcher watches that set)
        for _ in range(workers):
            self._workers.append(self._new_worker())
        self._pending: deque[tuple[DecodeJob, int, list[int], Place | None]] = deque()
        self._keys = 0
        self._lock = threading.Lock()
        self._closed = False
        self.replaced_workers = 0
        self._startup_failures = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="curator-decode-dispatch", daemon=True)
        self._thread.start()

    def _new_worker(self) -> _Worker:
        """A worker; when forked, it closes its copies of the pool's other pipe ends and sockets."""
        inherited: list[Any] = [w.conn for w in self._workers if not w.conn.closed]
        return _Worker(self._ctx, self.options, self.nice, [*inherited, self._wake_r, self._wake_w])

    def new_batch(self, images: int) -> PixelBatch | None:
        """An arena for the next batch (waits while every arena holds a batch in flight); None where
        shared memory is short, or the pool is closing."""
        if self._arenas is None:
            return None
        options = self.options
        stride = options.min_side * options.min_side * 3 if options.crop and options.min_side else 0
        guess = 4 * options.min_side * options.min_side * 3 if options.min_side else 1 << 20
        while not self._closed and self.error is None and not self._arenas.short:
            pixels = self._arenas.take(images, stride, guess, ARENA_WAIT_S)
            if pixels is not None:
                return pixels
        return None

    def submit(self, payloads: Sequence[bytes | ByteRange | None], pixels: PixelBatch | None = None) -> DecodeJob:
        if self.error is not None:
            raise RuntimeError(f"decode pool failed: {self.error}") from self.error
        job = DecodeJob(payloads, pixels)
        if job.payloads:
            with self._lock:
                self._keys += 1
                self._pending.append((job, self._keys, list(range(len(job.payloads))), job.place))
                job.parts_open += 1
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
                while worker.ready and len(worker.assigned) < JOBS_PER_WORKER and self._pending:
                    job, key, indices, place = self._pending.popleft()
                    if not worker.assigned:
                        worker.seen, worker.reset_at = UNSEEN, time.monotonic()  # the timeout counts from now
                    worker.assigned.append((job, key, indices, place))
                    worker.post((key, indices, [job.payloads[i] for i in indices], place))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the pool is unusable: fail every waiting job loudly
            self.error = exc
            with self._lock:
                stranded = [e[0] for e in self._pending] + [e[0] for w in self._workers for e in w.assigned]
                self._pending.clear()
            for job in stranded:
                job.error = exc
                job._finish()

    def _loop(self) -> None:
        checked = 0.0
        selector, watching = selectors.DefaultSelector(), -1
        try:
            while not self._closed:
                self._assign()
                if watching != self._worker_set:  # workers replaced: watch the new set of pipes
                    selector.close()
                    selector, watching = selectors.DefaultSelector(), self._worker_set
                    selector.register(self._wake_r, selectors.EVENT_READ, None)
                    for worker in self._workers:
                        selector.register(worker.conn, selectors.EVENT_READ, worker)
                ready = selector.select(timeout=min(0.5, self.timeout_s))
                self._serve(ready)
                if time.monotonic() - checked >= HANG_CHECK_S:  # a worker's clock costs a read of /proc
                    checked = time.monotonic()
                    self._check_hangs()
        finally:
            selector.close()

    def _serve(self, ready: list[Any]) -> None:
        """Read what the ready pipes hold: a wake-up, a worker starting, or a job's answer."""
        for key, _ in ready:
            worker = key.data
            if worker is None:
                self._wake_r.recv(4096)
                continue
            if worker not in self._workers:  # replaced earlier in this round
                continue
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=1)
                self._replace(worker, f"decoder crashed (worker exit code {worker.process.exitcode})", retry=True)
                continue
            if message == READY:
                worker.ready = True
                continue
            self._answer(worker, message)

    def _check_hangs(self) -> None:
        """Replace a worker whose image has not moved for longer than the timeout (on its CPU clock)."""
        for worker in list(self._workers):
            if not worker.assigned:
                continue
            now = worker.clock()
            state = (worker.current.value, worker.progress.value)
            if state != worker.seen:
                # counted from when the worker moved (or its job was handed over), not from this look:
                # a look delayed by a busy machine must not lengthen the timeout; the worker's waits
                # for a CPU since the last look are not counted (more than since the move, if anything)
                since = time.monotonic() - max(worker.moved.value, worker.reset_at) - worker.waited_lately
                since = max(0.0, since)
                worker.seen, worker.last_progress = state, now - since
            elif now - worker.last_progress > self.timeout_s:
                self._replace(worker, f"decode timed out after {self.timeout_s:g}s")

    def _answer(self, worker: _Worker, message: Any) -> None:
        """A worker's results for its oldest assigned job."""
        key, values, seconds, cpu_seconds = message
        if not worker.assigned or worker.assigned[0][1] != key:
            return  # not ours (cannot happen: workers answer in order)
        job, _, indices, place = worker.assigned.popleft()
        job.parts_open -= 1
        worker.seen, worker.reset_at = UNSEEN, time.monotonic()  # its next job's timeout counts from now
        arena = job.pixels.arena if place is not None and job.pixels is not None else None
        rows = None
        for index, value in zip(indices, values):
            if type(value) is tuple and place.stride:  # ("at", offset, shape): a row of the batch's arena
                if rows is None:  # one array over the job's rows; each image a row of it
                    rows = arena.view(place.offset, (len(job.payloads), *value[2]))
                job.results[index] = rows[index]
            elif type(value) is tuple:  # ("at", offset, shape): packed in the batch's arena
                job.results[index] = arena.view(value[1], value[2])
                self._arenas.saw(job.results[index].nbytes)
            else:  # a failure, or an array that came through the pipe (no arena, or no room in it)
                job.results[index] = value
                if isinstance(value, np.ndarray) and self._arenas is not None:
                    self._arenas.saw(value.nbytes)
                    job.spilled += job.pixels is not None  # its row in the arena holds nothing
        job.decode_seconds += seconds
        job.decode_cpu_seconds += cpu_seconds
        self._finish_if_done(job)

    def _finish_if_done(self, job: DecodeJob) -> None:
        """A job is done when no part of it is pending or held by a worker (counted, not searched
        for: with many workers and small jobs, searching every queue on every answer was most of the
        dispatcher's work)."""
        if job.parts_open == 0:
            job._finish()

    def _replace(self, worker: _Worker, reason: str, retry: bool = False) -> None:
        """The image ``worker`` is on gets ``reason``; the worker is replaced; the rest of its part of
        the job (the images before that one too: their results went down with the worker) is requeued.
        With ``retry`` (the worker died), an image the first time it is on a worker that dies is
        requeued too, alone, instead of getting ``reason``: a worker killed from outside (the OOM
        killer) must not cost a good image; one that kills a second worker is failed."""
        try:  # answers already in the pipe are good ones
            while worker.assigned and worker.conn.poll(0):
                self._answer(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass
        entries = list(worker.assigned)
        worker.assigned.clear()
        for job, _, _, _ in entries:
            job.parts_open -= 1
        current, position = worker.current.value, worker.progress.value
        worker.stop(kill=True)
        self._startup_failures = 0 if worker.ready else self._startup_failures + 1
        if self._startup_failures >= 3:
            raise RuntimeError("decode worker processes die before they start; try --num-workers 0")
        slot = self._workers.index(worker)
        self._workers[slot] = self._new_worker()
        self._worker_set += 1
        self.replaced_workers += 1
        requeue, suspects = [], []
        for job, key, indices, place in entries:
            rest = list(indices)
            if key == current and 0 <= position < len(indices):
                index = rest.pop(position)
                if retry and index not in job.crashed:
                    job.crashed.add(index)
                    suspects.append((job, [index]))  # alone: a second death costs it and nothing else
                else:
                    job.results[index] = DecodeFailure(reason)
            if rest:
                requeue.append((job, key, rest, place))
        with self._lock:
            for job, indices in suspects:  # through the pipe: its place may be rewritten by the rest
                self._keys += 1
                requeue.append((job, self._keys, indices, None))
            self._pending.extendleft(reversed(requeue))
            for job, _, _, _ in requeue:
                job.parts_open += 1
        for job, _, _, _ in entries:
            self._finish_if_done(job)

    def close(self) -> None:
        """Stop the workers (jobs still pending are abandoned)."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        for worker in self._workers:
            worker.stop(kill=bool(worker.assigned))
        self._wake_r.close()
        self._wake_w.close()
        if self._arenas is not None:
            self._arenas.close()
        if self._shm_prefix:  # anything left under this run's name
            for leftover in glob.glob(self._shm_prefix + "*"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


