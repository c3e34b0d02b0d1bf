"""Planning a run, the same for every executor: decode settings from the stages, where each shard's
output goes, which shards are already done (resume), and folding the outcomes into the summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from curator_cli.execution.stage_runner import decode_request
from curator_cli.execution.stats import process_age_seconds
from curator_cli.execution.summary import RunSummary, ShardFailure
from curator_cli.io.commit import clean_stale_temporaries
from curator_cli.io.manifest import SUCCESS_FILE, check_output, input_identity, write_success
from curator_cli.io.shards import Shard, output_paths
from curator_cli.io.totals import SampleCounts, count_samples
from curator_cli.loading.identity import is_legacy_identity, stage_identity
from curator_cli.options import DecodeOptions, EmbedOptions
from curator_cli.stages.base import ProcessingStage


class ConfigMismatchError(Exception):
    """Existing outputs were made with other stages or arguments, and ``--overwrite`` was not given."""


@dataclass
class ShardOutcome:
    """How one shard ended: written with ``rows`` rows (``failed_rows`` of them with an error), or failed."""

    rows: int = 0
    failed_rows: int = 0
    error: str | None = None


@dataclass
class RunPlan:
    """Everything an executor needs: the stages (and the specs that rebuild them elsewhere), the
    options, the shards left to embed, where each goes, and the config their manifests record."""

    stages: list[ProcessingStage]
    options: EmbedOptions
    shards: list[Shard]
    todo: list[Shard]
    targets: dict[Shard, Path]
    decode: DecodeOptions
    config: dict
    summary: RunSummary
    stage_specs: list[str] = field(default_factory=list)
    stage_args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    expected: SampleCounts | None = None  # rows each shard of ``todo`` will write: the progress bar's total


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
    """(shards to do, shards already done). Raises :class:`ConfigMismatchError` for outputs of another config.

    A shard is done when its output agrees with its manifest (``io.manifest.check_output``: the
    footer parses and counts the rows the manifest says), the manifest's config is this run's and
    the input is unchanged; any other output is redone. An output in which no image was embedded
    (``list<float>``, dimension unknown) is redone too when this run has other shards to do or other
    outputs know the dimension, so that the folder ends with one embedding type.
    """
    todo, done, mismatched, undimensioned = [], [], [], []
    dimensioned = False
    legacy = False
    for shard in shards:
        checked = None if overwrite else check_output(targets[shard])
        if checked is None:
            todo.append(shard)
        elif not checked.manifest.matches(config):
            mismatched.append(shard)
            legacy = legacy or any(is_legacy_identity(s) for s in checked.manifest.config.get("stages") or [])
        elif checked.manifest.input_identity != input_identity(shard.path):
            todo.append(shard)  # the input changed since: redo it
        elif checked.embedding_dim is None:
            undimensioned.append(shard)
        else:
            done.append(shard)
            dimensioned = True
    if mismatched:
        names = ", ".join(s.name for s in mismatched[:5]) + (" ..." if len(mismatched) > 5 else "")
        why = ("; their manifests, from an earlier curator, do not record the stage's source, so they "
               "cannot be checked" if legacy else "")
        raise ConfigMismatchError(
            f"{len(mismatched)} shard(s) in {targets[mismatched[0]].parent} were embedded with other stages or "
            f"options ({names}){why}; use --overwrite to redo them, or another --output"
        )
    if undimensioned and (todo or dimensioned):
        todo.extend(undimensioned)  # last: the dimension is known by then, so they need not wait for it
    else:
        done.extend(undimensioned)
    return todo, done


def plan_run(shards: list[Shard], stages: list[ProcessingStage], options: EmbedOptions,
             stage_specs: list[str] | None = None, stage_args: list[str] | None = None,
             shards_missing: int = 0) -> RunPlan:
    """Decide decode settings and which shards are already done; clear what a killed run left.
    ``shards_missing``: names of brace ranges that do not exist (no ``_SUCCESS`` while there are any).
    The caller holds the output lock."""
    started = time.perf_counter()
    summary = RunSummary(output_dir=str(options.output_dir), shards_total=len(shards), shards_missing=shards_missing)
    targets = output_paths(shards, options.output_dir)
    min_side, crop = decode_request(stages, options.decode_size)
    decode = DecodeOptions(min_side=min_side, crop=crop,
                           **({"max_pixels": options.max_pixels} if options.max_pixels else {}))
    config = run_config(stages, options, decode)
    todo, done = plan_resume(shards, targets, config, options.overwrite)
    summary.shards_skipped = len(done)
    summary.decode_min_side = min_side
    clean_stale_temporaries(options.output_dir)
    (options.output_dir / SUCCESS_FILE).unlink(missing_ok=True)
    return RunPlan(stages, options, shards, todo, targets, decode, config, summary,
                   list(stage_specs or []), list(stage_args or []), started, expected=count_samples(todo))


def finish_run(plan: RunPlan, outcomes: dict[str, ShardOutcome]) -> RunSummary:
    """Fold per-shard outcomes into the summary; write ``_SUCCESS`` when every shard is done (and none
    a brace range named is missing)."""
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
    summary.seconds = time.perf_counter() - plan.started
    summary.process_seconds = process_age_seconds()
    if (not summary.shards_failed and not summary.shards_missing
            and summary.shards_written + summary.shards_skipped == summary.shards_total):
        write_success(Path(summary.output_dir))
    return summary
