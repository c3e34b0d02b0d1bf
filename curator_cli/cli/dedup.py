"""``curator dedup``: the options, parsed once into :class:`~curator_cli.dedup.settings.DedupSettings`;
the inputs checked; the output lock; the pipeline; the summary and the exit status."""

from __future__ import annotations

from pathlib import Path

import click

from curator_cli.cli.exits import UsageError, os_error_line, report_summary, stops_on_signals
from curator_cli.dedup.settings import (DEFAULT_NEIGHBOURS, KEEP_HELP, PERCEPTUAL_DEFAULT_THRESHOLD, DedupError,
                                        DedupSettings, KeepRule, parse_memory)


@click.command()
@click.argument("embeddings", nargs=-1, required=True, metavar="EMBEDDINGS...")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for duplicates.parquet, keep.parquet and the work a rerun reuses (_dedup/).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"Cosine similarity at or above which two images are duplicates (default: "
                   f"{PERCEPTUAL_DEFAULT_THRESHOLD} for the perceptual stage's embeddings; required for others).")
@click.option("--keep", "keep_rule", default="first", show_default=True, metavar="RULE",
              help=f"Which image of a group stays: {KEEP_HELP}.")
@click.option("--id-column", default="image_id", show_default=True, help="Column with the image id.")
@click.option("--embedding-column", default="embedding", show_default=True, help="Column with the embedding.")
@click.option("--max-memory", default="4G", show_default=True, metavar="SIZE",
              help="Memory the run may use (e.g. 4G, 512M; at least 1G): sizes batches, blocks and the k-means sample.")
@click.option("--neighbours", type=click.IntRange(0, 64), default=DEFAULT_NEIGHBOURS, show_default=True,
              help="Neighbouring cells a vector near a cell boundary is also compared with.")
@click.option("--cells", type=click.IntRange(min=1), default=None,
              help="k-means cells (default: from the number of vectors; one cell below 4,096 rows).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--pairs", "write_pairs", is_flag=True, help="Also write pairs.parquet: every pair at or above the threshold.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the k-means sample and initialisation.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the end-of-run summary as JSON here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a page of the largest duplicate groups and those nearest the threshold, with "
                   "thumbnails from the source shards (opens from the file).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def dedup(embeddings, output, threshold, keep_rule, id_column, embedding_column, max_memory, neighbours, cells,
          device, write_pairs, seed, summary_json, html_path, quiet) -> None:
    """Find near-duplicate images in embedding parquet files and choose one image to keep per group.

    EMBEDDINGS are `curator embed` output folders or files (any stage, any dimension), or other
    parquet files with an id and an embedding column. Rows whose `error` is set are skipped.

    Writes OUTPUT/duplicates.parquet (one row per image that has a duplicate: group_id, keep,
    nearest_id, similarity), OUTPUT/keep.parquet (image_id, shard of every image that stays) and
    _SUCCESS. Rerunning the same command reuses the partitions already done.

    With --html FILE, also a page to judge the threshold by eye: the largest groups and the groups
    nearest the threshold, each image with its similarity to its nearest duplicate, kept ones framed.

    Exit status: 0 done, 2 usage error (no inputs, a missing column, mixed dimensions, a bad
    option, the output in use), 130/143 interrupted (rerun to resume).

    \b
    Examples:
      curator embed photos/ -o embeddings/
      curator dedup embeddings/ -o dedup/
      curator dedup clip-embeddings/ -o dedup/ --threshold 0.95 --keep highest:aesthetic_score
      curator dedup embeddings/ -o dedup/ --html dedup.html
    """
    from curator_cli.dedup.inputs import find_inputs, open_inputs
    from curator_cli.dedup.pipeline import run_dedup
    from curator_cli.io.commit import clean_stale_temporaries
    from curator_cli.io.lock import LockedError, OutputLock
    from curator_cli.stages.runtime import DeviceError, resolve_device

    try:
        settings = DedupSettings(output=output, threshold=threshold, keep=KeepRule.parse(keep_rule),
                                 id_column=id_column, embedding_column=embedding_column,
                                 max_memory=parse_memory(max_memory), neighbours=neighbours, cells=cells,
                                 device=resolve_device(device), write_pairs=write_pairs, seed=seed)
        paths = find_inputs(list(embeddings), output)
        if summary_json is not None and summary_json.resolve() in {p.resolve() for p in paths}:
            raise DedupError(f"--summary-json {summary_json} would overwrite an input; name it FILE.json")
        if html_path is not None and (html_path.suffix.lower() == ".parquet"
                                      or html_path.resolve() in {p.resolve() for p in paths}
                                      or html_path.resolve().is_relative_to(output.resolve())):
            raise DedupError(f"--html {html_path} would be written among the inputs or outputs; name it FILE.html "
                             "outside them")
        inputs = open_inputs(paths, id_column, embedding_column, settings.keep)
    except (DedupError, DeviceError) as exc:
        raise UsageError(str(exc)) from None

    def progress(message: str) -> None:
        if not quiet:
            click.echo(f"curator dedup: {message}", err=True)

    started = False
    try:
        with stops_on_signals("curator dedup", "partitions"), OutputLock(output):
            started = True
            clean_stale_temporaries(output)
            summary = run_dedup(settings, inputs, progress)
    except (LockedError, DedupError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        if not started:
            raise UsageError(f"cannot write to the output directory {output}: {os_error_line(exc)}") from None
        raise UsageError(f"{os_error_line(exc)}; finished partitions are kept, rerun the same command to resume") from None
    report_summary(summary, summary_json, quiet)
    if html_path is not None:
        _write_report(output, paths, summary, settings, html_path, quiet)


def _write_report(output: Path, paths: list[Path], summary, settings: DedupSettings, html_path: Path,
                  quiet: bool) -> None:
    """``--html``: the page of duplicate groups (report/dedup_report.py)."""
    import dataclasses

    from curator_cli.dedup.write import DUPLICATES_FILE
    from curator_cli.report.dedup_report import build_dedup_report
    from curator_cli.report.page import write_page

    import pyarrow as pa

    try:
        report = build_dedup_report(output / DUPLICATES_FILE, paths, summary.threshold, settings.id_column,
                                    summary=dataclasses.asdict(summary))
        write_page(html_path, report.page)
    except OSError as exc:
        raise UsageError(f"cannot write --html {html_path}: {os_error_line(exc)} "
                         "(the dedup outputs are complete)") from None
    except (ValueError, pa.ArrowException) as exc:
        raise UsageError(f"cannot make --html {html_path}: {exc} (the dedup outputs are complete)") from None
    if not quiet:
        missing = f", {report.missing} without a readable source" if report.missing else ""
        groups = f"{report.groups} group{'' if report.groups == 1 else 's'}"
        click.echo(f"curator dedup: wrote {html_path} ({groups}, {report.images} images{missing})", err=True)
