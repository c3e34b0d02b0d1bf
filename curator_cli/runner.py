"""The local executor: every shard through read -> decode -> batch -> stages -> write, one after another."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from curator_cli.batching import DecodeOptions, iter_decoded_batches
from curator_cli.pipeline import StageFailure, run_stages
from curator_cli.readers import ReadOptions, ShardReadError
from curator_cli.shards import Shard, output_paths
from curator_cli.stages.base import ProcessingStage
from curator_cli.summary import RunSummary, ShardFailure
from curator_cli.workers import NodeInfo, WorkerMetadata
from curator_cli.writer import SCORE_COLUMNS, OutputLayout, ShardWriter

log = logging.getLogger("curator")


class StageSetupError(Exception):
    """A stage's ``setup`` raised: the run cannot start."""


@dataclass
class EmbedOptions:
    """Everything ``curator embed`` was asked to do, past the shard list and the stages."""

    output_dir: Path
    batch_size: int = 256
    device: str = "cpu"
    read: ReadOptions = field(default_factory=ReadOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    embedding_dtype: str = "float32"
    on_error: str = "continue"  # or "fail": stop at the first failing shard
    progress: bool = False


def setup_stages(stages: list[ProcessingStage], device: str) -> WorkerMetadata:
    """Call ``setup_on_node`` then ``setup`` on every stage, once for the run."""
    worker = WorkerMetadata(worker_id="local-0", device=device)
    for stage in stages:
        try:
            stage.setup_on_node(NodeInfo(), worker)
            stage.setup(worker)
        except Exception as exc:
            log.exception("setup of stage %s failed", stage.name)
            raise StageSetupError(f"setup of stage {stage.name!r} failed: {type(exc).__name__}: {exc}") from exc
    return worker


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


def _progress_bar(enabled: bool, shards: int):
    from tqdm import tqdm

    return tqdm(total=None, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                desc="embedding", postfix=f"shards 0/{shards}")


def run_local(shards: list[Shard], stages: list[ProcessingStage], options: EmbedOptions) -> RunSummary:
    """Embed every shard; a shard that fails is reported in the summary and the others go on."""
    summary = RunSummary(output_dir=str(options.output_dir), shards_total=len(shards))
    targets = output_paths(shards, options.output_dir)
    layout = OutputLayout(embedding_dtype=options.embedding_dtype, declared_scores=declared_scores(stages))
    started = time.perf_counter()
    waiting_for_dim: list[tuple[ShardWriter, int, int]] = []
    bar = _progress_bar(options.progress, len(shards))
    setup_stages(stages, options.device)
    try:
        for number, shard in enumerate(shards):
            writer: ShardWriter | None = None
            images = failed = 0
            try:
                batches = iter_decoded_batches(shard, options.read, options.decode, options.batch_size)
                for index, decoded in enumerate(_timed(batches, summary)):
                    summary.seconds_read += decoded.read_seconds
                    summary.seconds_decode += decoded.decode_seconds
                    t0 = time.perf_counter()
                    rows = run_stages(stages, decoded, shard.name, f"{shard.name}:{index}", layout)
                    t1 = time.perf_counter()
                    if writer is None:
                        writer = ShardWriter(targets[shard], decoded.passthrough_fields, layout)
                    writer.write(rows)
                    summary.seconds_stages += t1 - t0
                    summary.seconds_write += time.perf_counter() - t1
                    images += len(rows)
                    failed += sum(1 for r in rows if r.error)
                    for r in rows:
                        if r.error:
                            summary.count_error(r.error)
                    bar.update(len(rows))
                if images == 0:
                    raise ShardReadError("empty shard: no samples")
                assert writer is not None
                if writer.waiting_for_dimension:
                    waiting_for_dim.append((writer, images, failed))
                else:
                    t0 = time.perf_counter()
                    writer.commit()
                    summary.seconds_write += time.perf_counter() - t0
                    summary.shards_written += 1
                summary.images += images
                summary.images_failed += failed
            except (ShardReadError, StageFailure) as exc:
                if writer is not None:
                    writer.abort()
                if isinstance(exc, StageFailure):
                    log.error("shard %s: %s", shard.name, exc, exc_info=exc.error)
                reason = str(exc)
                summary.shards_failed.append(ShardFailure(shard.name, reason))
                bar.write(f"curator: shard {shard.name} failed: {reason}", file=sys.stderr)
                if options.on_error == "fail":
                    break
            bar.set_postfix_str(f"shards {number + 1}/{len(shards)}")
        for writer, images, failed in waiting_for_dim:
            writer.commit()
            summary.shards_written += 1
    except BaseException:
        for writer, _, _ in waiting_for_dim:
            writer.abort()
        raise
    finally:
        bar.close()
        teardown_stages(stages)
    summary.embedding_dim = layout.dim
    summary.seconds = time.perf_counter() - started
    return summary


def _timed(batches, summary: RunSummary):
    """Yield from ``batches``, adding the time spent waiting for each to ``seconds_wait_input``."""
    iterator = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        summary.seconds_wait_input += time.perf_counter() - t0
        yield item
