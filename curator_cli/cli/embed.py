"""``curator embed``: the options, parsed once into :class:`~curator_cli.options.EmbedOptions`; the
lock; the plan; the executor; the summary and the exit status."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from curator_cli.cli.exits import (EXIT_SHARDS_FAILED, UsageError, os_error_line, report_summary,
                                   stops_on_signals)
from curator_cli.options import DECODE_MODES, EMBEDDING_DTYPES, EXECUTORS, ON_ERROR, PRECISIONS

DEFAULT_STAGE = "perceptual"


def _setup_logging(log_file: Path | None, quiet: bool) -> None:
    logger = logging.getLogger("curator")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers.clear()
    if log_file:
        from curator_cli.io.shards import is_image_file, shard_format

        if shard_format(log_file) or is_image_file(log_file):
            raise UsageError(f"--log-file {log_file} is named like a shard or an image; name the log FILE.log")
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            # undecodable bytes of file names (surrogateescape) are written as \xNN, never a logging error
            handler = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise UsageError(f"cannot write the log file {log_file}: {exc.strerror or exc}") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the parquet files (one per input shard).")
@click.option("--stage", "stage_specs", multiple=True, metavar="SPEC",
              help="Stage to run: module:Class, path/to/file.py:Class, or a registered name. "
                   f"Repeat for several, run in order. Default: {DEFAULT_STAGE}.")
@click.option("--stage-arg", "stage_args", multiple=True, metavar="[STAGE.]KEY=VALUE",
              help="Constructor argument for a stage; with several stages prefix the class name or position.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Images per ImageBatch handed to the stages.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--image-ext", default="jpg;jpeg;png;webp", show_default=True,
              help="Tar members to take as the image, in order of preference.")
@click.option("--image-column", default=None, help="Parquet column with the image bytes (default: detected).")
@click.option("--id-column", default=None,
              help="Parquet column with the sample id (default: key, image_id, id or uid, else the row number).")
@click.option("--caption-column", default=None,
              help="Parquet column with the caption (default: caption, else text).")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Decode worker processes (default: the CPU count; 0 decodes in the main process).")
@click.option("--decode", "decode_mode", type=click.Choice(DECODE_MODES), default="cpu", show_default=True,
              help="gpu: batched nvJPEG decode on the CUDA device (non-JPEGs fall back to the CPU).")
@click.option("--decode-size", default=None, metavar="N|full",
              help="Decode images no smaller than N on the shorter side (default: what the stages "
                   "declare), or 'full' for full resolution.")
@click.option("--decode-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds one image may take to decode before it is given up as an error "
                   "(time a decode worker waits for a CPU does not count, on Linux).")
@click.option("--stage-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds one stage call (one batch) may take; past it the shard fails and the run stops "
                   "(a running stage cannot be stopped; rerun to resume). 0: no limit, stages run in the "
                   "main thread.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Autocast precision for stages that opt in (default: bf16 on CUDA and on CPUs "
                   "with native bf16, else fp32).")
@click.option("--embedding-dtype", type=click.Choice(EMBEDDING_DTYPES), default="float32", show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Images with more pixels are not decoded (default: Pillow's limit, about 89 million).")
@click.option("--on-error", type=click.Choice(ON_ERROR), default="continue", show_default=True,
              help="On a failing shard: go on with the others, or stop.")
@click.option("--overwrite", is_flag=True,
              help="Redo every shard, even those a previous run finished.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: this machine; ray: a pool of Ray actors (pip install 'curator-cli[ray]').")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="Ray cluster to join (default: RAY_ADDRESS if set, else a local Ray for this run).")
@click.option("--num-actors", type=click.IntRange(min=1), default=None,
              help="With --executor ray: at most this many actors (default: as many as the resources allow).")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON here.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write details (stage tracebacks) to this file.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def embed(inputs, output, stage_specs, stage_args, batch_size, device, image_ext, image_column, id_column,
          caption_column, num_workers, decode_mode, decode_size, decode_timeout, stage_timeout, precision,
          embedding_dtype, max_pixels, on_error, overwrite, executor, ray_address, num_actors, summary_json, log_file,
          quiet) -> None:
    """Compute embeddings for every image in INPUT... and write one parquet file per shard.

    INPUT is any mix of .tar shards, .parquet files, directories (searched recursively; a
    directory of loose images is one shard), globs and brace ranges like
    'shards/{00000..00099}.tar'. Output files mirror the inputs' layout under --output.

    Rerunning the same command finishes what is missing: shards whose output and manifest
    match are skipped. `_SUCCESS` is written in --output when every shard is done.

    Exit status: 0 all shards written, 1 some shards failed, 2 usage error,
    130/143 interrupted (Ctrl-C / SIGTERM).

    \b
    Examples:
      curator embed sample_data/ -o out/
      curator embed shards/ -o out/ --stage plugins/custom_embedding.py:MyCustomEmbeddingStage \\
          --stage-arg model_path=model.pt --batch-size 128 --device cuda
      curator embed 'shards/{00000..00099}.tar' -o out/ --summary-json out/_summary.json -q
    """
    from curator_cli.execution.plan import ConfigMismatchError, plan_run
    from curator_cli.execution.processor import StageSetupError
    from curator_cli.io.lock import LockedError, OutputLock
    from curator_cli.io.shards import ShardError, output_paths, scan_inputs, shard_format
    from curator_cli.loading.specs import StageSpecError, load_stages
    from curator_cli.options import EmbedOptions, OptionError, ReadOptions, parse_decode_size, parse_image_exts
    from curator_cli.stages.runtime import DeviceError, default_precision, resolve_device, set_active_device

    _setup_logging(log_file, quiet)
    try:
        exts = parse_image_exts(image_ext)
        size = parse_decode_size(decode_size)
        specs = list(stage_specs) or [DEFAULT_STAGE]
        stages = load_stages(specs, list(stage_args))
        chosen_device = resolve_device(device)
        if decode_mode == "gpu" and not chosen_device.startswith("cuda"):
            raise DeviceError("--decode gpu needs a CUDA device, and this run uses the CPU "
                              "(no CUDA here, or --device cpu); use --decode cpu")
        scan = scan_inputs(list(inputs), exclude=output)
        shards = scan.shards
        if not shards:
            if any(Path(i).resolve() == output.resolve() for i in inputs):
                raise UsageError(f"no shards found in {' '.join(inputs)}: the output directory {output} is never "
                                 "read as input; choose another --output")
            raise UsageError(f"no shards found in {' '.join(inputs)} (looked for .tar, .parquet and image folders)")
        output_paths(shards, output)  # collisions, and outputs that would replace inputs, before any work
        if summary_json and (shard_format(summary_json) or summary_json.resolve() in scan.input_files()):
            raise UsageError(f"--summary-json {summary_json} would overwrite an input; name it FILE.json")
    except (OptionError, StageSpecError, DeviceError, ShardError) as exc:
        raise UsageError(str(exc)) from None
    set_active_device(chosen_device)
    options = EmbedOptions(
        output_dir=output,
        batch_size=batch_size,
        device=chosen_device,
        read=ReadOptions(image_exts=exts, image_column=image_column, id_column=id_column,
                         caption_column=caption_column),
        max_pixels=max_pixels,
        decode_size=size,
        decode=decode_mode,
        num_workers=(os.cpu_count() or 1) if num_workers is None else num_workers,
        decode_timeout=decode_timeout,
        stage_timeout=stage_timeout,
        precision=precision or default_precision(chosen_device),
        embedding_dtype=embedding_dtype,
        on_error=on_error,
        overwrite=overwrite,
        progress=not quiet and sys.stderr.isatty(),
        executor=executor,
        ray_address=ray_address,
        num_actors=num_actors,
    )
    if executor == "ray":
        from curator_cli.execution.ray import RayUnavailable, import_ray, run_ray as run

        try:
            import_ray()
        except RayUnavailable as exc:
            raise UsageError(str(exc)) from None
    else:
        from curator_cli.execution.local import run_local as run
    lock = OutputLock(output)
    started = False
    try:
        with stops_on_signals("curator", "shards"), lock:
            started = True
            summary = run(plan_run(shards, stages, options, specs, list(stage_args),
                                   shards_missing=len(scan.missing)))
    except (LockedError, ConfigMismatchError, ShardError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # the output folder, its lock or _SUCCESS cannot be written (a shard's own failure is its row)
        logging.getLogger("curator").exception("run stopped")
        if not started:
            raise UsageError(f"cannot write to the output directory {output}: {os_error_line(exc)}") from None
        raise UsageError(f"{os_error_line(exc)}; finished shards are kept, rerun the same command to resume") from None
    except StageSetupError as exc:
        raise click.ClickException(str(exc)) from None
    report_summary(summary, summary_json, quiet)
    if summary.shards_failed:
        sys.exit(EXIT_SHARDS_FAILED)
