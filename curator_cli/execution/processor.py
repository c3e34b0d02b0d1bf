"""The per-process pipeline over shards: read (feeder thread) -> decode (worker processes) ->
stages (this thread) -> write (writer thread), overlapped, with a bounded number of batches in
flight. The local executor runs one :class:`ShardProcessor` over every shard; each Ray actor runs
one over the shards it is handed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator_cli.decode.jobs import Decoder, InlineDecoder
from curator_cli.decode.pool import DecodePool
from curator_cli.execution.feeder import BatchReady, Feeder, FeederCrashed, ShardFinished, ShardOpened
from curator_cli.execution.plan import ShardOutcome
from curator_cli.execution.progress import report_failure
from curator_cli.execution.stage_runner import StageContext, StageFailure, run_stages
from curator_cli.execution.stats import WorkerStats
from curator_cli.io.manifest import Manifest, input_identity
from curator_cli.io.shards import Shard
from curator_cli.io.writer import SCORE_COLUMNS, BackgroundWriter, OutputLayout, OutputRow
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
    """``--on-error fail`` and a shard failed: stop taking events."""


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


def make_decoder(options: EmbedOptions, decode: DecodeOptions) -> Decoder:
    if options.decode == "gpu":
        from curator_cli.decode.gpu import GpuDecoder

        return GpuDecoder(decode, options.device)
    if options.num_workers <= 0:
        return InlineDecoder(decode)
    # forking a process that runs other threads (Ray's, a test runner's) is not safe: spawn then
    start = options.worker_start if threading.active_count() == 1 else "spawn"
    nice = DECODE_NICE_BESIDE_CPU_STAGES if options.device == "cpu" else 0
    return DecodePool(options.num_workers, decode, options.decode_timeout, start, nice)


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
            return
        try:
            rows = self.processor.run_batch(event)
        except StageFailure as exc:
            log.error("shard %s: %s", key, exc, exc_info=exc.error)
            self.fail(key, str(exc))
            return
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
            self.bar.set_postfix_str(f"shards {self.finished}/{len(self.shards)}")
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
        self.context = StageContext(device=options.device, precision=options.precision, squares=decode.crop)
        self.stats = WorkerStats()
        self._decoder: Decoder | None = None
        self._set_up = False

    def start(self) -> None:
        """Start the decoders (worker processes take a moment to start; they serve every ``run``)."""
        if self._decoder is None:
            self._decoder = make_decoder(self.options, self.decode)

    def setup(self, on_node: bool = True) -> None:
        t0 = time.perf_counter()
        setup_stages(self.stages, self.worker, on_node)
        self._set_up = True
        self.stats.seconds_setup += time.perf_counter() - t0

    def teardown(self) -> None:
        try:
            teardown_stages(self.stages)
        finally:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None

    def run(self, shards: list[Shard], targets: dict[Shard, Path], bar: Any = None) -> dict[str, ShardOutcome]:
        """Embed ``shards``; returns each shard's outcome. A failing shard does not stop the others
        (unless ``--on-error fail``); an exception (interrupt, bug) discards the shards in progress.

        Stages not set up yet are set up here, after the feeder has started, so the first batches
        decode while the model loads."""
        options, stats = self.options, self.stats
        workers = max(1, options.num_workers)
        # CPU workers share a batch in small jobs; nvJPEG decodes a whole batch in one call
        chunk = options.batch_size if options.decode == "gpu" else max(1, min(32, options.batch_size // (2 * workers)))
        self.start()
        decoder = self._decoder
        assert decoder is not None
        replaced_before = decoder.replaced_workers
        feeder = Feeder(shards, options.read, decoder, options.batch_size, chunk, prefetch=2)
        run = _Run(self, shards, targets, bar)
        clean_exit = False
        try:
            if not self._set_up:
                feeder.start()
                self.setup()
            for event in _timed(feeder, stats):
                if isinstance(event, FeederCrashed):
                    raise event.error
                if isinstance(event, ShardOpened):
                    run.on_opened(event)
                elif isinstance(event, BatchReady):
                    run.on_batch(event)
                elif isinstance(event, ShardFinished):
                    run.on_finished(event)
            clean_exit = True
        except _StopRun:
            clean_exit = True
        finally:
            feeder.stop()
            written = run.writer.close(discard=not clean_exit)
            stats.seconds_write += run.writer.busy_seconds
            stats.decode_workers_replaced += decoder.replaced_workers - replaced_before
            stats.embedding_dim = self.layout.dim
            stats.stage_batch_size = self.context.max_images or options.batch_size
        return run.outcomes(written)

    def run_batch(self, event: BatchReady) -> list[OutputRow]:
        """Wait for a batch's pixels, run the stages over it; its output rows, in input order."""
        stats = self.stats
        t0 = time.perf_counter()
        decoded = event.resolve()
        stats.seconds_wait_input += time.perf_counter() - t0
        stats.seconds_decode += decoded.decode_seconds
        t0 = time.perf_counter()
        try:
            key = event.shard.name
            return run_stages(self.stages, decoded, key, f"{key}:{event.index}", self.layout, self.context)
        finally:
            stats.seconds_stages += time.perf_counter() - t0


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
