"""``curator show OUT --html FILE``: one page telling whether a run's embeddings are any good.

Sections: the run's summary (rows, embedded, failed, dimension, stages, from the footers' manifests;
the time split and failed shards from the run's ``--summary-json`` when given), errors by kind with
examples, a 2-D PCA map of a sample of the embeddings, and a gallery of random images each beside
its nearest neighbours with their cosine similarities.

Cost is bounded by what is shown, not by the output's size: footers, the ``error`` column where the
statistics show errors, :data:`~curator_cli.report.sample.MAX_GROUPS` row groups for the sample, and
the source images of the gallery only (``report.thumbnails``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curator_cli.report.analysis import nearest, pca_2d
from curator_cli.report.page import (
    Raw,
    Section,
    Tile,
    TileGroup,
    esc,
    gallery_html,
    render_page,
    scatter_svg,
    stats_html,
    table_html,
    time_split_html,
)
from curator_cli.report.sample import (
    EmbeddingSample,
    ErrorKind,
    OutputOverview,
    read_errors,
    read_overview,
    sample_embeddings,
)
from curator_cli.report.thumbnails import load_thumbnails

TIME_PARTS = {  # --summary-json field -> what the summary calls it
    "seconds_setup": "setup", "seconds_read": "read", "seconds_decode": "decode",
    "seconds_wait_input": "wait for input", "seconds_stages": "stages", "seconds_write": "write",
}


@dataclass
class ReportOptions:
    """What the report shows: ``gallery`` random images with ``neighbours`` neighbours each, found
    among ``sample`` embedded rows drawn at random; ``map_points`` of those on the map."""

    gallery: int = 12
    neighbours: int = 5
    sample: int = 20000
    map_points: int = 2000
    seed: int = 0
    run_summary: dict | None = None  # what ``curator embed --summary-json`` wrote


@dataclass
class OutputReport:
    """The page, and what it holds (for the command's one line and for tests)."""

    page: str
    rows: int
    sampled: int
    images: int  # thumbnails shown
    missing: int  # of those, sources not found or not readable


def read_run_summary(path: Path) -> dict:
    """The JSON ``curator embed --summary-json`` wrote; ValueError (one line) if it is not that."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read --summary-json {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ValueError(f"--summary-json {path} is not JSON") from None
    if not isinstance(data, dict) or "images" not in data or "seconds" not in data:
        raise ValueError(f"--summary-json {path} is not a summary written by curator embed --summary-json")
    return data


def build_output_report(output_dir: Path, options: ReportOptions) -> OutputReport:
    """The report page of ``output_dir``; ValueError (one line) if it holds no readable output."""
    overview = read_overview(output_dir)
    kinds, failed = read_errors(overview)
    sample = sample_embeddings(overview, options.sample, options.seed)
    rng = np.random.default_rng(options.seed + 1)
    count = min(options.gallery, len(sample.refs))
    queries = sorted(rng.choice(len(sample.refs), size=count, replace=False).tolist()) if count else []
    found = nearest(sample.vectors, queries, options.neighbours) if queries else None
    shown = list(queries) + ([int(i) for i in found.indices.ravel()] if found is not None else [])
    thumbnails = load_thumbnails(sample.refs[i] for i in shown)
    missing = sum(1 for t in thumbnails.values() if t.missing)

    sections = [
        Section("Summary", _summary_html(overview, failed, options.run_summary), "summary"),
        Section("Errors by kind", _errors_html(kinds, failed, overview.rows), "errors"),
        Section("Map of the embeddings", _map_html(sample, queries, options, overview), "map"),
        Section("Nearest neighbours", _gallery_html(sample, queries, found, thumbnails, missing, options),
                "neighbours"),
    ]
    dims = ", ".join(map(str, overview.dims)) or "unknown"
    subtitle = (f"{overview.rows:,} rows in {len(overview.files)} file(s), {dims}-dimensional embeddings"
                + ("" if overview.complete else "; no _SUCCESS: the run has not finished every shard"))
    page = render_page(f"curator report: {output_dir}", sections, subtitle)
    return OutputReport(page, overview.rows, len(sample.refs), len(thumbnails), missing)


def _stage_names(overview: OutputOverview) -> list[list[object]]:
    """(stage, arguments) rows from the first manifest's config."""
    manifests = overview.manifests()
    if not manifests:
        return []
    rows = []
    for identity in manifests[0].config.get("stages") or []:
        if not isinstance(identity, dict):
            continue
        name = identity.get("builtin") or ".".join(p for p in (identity.get("module"), identity.get("class")) if p)
        args = identity.get("args") or {}
        rows.append([name or "?", Raw(f"<code>{esc(json.dumps(args, sort_keys=True))}</code>")])
    return rows


def _summary_html(overview: OutputOverview, failed: int, run: dict | None) -> str:
    rows = overview.rows
    dims = ", ".join(map(str, overview.dims)) or "unknown"
    parts = [stats_html([
        ("rows", rows, False),
        ("embedded", rows - failed, False),
        ("not embedded (error set)", failed, failed > 0),
        ("files", len(overview.files), False),
        ("dimension", dims, False),
        ("complete (_SUCCESS)", "yes" if overview.complete else "no", not overview.complete),
    ])]
    manifests = overview.manifests()
    if manifests:
        config = manifests[0].config
        versions = sorted({m.tool_version for m in manifests})
        value_types = sorted({f.value_type for f in overview.files})
        settings = [
            ["decode (shorter side)", config.get("decode_min_side") or "full size"],
            ["precision", config.get("precision")],
            ["embedding values", ", ".join(value_types)],
            ["curator version", ", ".join(versions)],
        ]
        parts.append(table_html(["stage", "arguments"], _stage_names(overview)))
        parts.append(table_html(["setting", "value"], settings))
    if run is None:
        parts.append('<p class="note">The time split comes from the run\'s summary: add '
                     "<code>--summary-json FILE</code> (the file <code>curator embed --summary-json</code> wrote).</p>")
        return "".join(parts)
    seconds = float(run.get("seconds") or 0.0)
    shard_failures = run.get("shards_failed") or []
    parts.append("<h3>The run</h3>")
    parts.append(stats_html([
        ("images this run", int(run.get("images") or 0), False),
        ("seconds", f"{seconds:.1f}", False),
        ("images/s", f"{float(run.get('images_per_second') or 0.0):.1f}", False),
        ("shards written", int(run.get("shards_written") or 0), False),
        ("shards already done", int(run.get("shards_skipped") or 0), False),
        ("shards failed", len(shard_failures), bool(shard_failures)),
    ]))
    parts.append(time_split_html({name: float(run.get(key) or 0.0) for key, name in TIME_PARTS.items()}))
    parts.append('<p class="note">Decode is summed over the decode workers, so the parts can add up to more '
                 'than the run. Mostly "wait for input": decoding bounds the run; mostly "stages": the model does.</p>')
    if shard_failures:
        parts.append(table_html(["failed shard", "reason"],
                                [[f.get("shard", "?"), f.get("reason", "")] for f in shard_failures[:20]]))
    return "".join(parts)


def _errors_html(kinds: list[ErrorKind], failed: int, rows: int) -> str:
    if not kinds:
        return '<p class="note" data-count="0">No row has an error: every sample was embedded.</p>'
    table_rows = []
    for kind in kinds:
        examples = "<br>".join(f"<code>{esc(e.image_id)}</code> in <code>{esc(e.shard)}</code>: {esc(_cut(e.error))}"
                               for e in kind.examples)
        table_rows.append([kind.kind, Raw(f'<span data-kind="{esc(kind.kind)}" data-count="{kind.count}">'
                                          f"{kind.count:,}</span>"),
                           f"{100 * kind.count / rows:.2f}%" if rows else "", Raw(examples)])
    return (f'<p class="note">{failed:,} of {rows:,} rows have an <code>error</code> (and a vector of zeros): '
            "leave them out wherever vectors are compared.</p>"
            + table_html(["kind", "rows", "share", "examples"], table_rows, numeric={1, 2}))


def _cut(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _map_html(sample: EmbeddingSample, queries: list[int], options: ReportOptions, overview: OutputOverview) -> str:
    n = len(sample.refs)
    if n < 2:
        return '<p class="note">Fewer than two embedded rows: nothing to map.</p>'
    rng = np.random.default_rng(options.seed + 2)
    in_gallery = set(queries)
    others = [i for i in range(n) if i not in in_gallery]
    extra = max(0, min(len(others), options.map_points - len(queries)))
    chosen = sorted(set(queries) | set(rng.choice(others, size=extra, replace=False).tolist() if extra else []))
    projection = pca_2d(sample.vectors[chosen])
    position = {row: k for k, row in enumerate(chosen)}
    highlights = {position[q]: str(number) for number, q in enumerate(queries, start=1)}
    titles = [sample.refs[i].image_id + (f" \u2014 {sample.captions[i]}" if sample.captions[i] else "") for i in chosen]
    first, second = projection.explained
    plot = scatter_svg(projection.coords, titles, highlights,
                       (f"PC1: {first:.1%} of the variance", f"PC2: {second:.1%} of the variance"))
    return (f'<p class="note">{len(chosen):,} embedded rows drawn at random from {overview.rows:,}, on their first '
            "two principal components. Numbered points are the gallery's images; clusters are images the model "
            "sees as alike. Hover a point for its id.</p>" + plot)


def _gallery_html(sample: EmbeddingSample, queries: list[int], found, thumbnails, missing: int,
                  options: ReportOptions) -> str:
    if not queries or found is None:
        return '<p class="note">No embedded rows: no neighbours to show.</p>'
    groups = []
    for number, (q, row_indices, similarities) in enumerate(zip(queries, found.indices, found.similarities), start=1):
        ref = sample.refs[q]
        tiles = [Tile(thumbnails[ref], ref.image_id, sample.captions[q] or "", badge=f"#{number}", query=True)]
        for i, similarity in zip(row_indices, similarities):
            neighbour = sample.refs[int(i)]
            tiles.append(Tile(thumbnails[neighbour], neighbour.image_id, sample.captions[int(i)] or "",
                              similarity=float(similarity)))
        groups.append(TileGroup(f"#{number} {ref.image_id}", tiles, f"from {ref.shard}"))
    note = (f'<p class="note">{len(queries)} images drawn at random (blue frame), each followed by its '
            f"{found.indices.shape[1]} nearest neighbours by cosine similarity among {len(sample.refs):,} embedded "
            "rows drawn at random (exact search over that sample, not the whole output).")
    if missing:
        note += f" {missing} of {len(thumbnails)} images could not be read from their source and are marked so."
    return note + "</p>" + gallery_html(groups)
