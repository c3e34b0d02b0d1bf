"""The ``curator`` command line: ``embed``, ``inspect``, ``show``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import click

from curator_cli import __version__
from curator_cli.stages.runtime import PRECISIONS

DEFAULT_STAGE = "perceptual"
EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


class UsageError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = EXIT_USAGE


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="curator")
def main() -> None:
    """Batch image embeddings over sharded datasets.

    Point it at WebDataset tar shards, parquet files with image bytes, or folders of images;
    name the embedding stage to run; get one parquet file of embeddings per shard.

    \b
    Examples:
      curator embed shards/ -o embeddings/
      curator embed 'shards/{00000..00099}.tar' -o out/ --stage my_stages.py:MyStage --stage-arg model_path=m.pt
      curator inspect shards/
      curator show embeddings/
    """


def _setup_logging(log_file: Path | None, quiet: bool) -> None:
    logger = logging.getLogger("curator")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers.clear()
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())


@main.command()
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
@click.option("--decode", "decode_mode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu: batched nvJPEG decode on the CUDA device (non-JPEGs fall back to the CPU).")
@click.option("--decode-size", default=None, metavar="N|full",
              help="Decode images no smaller than N on the shorter side (default: what the stages "
                   "declare), or 'full' for full resolution.")
@click.option("--decode-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds one image may take to decode before it is given up as an error "
                   "(time a decode worker waits for a CPU does not count, on Linux).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Autocast precision for stages that opt in (default: bf16 on CUDA and on CPUs "
                   "with native bf16, else fp32).")
@click.option("--embedding-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Images with more pixels are not decoded (default: Pillow's limit, about 89 million).")
@click.option("--on-error", type=click.Choice(["continue", "fail"]), default="continue", show_default=True,
              help="On a failing shard: go on with the others, or stop.")
@click.option("--overwrite", is_flag=True,
              help="Redo every shard, even those a previous run finished.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
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
          caption_column, num_workers, decode_mode, decode_size, decode_timeout, precision, embedding_dtype, max_pixels,
          on_error, overwrite, executor, ray_address, num_actors, summary_json, log_file, quiet) -> None:
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
    from curator_cli.devices import DeviceError, resolve_device, set_active_device
    from curator_cli.io.lock import LockedError, OutputLock
    from curator_cli.execution.stage_runner import default_precision
    from curator_cli.io.readers import ReadOptions
    from curator_cli.execution.processor import ConfigMismatchError, EmbedOptions, StageSetupError, run_local
    from curator_cli.io.shards import ShardError, find_shards, output_paths
    from curator_cli.loading.specs import StageSpecError, load_stages

    _setup_logging(log_file, quiet)
    if decode_size is not None and decode_size != "full" and not (decode_size.isdigit() and int(decode_size) > 0):
        raise UsageError(f"--decode-size must be a positive number or 'full', not {decode_size!r}")
    exts = tuple(e.strip().lower().lstrip(".") for e in image_ext.replace(",", ";").split(";") if e.strip())
    if not exts:
        raise UsageError("--image-ext names no extension")
    try:
        specs = list(stage_specs) or [DEFAULT_STAGE]
        stages = load_stages(specs, list(stage_args))
        chosen_device = resolve_device(device)
        if decode_mode == "gpu" and not chosen_device.startswith("cuda"):
            raise DeviceError("--decode gpu needs a CUDA device, and this run uses the CPU "
                              "(no CUDA here, or --device cpu); use --decode cpu")
        shards = find_shards(list(inputs), exclude=output)
        if not shards:
            raise UsageError(f"no shards found in {' '.join(inputs)} (looked for .tar, .parquet and image folders)")
        output_paths(shards, output)  # checks for collisions before any work
    except (StageSpecError, DeviceError, ShardError) as exc:
        raise UsageError(str(exc)) from None
    set_active_device(chosen_device)
    options = EmbedOptions(
        output_dir=output,
        batch_size=batch_size,
        device=chosen_device,
        read=ReadOptions(image_exts=exts, image_column=image_column, id_column=id_column,
                         caption_column=caption_column),
        max_pixels=max_pixels,
        decode_size=decode_size,
        decode=decode_mode,
        num_workers=(os.cpu_count() or 1) if num_workers is None else num_workers,
        decode_timeout=decode_timeout,
        precision=precision or default_precision(chosen_device),
        embedding_dtype=embedding_dtype,
        on_error=on_error,
        overwrite=overwrite,
        progress=not quiet and sys.stderr.isatty(),
    )
    if executor == "ray":
        from curator_cli.execution.ray import RayUnavailable, import_ray

        try:
            import_ray()
        except RayUnavailable as exc:
            raise UsageError(str(exc)) from None
    lock = OutputLock(output)
    try:
        with _signals_as_exit(), lock:
            if executor == "ray":
                from curator_cli.execution.ray import run_ray

                summary = run_ray(shards, specs, list(stage_args), stages, options, ray_address, num_actors)
            else:
                summary = run_local(shards, stages, options)
    except (LockedError, ConfigMismatchError) as exc:
        raise UsageError(str(exc)) from None
    except StageSetupError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("curator: interrupted; finished shards are kept, rerun the same command to resume", err=True)
        sys.exit(EXIT_SIGINT)
    except _Terminated:
        click.echo("curator: terminated; finished shards are kept, rerun the same command to resume", err=True)
        sys.exit(EXIT_SIGTERM)
    if summary_json:
        summary.write_json(summary_json)
    if not quiet:
        click.echo(summary.text(), err=True)
    if summary.shards_failed:
        sys.exit(EXIT_SHARDS_FAILED)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def _signals_as_exit():
    def on_term(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (e.g. embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--keys", default=3, show_default=True, type=click.IntRange(min=0), help="First keys to show per shard.")
@click.option("--image-ext", default="jpg;jpeg;png;webp", show_default=True)
@click.option("--caption-column", default=None,
              help="Parquet column with the caption (default: caption, else text).")
def inspect(inputs, keys, image_ext, caption_column) -> None:
    """List the shards INPUT... names: format, samples and first keys, without decoding images.

    Also says which img2dataset sidecars (NNNNN.parquet, NNNNN_stats.json) were skipped, how many
    samples have a status other than success, and when a parquet's image column holds file paths.

    Exit status: 0 every shard readable, 1 some shard could not be read (its line says ERROR),
    2 usage error.

    \b
    Example:
      curator inspect 'shards/{00000..00009}.tar'
    """
    from curator_cli.cli.inspection import inspect_inputs
    from curator_cli.io.readers import ReadOptions
    from curator_cli.io.shards import ShardError

    exts = tuple(e.strip().lower() for e in image_ext.split(";") if e.strip())
    try:
        report = inspect_inputs(list(inputs), keys, ReadOptions(image_exts=exts, caption_column=caption_column))
    except ShardError as exc:
        raise UsageError(str(exc)) from None
    for line in report.lines:
        click.echo(line)
    if report.errors:
        sys.exit(EXIT_SHARDS_FAILED)


@main.command()
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rows", default=5, show_default=True, type=click.IntRange(min=0), help="Rows to print.")
def show(output_dir, rows) -> None:
    """Summarise an embed output directory: rows, embedding dimension, errors by kind, a few rows.

    \b
    Example:
      curator show embeddings/
    """
    from curator_cli.cli.inspection import describe_output

    try:
        text = describe_output(output_dir, rows)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    click.echo(text)


@main.command()
@click.argument("name", required=False, metavar="[NAME]")
def stages(name) -> None:
    """List the stages --stage can name, with a one-line description and their arguments.

    NAME (a registered name, module:Class or path/to/file.py:Class) shows one stage in full.

    \b
    Examples:
      curator stages
      curator stages torchvision
    """
    from curator_cli.loading.catalog import find_stage, format_list, format_one, list_stages
    from curator_cli.loading.specs import StageSpecError

    if name is None:
        click.echo(format_list(list_stages()))
        return
    try:
        info = find_stage(name)
    except StageSpecError as exc:
        raise UsageError(str(exc)) from None
    click.echo(format_one(info))


if __name__ == "__main__":
    main()
