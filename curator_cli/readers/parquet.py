"""Parquet shards: img2dataset's parquet output mode and Hugging Face ``datasets`` Image columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.readers.base import ReadOptions, Sample, ShardReadError

ID_COLUMNS = ("key", "image_id", "id", "uid")
PREFERRED_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
# Columns curator writes itself; an input column of the same name passes through as input_<name>.
RESERVED_COLUMNS = ("image_id", "shard", "image_path", "caption", "metadata", "embedding",
                    "aesthetic_score", "nsfw_score", "error")
ROWS_PER_READ = 1024


def _is_binary(tp: pa.DataType) -> bool:
    return pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_fixed_size_binary(tp)


def _is_hf_image(tp: pa.DataType) -> bool:
    return pa.types.is_struct(tp) and any(
        tp.field(i).name == "bytes" and _is_binary(tp.field(i).type) for i in range(tp.num_fields)
    )


def find_image_column(schema: pa.Schema, requested: str | None) -> str:
    """The column holding image bytes: ``requested``, else a binary or HF Image column by name preference."""
    if requested:
        if requested not in schema.names:
            raise ShardReadError(f"no column {requested!r} (columns: {', '.join(schema.names)})")
        tp = schema.field(requested).type
        if not (_is_binary(tp) or _is_hf_image(tp)):
            raise ShardReadError(f"column {requested!r} is {tp}, not binary image bytes")
        return requested
    candidates = [f.name for f in schema if _is_binary(f.type) or _is_hf_image(f.type)]
    if not candidates:
        raise ShardReadError(
            f"no image column (binary or struct<bytes, path>) among: {', '.join(schema.names)}; "
            "use --image-column"
        )
    for name in PREFERRED_IMAGE_COLUMNS:
        if name in candidates:
            return name
    return candidates[0]


def find_id_column(schema: pa.Schema, requested: str | None) -> str | None:
    if requested:
        if requested not in schema.names:
            raise ShardReadError(f"no id column {requested!r} (columns: {', '.join(schema.names)})")
        return requested
    return next((name for name in ID_COLUMNS if name in schema.names), None)


def passthrough_name(column: str) -> str:
    return f"input_{column}" if column in RESERVED_COLUMNS else column


class ParquetShardReader:
    """Streams a parquet shard in row groups; knows which input columns pass through to the output."""

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.path = path
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardReadError(f"not a readable parquet file: {exc}") from exc
        schema = self._file.schema_arrow
        self.image_column = find_image_column(schema, options.image_column)
        self.id_column = find_id_column(schema, options.id_column)
        self.hf_image = _is_hf_image(schema.field(self.image_column).type)
        self.passthrough_fields = [
            pa.field(passthrough_name(f.name), f.type) for f in schema
            if f.name not in (self.image_column, self.id_column, "caption")
        ]
        self._has_caption = "caption" in schema.names

    def __iter__(self) -> Iterator[Sample]:
        row = 0
        try:
            for batch in self._file.iter_batches(batch_size=ROWS_PER_READ):
                yield from self._samples(batch.to_pydict(), batch.num_rows, row)
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"parquet read failed after {row} rows: {exc}") from exc

    def _samples(self, columns: dict, count: int, first_row: int) -> Iterator[Sample]:
        images = columns[self.image_column]
        for i in range(count):
            value = images[i]
            name = None
            if self.hf_image and value is not None:
                name = value.get("path")
                value = value.get("bytes")
            row_id = columns[self.id_column][i] if self.id_column else None
            image_id = str(first_row + i) if row_id is None else str(row_id)
            passthrough = {
                passthrough_name(c): columns[c][i]
                for c in columns if c not in (self.image_column, self.id_column, "caption")
            }
            caption = columns["caption"][i] if self._has_caption else None
            error = None
            status = passthrough.get("status")
            if status is not None and status != "success":
                detail = passthrough.get("error_message")
                error = f"input status {status}" + (f": {detail}" if detail else "")
            elif value is None:
                error = f"no image in column {self.image_column!r}"
            yield Sample(
                image_id=image_id,
                image_path=f"{self.path}/{name or image_id}",
                data=value,
                caption=None if caption is None else str(caption),
                metadata={k: v for k, v in passthrough.items()},
                passthrough=passthrough,
                error=error,
            )


def read_parquet(path: Path, options: ReadOptions) -> ParquetShardReader:
    return ParquetShardReader(path, options)
