"""The ``curator`` command line: ``embed``, ``inspect``, ``show``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from curator_cli import __version__

DEFAULT_STAGE = "perceptual"
EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE = 0, 1, 2


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
@click.option("--embedding-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Images with more pixels are not decoded (default: Pillow's limit, about 89 million).")
@click.option("--on-error", type=click.Choice(["continue", "fail"]), default="continue", show_default=True,
              help="On a failing shard: go on with the others, or stop.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON here.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write details (stage tracebacks) to this file.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def embed(inputs, output, stage_specs, stage_args, batch_size, device, image_ext, image_column, id_column,
          embedding_dtype, max_pixels, on_error, summary_json, log_file, quiet) -> None:
    """Compute embeddings for every image in INPUT... and write one parquet file per shard.

    INPUT is any mix of .tar shards, .parquet files, directories (searched recursively; a
    directory of loose images is one shard), globs and brace ranges like
    'shards/{00000..00099}.tar'. Output files mirror the inputs' layout under --output.

    Exit status: 0 all shards written, 1 some shards failed, 2 usage error.

    \b
    Examples:
      curator embed sample_data/ -o out/
      curator embed shards/ -o out/ --stage plugins/custom_embedding.py:MyCustomEmbeddingStage \\
          --stage-arg model_path=model.pt --batch-size 128 --device cuda
      curator embed a.tar -o out/ --stage perceptual --stage torchvision \\
          --stage-arg 1.model=resnet50 --summary-json out/summary.json
    """
    from curator_cli.batching import DecodeOptions
    from curator_cli.decode import DEFAULT_MAX_PIXELS
    from curator_cli.devices import DeviceError, resolve_device, set_active_device
    from curator_cli.readers import ReadOptions
    from curator_cli.runner import EmbedOptions, StageSetupError, run_local
    from curator_cli.shards import ShardError, find_shards, output_paths
    from curator_cli.stage_loader import StageSpecError, load_stages

    _setup_logging(log_file, quiet)
    try:
        stages = load_stages(list(stage_specs) or [DEFAULT_STAGE], list(stage_args))
        chosen_device = resolve_device(device)
        shards = find_shards(list(inputs), exclude=output)
        if not shards:
            raise UsageError(f"no shards found in {' '.join(inputs)} (looked for .tar, .parquet and image folders)")
        output_paths(shards, output)  # checks for collisions before any work
    except (StageSpecError, DeviceError, ShardError) as exc:
        raise UsageError(str(exc)) from None
    exts = tuple(e.strip().lower().lstrip(".") for e in image_ext.replace(",", ";").split(";") if e.strip())
    if not exts:
        raise UsageError("--image-ext names no extension")
    set_active_device(chosen_device)
    options = EmbedOptions(
        output_dir=output,
        batch_size=batch_size,
        device=chosen_device,
        read=ReadOptions(image_exts=exts, image_column=image_column, id_column=id_column),
        decode=DecodeOptions(max_pixels=max_pixels or DEFAULT_MAX_PIXELS, min_side=None),
        embedding_dtype=embedding_dtype,
        on_error=on_error,
        progress=not quiet and sys.stderr.isatty(),
    )
    try:
        summary = run_local(shards, stages, options)
    except StageSetupError as exc:
        raise click.ClickException(str(exc)) from None
    if summary_json:
        summary.write_json(summary_json)
    if not quiet:
        click.echo(summary.text(), err=True)
    if summary.shards_failed:
        sys.exit(EXIT_SHARDS_FAILED)


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--keys", default=3, show_default=True, type=click.IntRange(min=0), help="First keys to show per shard.")
@click.option("--image-ext", default="jpg;jpeg;png;webp", show_default=True)
def inspect(inputs, keys, image_ext) -> None:
    """List the shards INPUT... names: format, samples and first keys, without decoding images.

    \b
    Example:
      curator inspect 'shards/{00000..00009}.tar'
    """
    from curator_cli.inspection import describe_shard
    from curator_cli.shards import ShardError, find_shards

    try:
        shards = find_shards(list(inputs))
    except ShardError as exc:
        raise UsageError(str(exc)) from None
    if not shards:
        raise UsageError(f"no shards found in {' '.join(inputs)}")
    exts = tuple(e.strip().lower() for e in image_ext.split(";") if e.strip())
    total = 0
    for shard in shards:
        info = describe_shard(shard, keys, exts)
        total += info.samples or 0
        click.echo(info.line())
    click.echo(f"{len(shards)} shard(s), {total} sample(s)")


@main.command()
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rows", default=5, show_default=True, type=click.IntRange(min=0), help="Rows to print.")
def show(output_dir, rows) -> None:
    """Summarise an embed output directory: rows, embedding dimension, errors by kind, a few rows.

    \b
    Example:
      curator show embeddings/
    """
    from curator_cli.inspection import describe_output

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
    from curator_cli.discovery import find_stage, format_list, format_one, list_stages
    from curator_cli.stage_loader import StageSpecError

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
