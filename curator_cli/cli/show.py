"""``curator show``: a summary of an output directory."""

from __future__ import annotations

from pathlib import Path

import click

from curator_cli.cli.exits import UsageError


@click.command()
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
