"""``curator show``: a summary of an output directory, and with ``--html`` a report page to look at."""

from __future__ import annotations

from pathlib import Path

import click

from curator_cli.cli.exits import UsageError


@click.command()
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rows", default=5, show_default=True, type=click.IntRange(min=0), help="Rows to print.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a self-contained HTML report here: summary, errors, a map of the embeddings, "
                   "random images beside their nearest neighbours.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --html: the run's summary (curator embed --summary-json), for its time split.")
@click.option("--gallery", default=12, show_default=True, type=click.IntRange(min=0),
              help="With --html: random images shown with their neighbours.")
@click.option("--neighbours", default=5, show_default=True, type=click.IntRange(min=1),
              help="With --html: nearest neighbours per image.")
@click.option("--sample", default=20000, show_default=True, type=click.IntRange(min=2),
              help="With --html: embedded rows drawn at random to search the neighbours in and map.")
@click.option("--seed", default=0, show_default=True, type=int, help="With --html: which random draw.")
def show(output_dir, rows, html_path, summary_json, gallery, neighbours, sample, seed) -> None:
    """Summarise an embed output directory: rows, embedding dimension, errors by kind, a few rows.

    With --html FILE, also write a report page that opens from the file (no server, no network):
    the summary and time split, errors by kind with examples, a 2-D PCA map of a sample of the
    embeddings, and random images each beside its nearest neighbours with their similarities,
    thumbnails read from the source shards. It reads only what it shows.

    \b
    Examples:
      curator show embeddings/
      curator show embeddings/ --html report.html --summary-json embed-summary.json
    """
    from curator_cli.cli.inspection import describe_output
    from curator_cli.io.shards import shard_format
    from curator_cli.report.output_report import read_run_summary

    if summary_json is not None and html_path is None:
        raise UsageError("--summary-json is read for the HTML report: add --html FILE")
    if html_path is not None and (shard_format(html_path)
                                  or html_path.resolve().is_relative_to(output_dir.resolve())):
        raise UsageError(f"--html {html_path} would be written among the shards or outputs; name it FILE.html "
                         "outside the output directory")
    try:
        run = read_run_summary(summary_json) if summary_json is not None else None
        text = describe_output(output_dir, rows)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    click.echo(text)
    if html_path is not None:
        _write_report(output_dir, html_path, run, gallery, neighbours, sample, seed)


def _write_report(output_dir: Path, html_path: Path, run: dict | None, gallery: int, neighbours: int,
                  sample: int, seed: int) -> None:
    """Build the page and write it; an output it cannot read or an unwritable path is one line, exit 2."""
    from curator_cli.report.output_report import ReportOptions, build_output_report
    from curator_cli.report.page import write_page

    try:
        report = build_output_report(output_dir, ReportOptions(gallery=gallery, neighbours=neighbours, sample=sample,
                                                               seed=seed, run_summary=run))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        write_page(html_path, report.page)
    except OSError as exc:
        raise UsageError(f"cannot write --html {html_path}: {exc.strerror or exc}") from None
    missing = f", {report.missing} of them with no readable source" if report.missing else ""
    click.echo(f"wrote {html_path}: {report.images} images{missing}; neighbours among {report.sampled} "
               f"sampled rows of {report.rows}")
