"""``curator inspect``: what the inputs hold, without decoding."""

from __future__ import annotations

import sys

import click

from curator_cli.cli.exits import EXIT_SHARDS_FAILED, UsageError


@click.command()
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
    from curator_cli.io.shards import ShardError
    from curator_cli.options import OptionError, ReadOptions, parse_image_exts

    try:
        exts = parse_image_exts(image_ext)
        report = inspect_inputs(list(inputs), keys, ReadOptions(image_exts=exts, caption_column=caption_column))
    except (OptionError, ShardError) as exc:
        raise UsageError(str(exc)) from None
    for line in report.lines:
        click.echo(line)
    if report.errors:
        sys.exit(EXIT_SHARDS_FAILED)
