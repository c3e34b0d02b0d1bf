"""The per-process pipeline over shards: read (feeder thread) -> decode (worker processes) ->
stages (the stage thread) -> write (writer thread), overlapped, with a bounded number of batches in
flight. The local executor runs one :class:`ShardProcessor` over every shard; each Ray actor runs
one over the shards it is handed.

The stages run in a thread of their own (:class:`StageThread`: ``setup``, every ``process`` and
``teardown`` in that one thread, so thread-local state a stage sets up, such as the CUDA device or
grad mode, is there when it processes), which this thread waits on: a stage call that runs longer
than ``--stage-timeout`` fails its shard with one line. A running stage cannot be stopped (a hung
CUDA call cannot even be interrupted), so the run then stops: finished shards are kept, the stages'
``teardown`` is skipped, and the stuck thread is left behind for the process exit to end (exit
status 1; rerun to resume). ``--stage-timeout 0`` runs the stages in the calling thread, as before.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator_cli.decode.jobs import Decoder, InlineDecoder
from curator_cli.decode.pool import JOBS_PER_WORKER, DecodePool
from curator_cli.decode.transport import ARENAS
from curator_cli.execution.reader_process import ReaderProcess
from curator_cli.execution.feeder import BatchReady, Feeder, FeederCrashed, ShardFinished, ShardOpened
from curator_cli.execution.plan import ShardOutcome
from curator_cli.execution.progress import report_failure, set_activity
from curator_cli.stages.staging import HostStaging
from curator_cli.execution.stage_runner import StageContext, StageFailure, run_stages
from curator_cli.execution.stats import WorkerStats, process_cpu_seconds
from curator_cli.io.manifest import Manifest, input_identity
from curator_cli.io.shards import Shard
from curator_cli.io.writer import SCORE_COLUMNS, BackgroundWriter, OutputLayout, OutputRow, warm_up
from curator_cli.options import DecodeOptions, EmbedOptions
from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.worker_metadata import NodeInfo, WorkerMetadata

log = logging.getLogger("curator")

# Stages on the CPU share the cores with the decode workers: a worker preempting one of the model's
# threads stalls the others at their next barrier, so workers yield (bench/RESULTS.md: resnet18 on 2
# cores, stage time per 250-image batch 3.8 s with workers at the model's priority, 3.2 s at nice 19).
DECODE_NICE_BESIDE_CPU_STAGES = 19


class StageSetupError(Exception):
    """A stage's ``setup`` raised: the run cannot start."""


class _StopRun(Exception):
    """``--on-error fail`` and a shard failed, or a stage is stuck: stop taking events."""


class StageTimeout(Exception):
    """A stage call ran longer than ``--stage-timeout``; it is still running (it cannot be stopped)."""


TEARDOWN_WAIT_S = 10.0  # after an interrupt, how long teardown waits for the batch the stages are on


class StageThread:
    """Runs the stages' calls one at a time in one long-lived daemon thread, so that the caller can
    stop waiting for a call that hangs (:meth:`call`'s ``overdue``). Not ``threaded``: calls run in
    the caller's thread, with no timeout."""

    def __init__(self, threaded: bool) -> None:
        self.threaded = threaded
        self.stuck: str | None = None  # why the caller gave up on the call still running
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._current: threading.Event | None = None  # set when the last call submitted returns

    @property
    def busy(self) -> bool:
        return self._current is not None and not self._current.is_set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the running call to return; True when none runs."""
        return self._current is None or self._current.wait(timeout)

    def call(self, fn: Callable[[], Any], overdue: Callable[[], str | None] | None = None) -> Any:
        """``fn()`` in the stage thread: its result, or its exception raised here. ``overdue()`` is asked
        while waiting: a reason (not None) gives up on the call and raises :class:`StageTimeout`."""
        if not self.threaded:
            return fn()
        if self.busy:
            raise StageTimeout(self.stuck or "the stages are busy with an earlier call")
        self.stuck = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="curator-stages", daemon=True)
            self._thread.start()
        done, box = threading.Event(), {}
        self._current = done
        self._calls.put((fn, box, done))
        while not done.wait(0.1):
            reason = overdue() if overdue else None
            if reason:
                self.stuck = reason
                raise StageTimeout(reason)
        if "error" in box:
            raise box["error"]
        return box["result"]

    def close(self) -> None:
        """End the thread (joined when idle, so that a later pool may fork again; a stuck one is left
        to the process exit)."""
        if self._thread is not None:
            self._calls.put(None)
            if not self.busy:
                self._thread.join(timeout=5)
            self._thread = None

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, box, done = item
            try:
                box["result"] = fn()
            except BaseException as exc:  # raised again in the caller's thread
                box["error"] = exc
            finally:
                done.set()


def setup_stages(stages: list[ProcessingStage], worker: WorkerMetadata, on_node: bool = True) -> None:
    """Call ``setup_on_node`` (unless another worker on this machine did) then ``setup`` on every stage."""
    for stage in stages:
        try:
            if on_node:
                stage.setup_on_node(NodeInfo(), worker)
            stage.setup(worker)
        except Exception as exc:
            log.exception("setup of stage %s failed", stage.name)
            raise StageSetupError(f"setup of stage {stage.name!r} failed: {type(exc).__name__}: {exc}") from exc


def teardown_stages(stages: list[ProcessingStage]) -> None:
    for stage in stages:
        try:
            stage.teardown()
        except Exception:
            log.exception("teardown of stage %s failed", stage.name)


def declared_scores(stages: list[ProcessingStage]) -> frozenset[str]:
    names: set[str] = set()
    for stage in stages:
        names.update(stage.outputs()[1])
    return frozenset(names & set(SCORE_COLUMNS))


MAX_CHUNK = 32  # images per decode job at most
MIN_CHUNK = 16  # images per decode job that the read-ahead grows to keep with many workers
READ_AHEAD_BATCHES = 2  # batches read and decoded ahead of the stages, at least
READ_AHEAD_BYTES = 1 << 30  # decoded pixels read ahead, at most, when more workers want more batches
FULL_SIZE_GUESS = 1 << 20  # bytes of a full-size picture, for that bound, when no decode size is known


def read_ahead(batch_size: int, workers: int, decode: DecodeOptions) -> int:
    """Batches read and decoded ahead of the stages: two, or more with many workers, so that each
    still holds its ``JOBS_PER_WORKER`` jobs of at least :data:`MIN_CHUNK` images (with 64 workers
    and batches of 256, two batches ahead gave jobs of 4 images, each job costing the main process
    as much as one of 32); at most :data:`READ_AHEAD_BYTES` of pixels, never fewer than two."""
    batch_size = max(1, batch_size)
    wanted = math.ceil(JOBS_PER_WORKER * max(1, workers) * min(MIN_CHUNK, batch_size) / batch_size)
    if decode.min_side:
        per_image = decode.min_side ** 2 * 3 * (1 if decode.crop else 2)  # not square: the longer side guessed
    else:
        per_image = FULL_SIZE_GUESS
    affordable = READ_AHEAD_BYTES // (batch_size * per_image)
    return max(READ_AHEAD_BATCHES, min(wanted, affordable))


def decode_chunk(batch_size: int, workers: int, read_ahead: int = READ_AHEAD_BATCHES) -> int:
    """Images per decode job: as many as keep every worker holding its ``JOBS_PER_WORKER`` jobs
    from the ``read_ahead`` batches decoding at once, up to :data:`MAX_CHUNK`. Every job costs the
    main process the same (a message each way, a wake-up, its bookkeeping: ~350 us of CPU on a
    small VM), so smaller jobs than that cost it more per image for nothing: 16 workers and
    batches of 256 get jobs of 16, where two jobs per worker per batch gave 8."""
    return max(1, min(MAX_CHUNK, read_ahead * batch_size // (JOBS_PER_WORKER * max(1, workers))))


def make_decoder(options: EmbedOptions, decode: DecodeOptions, ahead: int = READ_AHEAD_BATCHES) -> Decoder:
    """The run's decoder; ``ahead``: the batches the feeder reads ahead (the worker pool keeps an
    arena for each, one for the batch in the stages and one being given back)."""
    if options.decode == "gpu":
        from curator_cli.decode.gpu import GpuDecoder

        return GpuDecoder(decode, options.device)
    if options.num_workers <= 0:
        return InlineDecoder(decode)
    start, nice = helper_process_start(options)
    return DecodePool(options.num_workers, decode, options.decode_timeout, start, nice,
                      arenas=ahead + ARENAS - READ_AHEAD_BATCHES)


def helper_process_start(options: EmbedOptions) -> tuple[str, int]:
    """(start method, niceness) for the run's helper processes, the decode workers and the tar
    reader: forked while this process runs no other thread, spawned otherwise (forking a process
    that runs other threads, Ray's or a test runner's, is not safe); at nice 19 beside CPU stages."""
    start = options.worker_start if threading.active_count() == 1 else "spawn"
    return start, DECODE_NICE_BESIDE_CPU_STAGES if options.device == "cpu" else 0


@dataclass
class ShardTally:
    """Rows handed to the writer for one shard so far, and how many of them carry an error."""

    rows: int = 0
    failed: int = 0


class _Run:
    """One :meth:`ShardProcessor.run`: the writer, the per-shard tallies, the failures; one method per event."""

    def __init__(self, processor: ShardProcessor, shards: list[Shard], targets: dict[Shard, Path], bar: Any) -> None:
        self.processor = processor
        self.shards = shards
        self.targets = targets
        self.bar = bar
        self.writer = BackgroundWriter(processor.layout)
        self.tallies: dict[str, ShardTally] = {}
        self.failed: dict[str, str] = {}
        self.finished = 0

    def fail(self, key: str, reason: str) -> None:
        """Drop the shard's output and report it; stop the run under ``--on-error fail``."""
        self.failed[key] = reason
        self.writer.abort(key, reason)
        report_failure(self.bar, key, reason)
        if self.processor.options.on_error == "fail":
            raise _StopRun

    def on_opened(self, event: ShardOpened) -> None:
        key = event.shard.name
        self.writer.open(key, self.targets[event.shard], event.passthrough_fields)
        self.tallies[key] = ShardTally()

    def on_batch(self, event: BatchReady) -> None:
        key = event.shard.name
        if key in self.failed:
            event.abandon()
            return
        try:
            rows = self.processor.run_batch(event)
        except StageFailure as exc:
            log.error("shard %s: %s", key, exc, exc_info=exc.error)
            self.fail(key, str(exc))
            return
        except StageTimeout as exc:  # the stage is still running: nothing else can run the stages now
            self.fail(key, str(exc))
            raise _StopRun from None
        self.writer.write(key, rows)
        self.tally(key, rows)
        if self.bar is not None:
            self.bar.update(len(rows))

    def tally(self, key: str, rows: list[OutputRow]) -> None:
        tally = self.tallies[key]
        tally.rows += len(rows)
        for row in rows:
            if row.error:
                tally.failed += 1
                self.processor.stats.count_error(row.error)

    def on_finished(self, event: ShardFinished) -> None:
        key = event.shard.name
        self.processor.stats.seconds_read += event.read_seconds
        self.finished += 1
        if self.bar is not None:
            self.bar.shards_done(self.finished, len(self.shards))
        if key in self.failed:
            return
        reason = event.error or (None if event.samples else "empty shard: no samples")
        if reason:
            self.fail(key, reason)
            return
        tally = self.tallies.get(key, ShardTally())
        self.writer.commit(key, Manifest(input=key, input_identity=input_identity(event.shard.path),
                                         config=self.processor.config, rows=tally.rows, failed_rows=tally.failed))

    def outcomes(self, written: dict) -> dict[str, ShardOutcome]:
        """Each shard's outcome, from the failures seen here and what the writer committed."""
        outcomes: dict[str, ShardOutcome] = {}
        for shard in self.shards:
            key = shard.name
            if key in self.failed:
                outcomes[key] = ShardOutcome(error=self.failed[key])
            elif key in written:
                if written[key].error is not None:
                    report_failure(self.bar, key, written[key].error)
                tally = self.tallies.get(key, ShardTally())
                outcomes[key] = ShardOutcome(tally.rows, tally.failed, written[key].error)
        return outcomes


class ShardProcessor:
    """The pipeline for shards in one process: decode workers, the stages, the writer thread."""

    def __init__(self, stages: list[ProcessingStage], options: EmbedOptions, decode: DecodeOptions,
                 config: dict, worker: WorkerMetadata) -> None:
        self.stages = stages
        self.options = options
        self.decode = decode
        self.config = config
        self.worker = worker
        self.layout = OutputLayout(embedding_dtype=options.embedding_dtype, declared_scores=declared_scores(stages))
        staging = HostStaging(device=options.device) if decode.crop and options.device.startswith("cuda") else None
        self.context = StageContext(device=options.device, precision=options.precision, squares=decode.crop,
                                    staging=staging)
        self.stats = WorkerStats()
        # batches read and decoded ahead of the stages: more with many decode workers; nvJPEG decodes
        # a whole batch per call
        self.read_ahead = READ_AHEAD_BATCHES if options.decode == "gpu" else read_ahead(
            options.batch_size, max(1, options.num_workers), decode)
        self._decoder: Decoder | None = None
        self._reader: ReaderProcess | None = None
        self._warm_up: threading.Thread | None = None
        self._set_up = False
        self._stage_thread = StageThread(threaded=options.stage_timeout > 0)
        self._doing = "starting"  # what the run waits on, for the heartbeat (see activity())

    def start(self) -> None:
        """Start the decoders and the tar reader (processes take a moment to start; they serve every
        ``run``)."""
        if self._decoder is None:
            if self.options.num_workers > 0 or self.options.decode == "gpu":  # --num-workers 0: one process
                self._reader = ReaderProcess(*helper_process_start(self.options))  # before any thread: may fork
            self._decoder = make_decoder(self.options, self.decode, self.read_ahead)  # before any thread: may fork
            self._warm_up = threading.Thread(target=warm_up, name="curator-warm-up", daemon=True)
            self._warm_up.start()

    def setup(self, on_node: bool = True) -> None:
        """``setup_on_node`` and ``setup`` of every stage, in the stage thread (no timeout: a model
        download may take long)."""
        t0 = time.perf_counter()
        self._doing = "setting up the stages"
        self._stage_thread.call(lambda: setup_stages(self.stages, self.worker, on_node))
        if self._warm_up is not None:  # start-up, like the model load: over before the first batch
            self._warm_up.join()
            self._warm_up = None
        self._set_up = True
        self.stats.seconds_setup += time.perf_counter() - t0

    def teardown(self) -> None:
        """The stages' ``teardown`` (in the stage thread; skipped when a stage is stuck, or still on a
        batch :data:`TEARDOWN_WAIT_S` after an interrupt), then the decoders are stopped."""
        stage_thread = self._stage_thread
        try:
            if not self.stages_stuck and stage_thread.wait_idle(TEARDOWN_WAIT_S):
                started = time.monotonic()
                timeout = self.options.stage_timeout
                stage_thread.call(lambda: teardown_stages(self.stages), overdue=lambda: (
                    "teardown still running" if time.monotonic() - started > timeout else None))
            else:
                log.warning("teardown of the stages skipped: %s", stage_thread.stuck or "a stage is still running")
        except StageTimeout as exc:
            log.warning("teardown of the stages given up after %gs (--stage-timeout): %s",
                        self.options.stage_timeout, exc)
        finally:
            stage_thread.close()
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @property
    def stages_stuck(self) -> str | None:
        """Why the stages cannot run now (a call given up on by ``--stage-timeout`` is still running),
        or None. Such a processor fails every shard it is handed at once: a Ray actor in this state
        is better ended, so that a fresh one takes its place."""
        thread = self._stage_thread
        return thread.stuck if thread.stuck is not None and thread.busy else None

    def activity(self) -> str:
        """What the run is waiting on, for the heartbeat: a stage (which, on what, for how long), the
        stages' setup, input (reading and decoding), or the writer."""
        running = self.context.running
        if running is not None:
            name, since = running
            return f"waiting on stage {name!r} ({self._doing}) for {time.monotonic() - since:.0f}s"
        return f"waiting on {self._doing}"

    def _overdue(self) -> str | None:
        """Why to give up on the stage running now, once it has run longer than ``--stage-timeout``."""
        running, timeout = self.context.running, self.options.stage_timeout
        if running is None or not timeout or time.monotonic() - running[1] <= timeout:
            return None
        return (f"stage {running[0]!r} did not return within {timeout:g}s (--stage-timeout); a running stage "
                "cannot be stopped, so the run stops here (finished shards are kept; rerun to resume)")

    def run(self, shards: list[Shard], targets: dict[Shard, Path], bar: Any = None) -> dict[str, ShardOutcome]:
        """Embed ``shards``; returns each shard's outcome. A failing shard does not stop the others
        (unless ``--on-error fail``); an exception (interrupt, bug) discards the shards in progress.

        Stages not set up yet are set up here, after the feeder has started, so the first batches
        decode while the model loads."""
        options, stats = self.options, self.stats
        workers = max(1, options.num_workers)
        # CPU workers share a batch in jobs; nvJPEG decodes a whole batch in one call
        chunk = (options.batch_size if options.decode == "gpu"
                 else decode_chunk(options.batch_size, workers, self.read_ahead))
        self.start()
        decoder = self._decoder
        assert decoder is not None
        if self.stages_stuck:  # an earlier run gave up on a stage that is still running
            reason = f"not run: {self.stages_stuck}"
            for shard in shards:
                report_failure(bar, shard.name, reason)
            return {shard.name: ShardOutcome(error=reason) for shard in shards}
        set_activity(bar, self.activity)
        replaced_before = decoder.replaced_workers
        feeder = Feeder(shards, options.read, decoder, options.batch_size, chunk, prefetch=self.read_ahead,
                        reader=self._reader)
        run = _Run(self, shards, targets, bar)
        clean_exit = False
        cpu0 = stage_cpu0 = None
        try:
            if not self._set_up:
                feeder.start()
                self.setup()
            cpu0, stage_cpu0 = process_cpu_seconds(), self.context.stage_cpu_seconds  # past the model load
            self._doing = "input (reading and decoding)"
            for event in _timed(feeder, stats):
                if isinstance(event, FeederCrashed):
                    raise event.error
                if isinstance(event, ShardOpened):
                    run.on_opened(event)
                elif isinstance(event, BatchReady):
                    run.on_batch(event)
                elif isinstance(event, ShardFinished):
                    run.on_finished(event)
                self._doing = "input (reading and decoding)"
            clean_exit = True
        except _StopRun:
            clean_exit = True
        finally:
            self._doing = "the writer (last outputs)"
            feeder.stop()
            written = run.writer.close(discard=not clean_exit)
            if cpu0 is not None:
                stats.main_cpu_seconds += ((process_cpu_seconds() - cpu0)
                                           - (self.context.stage_cpu_seconds - stage_cpu0))
            stats.seconds_write += run.writer.busy_seconds
            stats.decode_workers_replaced += decoder.replaced_workers - replaced_before
            stats.embedding_dim = self.layout.dim
            stats.stage_batch_size = self.context.max_images or options.batch_size
        return run.outcomes(written)

    def run_batch(self, event: BatchReady) -> list[OutputRow]:
        """Wait for a batch's pixels, run the stages over it; its output rows, in input order."""
        stats = self.stats
        key = event.shard.name
        self._doing = f"decoded images of {key} batch {event.index}"
        t0 = time.perf_counter()
        try:
            decoded = event.resolve()
        except BaseException:
            event.abandon()
            raise
        stats.seconds_wait_input += time.perf_counter() - t0
        stats.seconds_decode += decoded.decode_seconds
        stats.decode_cpu_seconds += decoded.decode_cpu_seconds
        self._doing = f"{key} batch {event.index}"
        t0 = time.perf_counter()
        try:
            return self._stage_thread.call(
                lambda: run_stages(self.stages, decoded, key, f"{key}:{event.index}", self.layout, self.context),
                overdue=self._overdue)
        finally:
            stats.seconds_stages += time.perf_counter() - t0
            if not self.stages_stuck:  # a stage still running may still read the pixels
                decoded.release()


def _timed(events: Iterable[Any], stats: WorkerStats) -> Iterator[Any]:
    """Yield from ``events``, adding time spent waiting for each to ``seconds_wait_input``."""
    iterator = iter(events)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        stats.seconds_wait_input += time.perf_counter() - t0
        yield item
