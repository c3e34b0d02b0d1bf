"""Writing one parquet file per shard: the output schema, embeddings as ``fixed_size_list<float>[D]``.

Each file is written under a hidden temporary name in the target directory and renamed into place
only when complete, so a file under its final name is always whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCORE_COLUMNS = ("aesthetic_score", "nsfw_score")
ROWS_PER_ROW_GROUP = 4096


@dataclass
class OutputRow:
    """One output row: every input sample becomes exactly one of these."""

    image_id: str
    shard: str
    image_path: str
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, Any] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    aesthetic_score: float | None = None
    nsfw_score: float | None = None
    error: str | None = None


@dataclass
class OutputLayout:
    """Run-wide choices every shard's file shares, fixed when the first embedding is seen."""

    embedding_dtype: str = "float32"  # or "float16"
    declared_scores: frozenset[str] = frozenset()  # score columns stages name in outputs()
    dim: int | None = None
    score_columns: tuple[str, ...] | None = None  # None until fixed

    def fix(self, rows: list[OutputRow]) -> None:
        """Fix the score columns: those a stage declared in ``outputs()`` or set on these rows."""
        if self.score_columns is None:
            seen = {c for c in SCORE_COLUMNS for r in rows if getattr(r, c) is not None}
            self.score_columns = tuple(c for c in SCORE_COLUMNS if c in seen | self.declared_scores)

    def embedding_type(self) -> pa.DataType:
        value = pa.float16() if self.embedding_dtype == "float16" else pa.float32()
        return pa.list_(value, self.dim) if self.dim else pa.list_(value)

    def schema(self, passthrough_fields: list[pa.Field]) -> pa.Schema:
        fields = [
            pa.field("image_id", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("image_path", pa.string()),
            pa.field("caption", pa.string()),
            pa.field("metadata", pa.string()),
            *passthrough_fields,
            pa.field("embedding", self.embedding_type()),
            *(pa.field(c, pa.float32()) for c in (self.score_columns or ())),
            pa.field("error", pa.string()),
        ]
        return pa.schema(fields)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, default=_json_default, sort_keys=False)


def _embedding_array(rows: list[OutputRow], layout: OutputLayout) -> pa.Array:
    value_type = np.float16 if layout.embedding_dtype == "float16" else np.float32
    mask = np.array([r.embedding is None for r in rows], dtype=bool)
    if layout.dim:
        values = np.zeros((len(rows), layout.dim), dtype=value_type)
        for i, r in enumerate(rows):
            if r.embedding is not None:
                values[i] = r.embedding
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, layout.dim, mask=pa.array(mask))
    return pa.array([None] * len(rows), type=layout.embedding_type())


class ShardWriter:
    """Writes one shard's rows incrementally to a temporary file, renamed into place by :meth:`commit`."""

    def __init__(self, final_path: Path, passthrough_fields: list[pa.Field], layout: OutputLayout) -> None:
        self.final_path = final_path
        self.temp_path = final_path.parent / f".{final_path.name}.tmp-{os.getpid()}"
        self.passthrough_fields = passthrough_fields
        self.layout = layout
        self.rows_written = 0
        self._pending: list[OutputRow] = []
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, rows: list[OutputRow]) -> None:
        """Queue rows; they reach the file in row groups once the embedding dimension is known."""
        self._pending.extend(rows)
        if self.layout.dim is not None and len(self._pending) >= ROWS_PER_ROW_GROUP:
            self._flush()

    @property
    def waiting_for_dimension(self) -> bool:
        return self.layout.dim is None

    def _flush(self) -> None:
        if not self._pending and self._writer is not None:
            return
        if self._writer is None:
            self.layout.fix(self._pending)
            self._schema = self.layout.schema(self.passthrough_fields)
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.temp_path, self._schema, compression="zstd")
        table = self._table(self._pending)
        if table.num_rows:
            self._writer.write_table(table, row_group_size=ROWS_PER_ROW_GROUP)
        self.rows_written += table.num_rows
        self._pending = []

    def _table(self, rows: list[OutputRow]) -> pa.Table:
        assert self._schema is not None
        columns: dict[str, pa.Array] = {
            "image_id": pa.array([r.image_id for r in rows], pa.string()),
            "shard": pa.array([r.shard for r in rows], pa.string()),
            "image_path": pa.array([r.image_path for r in rows], pa.string()),
            "caption": pa.array([r.caption for r in rows], pa.string()),
            "metadata": pa.array([metadata_json(r.metadata) for r in rows], pa.string()),
        }
        for f in self.passthrough_fields:
            columns[f.name] = pa.array([r.passthrough.get(f.name) for r in rows], f.type)
        columns["embedding"] = _embedding_array(rows, self.layout)
        for c in self.layout.score_columns or ():
            columns[c] = pa.array([getattr(r, c) for r in rows], pa.float32())
        columns["error"] = pa.array([r.error for r in rows], pa.string())
        return pa.Table.from_arrays([columns[name] for name in self._schema.names], schema=self._schema)

    def commit(self) -> int:
        """Write what is left, close, and rename into place. Returns the number of rows written."""
        self._flush()
        assert self._writer is not None
        self._writer.close()
        with open(self.temp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temp_path, self.final_path)
        return self.rows_written

    def abort(self) -> None:
        """Discard the partial file."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        self.temp_path.unlink(missing_ok=True)
