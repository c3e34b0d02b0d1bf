"""Step 6, write: ``duplicates.parquet``, ``keep.parquet`` (and with ``--pairs``, ``pairs.parquet``).

- ``duplicates.parquet``: one row per image that has at least one duplicate, by group then input
  order: ``group_id``, ``image_id``, ``shard``, ``keep``, ``nearest_id``, ``nearest_shard``,
  ``similarity`` (cosine to ``nearest_id``, its most similar image).
- ``keep.parquet``: ``image_id``, ``shard`` of every compared image that stays: the ones without a
  duplicate and each group's kept image, in input order. Failed rows (no embedding) are in neither
  file. Join on (``shard``, ``image_id``) to filter the embeddings or the dataset.
- ``pairs.parquet``: every pair at or above the threshold (``--pairs``).

``image_id`` has the id column's type where every input agrees (string otherwise); ``shard`` is the
input's ``shard`` column, or the input file's path for parquet without one. Each file is written
under a temporary name, with a manifest (JSON, footer key ``curator.dedup``) and committed whole by
``io.commit``; ``_SUCCESS`` follows once all are in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.dedup.components import Groups
from curator_cli.dedup.inputs import SHARD_COLUMN, InputSet, read_columns
from curator_cli.io.commit import commit, temp_path

DUPLICATES_FILE = "duplicates.parquet"
KEEP_FILE = "keep.parquet"
PAIRS_FILE = "pairs.parquet"
MANIFEST_KEY = "curator.dedup"
PAIR_RECORD = np.dtype([("a", "<i8"), ("b", "<i8"), ("sim", "<f4")])


@dataclass
class Members:
    """Ids and shards of the images in groups, aligned with :attr:`Groups.members`."""

    ids: pa.Array
    shards: pa.Array

    def lookup(self, members: np.ndarray, wanted: np.ndarray) -> tuple[pa.Array, pa.Array]:
        rows = pa.array(np.searchsorted(members, wanted))
        return self.ids.take(rows), self.shards.take(rows)


def _shard_of(file_path: Path, batch: pa.RecordBatch, names: list[str], rows: pa.Array | None) -> pa.Array:
    if SHARD_COLUMN in names:
        column = batch.column(names.index(SHARD_COLUMN))
        column = column if rows is None else column.take(rows)
        return column.cast(pa.string())
    count = batch.num_rows if rows is None else len(rows)
    return pa.array([str(file_path)] * count, pa.string())


def _id_shard_columns(inputs: InputSet, file) -> list[str]:
    return [inputs.id_column] + ([SHARD_COLUMN] if file.has(SHARD_COLUMN) and SHARD_COLUMN != inputs.id_column else [])


def read_members(inputs: InputSet, members: np.ndarray, batch_rows: int) -> Members:
    """Id and shard of each member (global indices, sorted), read from the inputs."""
    ids: list[pa.Array] = []
    shards: list[pa.Array] = []
    for file in inputs.files:
        lo, hi = np.searchsorted(members, [file.start, file.start + file.rows])
        if lo == hi:
            continue
        columns = _id_shard_columns(inputs, file)
        position = lo
        for start, batch in read_columns(inputs, file, columns, batch_rows):
            end = int(np.searchsorted(members, start + batch.num_rows))
            if end == position:
                continue
            rows = pa.array(members[position:end] - start)
            ids.append(batch.column(0).take(rows).cast(inputs.id_type))
            shards.append(_shard_of(file.path, batch, columns, rows))
            position = end
    if not ids:
        return Members(pa.array([], inputs.id_type), pa.array([], pa.string()))
    return Members(pa.concat_arrays(ids), pa.concat_arrays(shards))


def _metadata(manifest: dict[str, Any]) -> dict[str, str]:
    return {MANIFEST_KEY: json.dumps(manifest, sort_keys=True)}


def write_table(table: pa.Table, path: Path, manifest: dict[str, Any]) -> Path:
    """Write ``table`` under a temporary name beside ``path``; returns the temporary (commit it)."""
    temp = temp_path(path)
    table = table.replace_schema_metadata(_metadata(manifest))
    pq.write_table(table, temp, compression="zstd")
    return temp


def duplicates_table(groups: Groups, keep: np.ndarray, members: Members) -> pa.Table:
    """One row per member, by group then input order."""
    order = np.lexsort((groups.members, groups.group))
    nearest_ids, nearest_shards = members.lookup(groups.members, groups.nearest[order])
    rows = pa.array(order)
    return pa.table({
        "group_id": pa.array(groups.group[order], pa.int64()),
        "image_id": members.ids.take(rows),
        "shard": members.shards.take(rows),
        "keep": pa.array(keep[order], pa.bool_()),
        "nearest_id": nearest_ids,
        "nearest_shard": nearest_shards,
        "similarity": pa.array(groups.similarity[order], pa.float32()),
    })


def write_keep(inputs: InputSet, ok: np.ndarray, dropped: np.ndarray, path: Path, manifest: dict[str, Any],
               batch_rows: int) -> tuple[Path, int]:
    """Stream ``keep.parquet`` (rows that are compared and not dropped) to a temporary file; returns
    it and the number of rows."""
    stays = ok.copy()
    stays[dropped] = False
    schema = pa.schema([("image_id", inputs.id_type), ("shard", pa.string())], metadata=_metadata(manifest))
    temp = temp_path(path)
    written = 0
    with pq.ParquetWriter(temp, schema, compression="zstd") as writer:
        for file in inputs.files:
            if not stays[file.start:file.start + file.rows].any():
                continue
            columns = _id_shard_columns(inputs, file)
            for start, batch in read_columns(inputs, file, columns, batch_rows):
                mask = stays[start:start + batch.num_rows]
                if not mask.any():
                    continue
                rows = pa.array(np.flatnonzero(mask))
                table = pa.table({"image_id": batch.column(0).take(rows).cast(inputs.id_type),
                                  "shard": _shard_of(file.path, batch, columns, rows)}, schema=schema)
                writer.write_table(table)
                written += len(rows)
    return temp, written


def write_pairs(pair_files: list[Path], groups: Groups, members: Members, path: Path,
                manifest: dict[str, Any]) -> Path:
    """Stream ``pairs.parquet`` from the partitions' pair lists; returns the temporary file."""
    schema = pa.schema([("image_id_a", members.ids.type), ("shard_a", pa.string()),
                        ("image_id_b", members.ids.type), ("shard_b", pa.string()), ("similarity", pa.float32())],
                       metadata=_metadata(manifest))
    temp = temp_path(path)
    with pq.ParquetWriter(temp, schema, compression="zstd") as writer:
        for pair_file in pair_files:
            records = np.fromfile(pair_file, dtype=PAIR_RECORD)
            for s in range(0, len(records), 1 << 20):
                chunk = records[s:s + (1 << 20)]
                id_a, shard_a = members.lookup(groups.members, chunk["a"])
                id_b, shard_b = members.lookup(groups.members, chunk["b"])
                writer.write_table(pa.table([id_a, shard_a, id_b, shard_b, pa.array(chunk["sim"], pa.float32())],
                                            schema=schema))
    return temp


def commit_outputs(temporaries: list[tuple[Path, Path]]) -> None:
    """Move each finished temporary to its final name (fsynced, as ``io.commit`` does)."""
    for temp, final in temporaries:
        commit(temp, final, sync_dir=True)
