"""The local executor: shards flow through read -> decode -> batch -> stages -> write, overlapped.

Reading runs in a feeder thread, decoding in worker processes, the stages in this thread, and
writing in a writer thread; a bounded number of batches is in flight at any time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from curator_cli.execution.feeder import BatchReady, Feeder, FeederCrashed, ShardFinished, ShardOpened
from curator_cli.decode.pillow import DecodeOptions
from curator_cli.decode.pool import DecodePool, InlineDecoder
from curator_cli.io.manifest import SUCCESS_FILE, Manifest, input_identity, read_manifest, stage_identity, write_success
from curator_cli.execution.stage_runner import StageContext, StageFailure, decode_request, run_stages
from curator_cli.io.readers import ReadOptions
from curator_cli.io.shards import Shard, output_paths
from curator_cli.stages.base import ProcessingStage
from curator_cli.execution.summary import RunSummary, ShardFailure
from curator_cli.stages.worker_metadata import NodeInfo, WorkerMetadata
from curator_cli.io.writer import SCORE_COLUMNS, BackgroundWriter, OutputLayout

log = logging.getLogger("curator")


class StageSetupError(Exception):
    """A stage's ``setup`` raised: the run cannot start."""


class ConfigMismatchError(Exception):
    """Existing outputs were made with other stages or arguments, and ``--overwrite`` was not given."""


@dataclass
class EmbedOptions:
    """Everything ``curator embed`` was asked to do, past the shard list and the stages."""

    output_dir: Path
    batch_size: int = 256
    device: str = "cpu"
    read: ReadOptions = field(default_factory=ReadOptions)
    max_pixels: int | None = None
    decode_size: str | None = None  # --decode-size: None (stages decide), "full" or a number
    decode: str = "cpu"  # or "gpu"
    num_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    decode_timeout: float = 60.0
    precision: str = "fp32"
    embedding_dtype: str = "float32"
    on_error: str = "continue"  # or "fail": stop at the first failing shard
    overwrite: bool = False
    progress: bool = False
    # how decode workers start: fork is fast and safe here because the pool starts before any thread
    # or model exists; Ray actors (threads from the start) use spawn
    worker_start: str = field(default_factory=lambda: "fork" if sys.platform == "linux" else "spawn")


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


def run_config(stages: list[ProcessingStage], options: EmbedOptions, decode: DecodeOptions) -> dict:
    """What determines the output's content: a rerun with a different config must not mix outputs."""
    return {
        "stages": [stage_identity(s) for s in stages],
        "image_exts": list(options.read.image_exts),
        "image_column": options.read.image_column,
        "id_column": options.read.id_column,
        "decode_min_side": decode.min_side,
        "decode_crop": decode.crop,
        "max_pixels": decode.max_pixels,
        "embedding_dtype": options.embedding_dtype,
        "precision": options.precision,
    }


def plan_resume(shards: list[Shard], targets: dict[Shard, Path], config: dict,
                overwrite: bool) -> tuple[list[Shard], list[Shard]]:
    """(shards to do, shards already done). Raises :class:`ConfigMismatchError` for outputs of another config."""
    todo, done, mismatched = [], [], []
    for shard in shards:
        target = targets[shard]
        manifest = read_manifest(target)
        if overwrite or manifest is None:
            todo.append(shard)
        elif manifest.config != config:
            mismatched.append(shard)
        elif manifest.input_identity != input_identity(shard.path):
            todo.append(shard)  # the input changed since: redo it
        else:
            done.append(shard)
    if mismatched:
        names = ", ".join(s.name for s in mismatched[:5]) + (" ..." if len(mismatched) > 5 else "")
        raise ConfigMismatchError(
            f"{len(mismatched)} shard(s) in {targets[mismatched[0]].parent} were embedded with other stages or "
            f"options ({names}); use --overwrite to redo them, or another --output"
        )
    return todo, done


def clean_stale_temporaries(output_dir: Path) -> int:
    """Remove temporary files left by a killed run (hidden ``.NAME.tmp-PID`` files)."""
    removed = 0
    if output_dir.is_dir():
        for path in output_dir.rglob(".*.tmp-*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# Stages on the CPU share the cores with the decode workers: a worker preempting one of the model's
# threads stalls the others at their next barrier, so workers yield (bench/RESULTS.md: resnet18 on 2
# cores, stage time per 250-image batch 3.8 s with workers at the model's priority, 3.2 s at nice 19).
DECODE_NICE_BESIDE_CPU_STAGES = 19


def make_decoder(options: EmbedOptions, decode: DecodeOptions):
    if options.decode == "gpu":
        from curator_cli.decode.gpu import GpuDecoder

        return GpuDecoder(decode, options.device)
    if options.num_workers <= 0:
        return InlineDecoder(decode)
    # forking a process that runs other threads (Ray's, a test runner's) is not safe: spawn then
    start = options.worker_start if threading.active_count() == 1 else "spawn"
    nice = DECODE_NICE_BESIDE_CPU_STAGES if options.device == "cpu" else 0
    return DecodePool(options.num_workers, decode, options.decode_timeout, start, nice)


def _progress_bar(enabled: bool, shards: int):
    from tqdm import tqdm

    return tqdm(total=None, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                desc="embedding", postfix=f"shards 0/{shards}")


@dataclass
class RunPlan:
    """What a run will do: the shards left to embed, where each goes, and the config they are made with."""

    shards: list[Shard]
    todo: list[Shard]
    targets: dict[Shard, Path]
    decode: DecodeOptions
    config: dict
    summary: RunSummary


def plan_run(shards: list[Shard], stages: list[ProcessingStage], options: EmbedOptions) -> RunPlan:
    """Decide decode settings and which shards are already done; clear what a killed run left."""
    from curator_cli.decode.pillow import DEFAULT_MAX_PIXELS

    summary = RunSummary(output_dir=str(options.output_dir), shards_total=len(shards))
    targets = output_paths(shards, options.output_dir)
    min_side, crop = decode_request(stages, options.decode_size)
    decode = DecodeOptions(max_pixels=options.max_pixels or DEFAULT_MAX_PIXELS, min_side=min_side, crop=crop)
    config = run_config(stages, options, decode)
    todo, done = plan_resume(shards, targets, config, options.overwrite)
    summary.shards_skipped = len(done)
    summary.decode_min_side = min_side
    clean_stale_temporaries(options.output_dir)
    (options.output_dir / SUCCESS_FILE).unlink(missing_ok=True)
    return RunPlan(shards, todo, targets, decode, config, summary)


def finish_run(plan: RunPlan, outcomes: dict[str, ShardOutcome], started: float) -> RunSummary:
    """Fold per-shard outcomes into the summary; write ``_SUCCESS`` when every shard is done."""
    summary = plan.summary
    for shard in plan.todo:
        outcome = outcomes.get(shard.name)
        if outcome is None:
            continue  # never started (--on-error fail stopped the run first)
        if outcome.error is None:
            summary.shards_written += 1
            summary.images += outcome.rows
            summary.images_failed += outcome.failed_rows
        else:
            summary.shards_failed.append(ShardFailure(shard.name, outcome.error))
    summary.seconds = time.perf_counter() - started
    if not summary.shards_failed and summary.shards_written + summary.shards_skipped == summary.shards_total:
        write_success(Path(summary.output_dir))
    return summary


def run_local(shards: list[Shard], stages: list[ProcessingStage], options: EmbedOptions) -> RunSummary:
    """Embed every shard not already done, in this process; a failing shard is reported and the others go on.

    The caller holds the output lock. Ctrl-C/SIGTERM (as exceptions) discard the shards in progress
    and keep the finished ones.
    """
    started = time.perf_counter()
    plan = plan_run(shards, stages, options)
    outcomes: dict[str, ShardOutcome] = {}
    if plan.todo:
        worker = WorkerMetadata(worker_id="local-0", device=options.device,
                                extra={"precision": options.precision, "decode_size": plan.decode.min_side})
        processor = ShardProcessor(stages, options, plan.decode, plan.config, worker)
        processor.start()  # decode workers start before any thread (the progress bar's) or model exists
        bar = _progress_bar(options.progress, len(plan.todo))
        try:  # run() sets the stages up once the first images are decoding
            outcomes = processor.run(plan.todo, plan.targets, bar)
        finally:
            bar.close()
            processor.teardown()
        plan.summary.merge_stats(processor.stats)
    return finish_run(plan, outcomes, started)


@dataclass
class ShardOutcome:
    """How one shard ended: written with ``rows`` rows (``failed_rows`` of them with an error), or failed."""

    rows: int = 0
    failed_rows: int = 0
    error: str | None = None


class ShardProcessor:
    """The pipeline for shards in one process: decode workers, the stages, the writer thread.

    The local executor runs one over every shard; each Ray actor runs one over the shards it is given.
    """

    def __init__(self, stages: list[ProcessingStage], options: EmbedOptions, decode: DecodeOptions,
                 config: dict, worker: WorkerMetadata) -> None:
        self.stages = stages
        self.options = options
        self.decode = decode
        self.config = config
        self.worker = worker
        self.layout = OutputLayout(embedding_dtype=options.embedding_dtype, declared_scores=declared_scores(stages))
        self.context = StageContext(device=options.device, precision=options.precision, squares=decode.crop)
        self.stats = RunSummary(output_dir=str(options.output_dir))
        self._decoder = None
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

    def run(self, shards: list[Shard], targets: dict[Shard, Path], bar=None) -> dict[str, ShardOutcome]:
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
        replaced_before = decoder.replaced_workers
        writer = BackgroundWriter(self.layout)
        feeder = Feeder(shards, options.read, decoder, options.batch_size, chunk, prefetch=2)
        counts: dict[str, list[int]] = {}
        failed: dict[str, str] = {}
        finished = 0
        clean_exit = False

        def fail(key: str, reason: str) -> bool:
            """Drop the shard's output and report it; True when the run should stop (--on-error fail)."""
            failed[key] = reason
            writer.abort(key, reason)
            _report_failure(bar, key, reason)
            return options.on_error == "fail"

        try:
            if not self._set_up:
                feeder.start()
                self.setup()
            for event in _timed(feeder, stats):
                if isinstance(event, FeederCrashed):
                    raise event.error
                key = event.shard.name
                if isinstance(event, ShardOpened):
                    writer.open(key, targets[event.shard], event.passthrough_fields)
                    counts[key] = [0, 0]
                elif isinstance(event, BatchReady):
                    if key in failed:
                        continue
                    try:
                        rows = self._run_batch(event)
                    except StageFailure as exc:
                        log.error("shard %s: %s", key, exc, exc_info=exc.error)
                        if fail(key, str(exc)):
                            break
                        continue
                    writer.write(key, rows)
                    counts[key][0] += len(rows)
                    for r in rows:
                        if r.error:
                            counts[key][1] += 1
                            stats.count_error(r.error)
                    if bar is not None:
                        bar.update(len(rows))
                elif isinstance(event, ShardFinished):
                    stats.seconds_read += event.read_seconds
                    finished += 1
                    if bar is not None:
                        bar.set_postfix_str(f"shards {finished}/{len(shards)}")
                    if key in failed:
                        continue
                    reason = event.error or (None if event.samples else "empty shard: no samples")
                    if reason:
                        if fail(key, reason):
                            break
                        continue
                    rows, bad = counts.get(key, [0, 0])
                    writer.commit(key, Manifest(input=key, input_identity=input_identity(event.shard.path),
                                                config=self.config, rows=rows, failed_rows=bad))
            clean_exit = True
        finally:
            feeder.stop()
            written = writer.close(discard=not clean_exit)
            stats.seconds_write += writer.busy_seconds
            stats.decode_workers_replaced += decoder.replaced_workers - replaced_before
            stats.embedding_dim = self.layout.dim
            stats.stage_batch_size = self.context.max_images or options.batch_size
        outcomes: dict[str, ShardOutcome] = {}
        for shard in shards:
            key = shard.name
            if key in failed:
                outcomes[key] = ShardOutcome(error=failed[key])
            elif key in written:
                if written[key].error is not None:
                    _report_failure(bar, key, written[key].error)
                rows, bad = counts.get(key, [0, 0])
                outcomes[key] = ShardOutcome(rows, bad, written[key].error)
        return outcomes

    def _run_batch(self, event: BatchReady) -> list:
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


def _report_failure(bar, shard: str, reason: str) -> None:
    line = f"curator: shard {shard} failed: {reason}"
    log.error(line)
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _timed(events, summary: RunSummary):
    """Yield from ``events``, adding time spent waiting for each to ``seconds_wait_input``."""
    iterator = iter(events)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        summary.seconds_wait_input += time.perf_counter() - t0
        yield item
