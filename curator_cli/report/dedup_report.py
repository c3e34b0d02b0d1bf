"""``curator dedup ... --html FILE``: duplicate groups to look at before dropping anything.

Two galleries from ``duplicates.parquet``: the largest groups (where a wrong threshold does the
most harm: one bad link merges unrelated images into one big group), and the groups whose weakest
member is closest to the threshold (what the threshold just let in). In each group the kept image
is framed, and every image shows its cosine similarity to its nearest duplicate.

Thumbnails come from the source shards through the embedding files the dedup read: for each image
shown, its row there gives the ``shard``, ``image_path`` and source row (:func:`image_refs`), as
``curator show --html`` does. Cost is bounded by what is shown: the duplicates file, the id and
shard columns of the embedding files, and the shown images' sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curator_cli.report.page import Section, Tile, TileGroup, esc, gallery_html, render_page, stats_html
from curator_cli.report.sample import image_refs
from curator_cli.report.thumbnails import ImageRef, Thumbnail, load_thumbnails

SHARD_COLUMN = "shard"


@dataclass
class DedupReportOptions:
    """How much the page shows: ``largest`` biggest groups, ``near`` groups closest to the
    threshold, at most ``per_group`` images of each."""

    largest: int = 12
    near: int = 12
    per_group: int = 10


@dataclass
class DedupReport:
    page: str
    groups: int  # groups shown
    images: int  # thumbnails shown
    missing: int  # of those, sources not found or not readable


@dataclass
class _Group:
    group_id: int
    rows: np.ndarray  # positions in the duplicates table, kept image first
    weakest: float  # the lowest similarity of a member to its nearest duplicate


def build_dedup_report(duplicates: Path, embeddings: Sequence[Path], threshold: float, id_column: str = "image_id",
                       options: DedupReportOptions | None = None, summary: dict | None = None) -> DedupReport:
    """The page for ``duplicates`` (a ``duplicates.parquet``) over the ``embeddings`` files it was
    computed from; ``summary`` is the dedup's summary (its counts head the page)."""
    options = options or DedupReportOptions()
    table = pq.read_table(duplicates, columns=["group_id", "image_id", SHARD_COLUMN, "keep", "similarity"])
    group_ids = table.column("group_id").to_numpy()
    keep = table.column("keep").to_numpy(zero_copy_only=False)
    similarity = table.column("similarity").to_numpy(zero_copy_only=False).astype(np.float32)
    ids = [_text(v) for v in table.column("image_id").to_pylist()]
    shards = [_text(v) for v in table.column(SHARD_COLUMN).to_pylist()]
    groups = _groups(group_ids, keep, similarity)
    largest = sorted(groups, key=lambda g: (-len(g.rows), g.group_id))[:options.largest]
    chosen = {g.group_id for g in largest}
    near = [g for g in sorted(groups, key=lambda g: (g.weakest, g.group_id)) if g.group_id not in chosen][:options.near]

    shown_rows = sorted({int(r) for g in largest + near for r in _shown(g, similarity, options.per_group)})
    refs = _refs({(shards[r], ids[r]) for r in shown_rows}, embeddings, id_column)
    thumbnails = load_thumbnails(refs.values())
    missing_source = Thumbnail(missing="not found in the embedding files")

    def tiles(group: _Group) -> list[Tile]:
        out = []
        for r in _shown(group, similarity, options.per_group):
            ref = refs.get((shards[r], ids[r]))
            out.append(Tile(thumbnails[ref] if ref else missing_source, ids[r], Path(shards[r]).name,
                            similarity=float(similarity[r]), badge="keep" if keep[r] else "", marked=bool(keep[r])))
        return out

    def gallery(chosen_groups: list[_Group], empty: str) -> str:
        if not chosen_groups:
            return f'<p class="note">{esc(empty)}</p>'
        return gallery_html([TileGroup(f"group {g.group_id}: {len(g.rows)} images", tiles(g),
                                       f"weakest link {g.weakest:.3f}"
                                       + (f"; {options.per_group} shown" if len(g.rows) > options.per_group else ""))
                             for g in chosen_groups])

    intro = (f'<p class="note">Each image shows its cosine similarity to its most similar image; the kept '
             f"image of each group is framed. Threshold {threshold:g}.</p>")
    sections = [
        Section("Summary", _summary_html(summary, len(groups), len(ids), threshold), "summary"),
        Section("Largest groups", intro + gallery(largest, "No duplicate groups."), "largest"),
        Section("Groups nearest the threshold",
                '<p class="note">The groups whose weakest member is least similar to its nearest duplicate: '
                "what the threshold only just let in. If these are not copies of each other, raise it.</p>"
                + gallery(near, "No other groups."), "near"),
    ]
    page = render_page(f"curator dedup: {duplicates.parent}", sections,
                       f"{len(groups):,} groups of near-duplicates among {len(ids):,} images in groups, "
                       f"threshold {threshold:g}")
    missing = sum(1 for r in shown_rows if (ref := refs.get((shards[r], ids[r]))) is None or thumbnails[ref].missing)
    return DedupReport(page, len(largest) + len(near), len(shown_rows), missing)


def _groups(group_ids: np.ndarray, keep: np.ndarray, similarity: np.ndarray) -> list[_Group]:
    """The groups of the duplicates table (its rows are by group), each with its kept row first."""
    if len(group_ids) == 0:
        return []
    order = np.argsort(group_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(group_ids[order])) + 1
    groups = []
    for rows in np.split(order, bounds):
        rows = rows[np.argsort(~keep[rows], kind="stable")]  # the kept image first
        groups.append(_Group(int(group_ids[rows[0]]), rows, float(similarity[rows].min())))
    return groups


def _shown(group: _Group, similarity: np.ndarray, limit: int) -> list[int]:
    """The kept image, then the others from the least similar up: the ones worth a look."""
    kept, others = group.rows[:1], group.rows[1:]
    others = others[np.argsort(similarity[others], kind="stable")]
    return [int(r) for r in np.concatenate([kept, others])[:limit]]


def _refs(wanted: set[tuple[str, str]], embeddings: Sequence[Path], id_column: str) -> dict[tuple[str, str], ImageRef]:
    """(shard, image id) -> where the image is, from the rows of the embedding files that hold them.
    A file without a ``shard`` column stands for itself (as dedup names its rows' shard)."""
    found: dict[tuple[str, str], ImageRef] = {}
    for path in embeddings:
        if len(found) == len(wanted):
            break
        names = pq.ParquetFile(path).schema_arrow.names
        if id_column not in names:
            continue
        columns = [id_column] + ([SHARD_COLUMN] if SHARD_COLUMN in names else [])
        table = pq.read_table(path, columns=columns)
        file_ids = [_text(v) for v in table.column(id_column).to_pylist()]
        file_shards = ([_text(v) for v in table.column(SHARD_COLUMN).to_pylist()] if SHARD_COLUMN in names
                       else [str(path)] * len(file_ids))
        rows = [i for i, key in enumerate(zip(file_shards, file_ids)) if key in wanted and key not in found]
        if rows:
            for row, ref in zip(rows, image_refs(path, rows, id_column)):
                found.setdefault((file_shards[row], file_ids[row]), ref)
    return found


def _text(value: object) -> str:
    """An id or shard as text, made the same way from the duplicates file and the embedding files
    whatever the column's type (ints, floats, bytes that are not UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _summary_html(summary: dict | None, groups: int, in_groups: int, threshold: float) -> str:
    summary = summary or {}
    items = [("images compared", summary.get("vectors"), False), ("groups", groups, False),
             ("images in groups", in_groups, False), ("images to drop", summary.get("images_to_drop"), False),
             ("images kept", summary.get("images_kept"), False), ("threshold", threshold, False),
             ("failed rows skipped", summary.get("failed_rows"), bool(summary.get("failed_rows")))]
    return stats_html([item for item in items if item[1] is not None])
