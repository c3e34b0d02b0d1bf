"""Parquet shards: img2dataset's parquet output mode and Hugging Face ``datasets`` Image columns.

Rows are read a few at a time (no more than ``ReadOptions.rows_per_read``, which ``embed`` sets to
``--batch-size``, nor than about ``BYTES_PER_READ`` of data), page by page within a row group, so
memory follows the batch, not the file. What pyarrow cannot split is a page: it reads one whole, and
holds it about twice while decompressing it. Page sizes are the writer's choice: pyarrow's writer, by
default, puts up to 1024 values of a column in one data page (or, dictionary-encoded, in one
dictionary page), so there a row group of up to 1024 large images is one page, held whole; written
with smaller pages (pyarrow: ``write_batch_size``), it streams.

Each row is its own record: an id that repeats in the id column gives as many rows, all embedded.

Each row is its own record: an id that repeats in the id column gives as many rows, all embedded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.io.readers.base import ByteRange, ReadOptions, Sample, ShardReadError, status_error, valid_text
from curator_cli.io.writer import passthrough_names

ID_COLUMNS = ("key", "image_id", "id", "uid")
CAPTION_COLUMNS = ("caption", "text")  # img2dataset's name, then Hugging Face's usual one
PREFERRED_IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes")
ROWS_PER_READ = 1024  # at most, when no batch size is given
BYTES_PER_READ = 32 << 20  # rows per read are cut to about this much (uncompressed) data
READ_BUFFER = 1 << 20  # read column chunks through a buffer of this size, not whole into memory


def is_binary_type(tp: pa.DataType) -> bool:
    return pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or pa.types.is_fixed_size_binary(tp)


def _is_hf_image(tp: pa.DataType) -> bool:
    return pa.types.is_struct(tp) and any(
        tp.field(i).name == "bytes" and is_binary_type(tp.field(i).type) for i in range(tp.num_fields)
    )


def _holds_images(tp: pa.DataType) -> bool:
    """Image bytes, or a Hugging Face Image struct: a column type images can be read from."""
    return is_binary_type(tp) or _is_hf_image(tp)


def _named(schema: pa.Schema, requested: str, what: str) -> str:
    """``requested``, the column the command line named, if the file has it."""
    if requested not in schema.names:
        raise ShardReadError(f"no {what} {requested!r} (columns: {', '.join(schema.names)})")
    return requested


def find_image_column(schema: pa.Schema, requested: str | None) -> str:
    """The column holding image bytes: ``requested``, else a binary or HF Image column by name preference."""
    if requested:
        tp = schema.field(_named(schema, requested, "column")).type
        if not _holds_images(tp):
            raise ShardReadError(f"column {requested!r} is {tp}, not binary image bytes")
        return requested
    candidates = [f.name for f in schema if _holds_images(f.type)]
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
        return _named(schema, requested, "id column")
    return next((name for name in ID_COLUMNS if name in schema.names), None)


def find_caption_column(schema: pa.Schema, requested: str | None) -> str | None:
    """The caption column: ``requested``, else ``caption`` (whatever its type: an all-null one is
    still img2dataset's), else a ``text`` column of strings."""
    if requested:
        return _named(schema, requested, "caption column")
    if "caption" in schema.names:
        return "caption"
    strings = {f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)}
    return next((name for name in CAPTION_COLUMNS if name in strings), None)


def has_image_column(path: Path) -> bool | None:
    """Whether a parquet file has a column curator can read images from; None if it is not readable.
    img2dataset's metadata sidecars have none."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError):
        return None
    return any(_holds_images(f.type) for f in schema)


def resolve_image_file(stored: str, parquet_dir: Path) -> tuple[str, bool]:
    """Where a path-only Hugging Face Image value points, and whether that file exists.

    A relative path is tried against the parquet file's folder, then the working directory
    (``datasets`` itself uses the working directory); the first that exists wins, else the first.
    """
    if os.path.isabs(stored):
        return stored, os.path.isfile(stored)
    candidates = [os.path.abspath(parquet_dir / stored), os.path.abspath(stored)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate, True
    return candidates[0], False


def _values(array: pa.Array, name: str, is_id: bool = False) -> list:
    """The column's values as Python objects. A string column holding bytes that are not UTF-8 (pyarrow
    does not check them when reading) is decoded as tar member names are: ids with each undecodable
    byte as ``%XX`` (:func:`~curator_cli.io.readers.base.valid_text`), other text with U+FFFD."""
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            raise ShardReadError(f"column {name!r} holds text that is not UTF-8") from None
    raw = array.cast(pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary()).to_pylist()
    if is_id:
        return [None if v is None else valid_text(v.decode("utf-8", "surrogateescape")) for v in raw]
    return [None if v is None else v.decode("utf-8", "replace") for v in raw]


class ParquetShardReader:
    """Streams a parquet shard a few rows at a time; knows which input columns pass through to the output."""

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.path = path
        try:
            # buffer_size: page by page; without it pyarrow reads a whole column chunk (a row group's
            # images) into memory before decoding any of it
            self._file = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardReadError(f"not a readable parquet file: {exc}") from exc
        schema = self._file.schema_arrow
        self.image_column = find_image_column(schema, options.image_column)
        self.id_column = find_id_column(schema, options.id_column)
        self.caption_column = find_caption_column(schema, options.caption_column)
        self.hf_image = _is_hf_image(schema.field(self.image_column).type)
        own = {c for c in (self.image_column, self.id_column, self.caption_column) if c}
        # by position, so that columns of the same name (parquet allows it) are all kept
        self._index = {name: schema.names.index(name) for name in own}
        kept = [i for i, name in enumerate(schema.names) if name not in own]
        names = passthrough_names([schema.names[i] for i in kept])
        self._passthrough = list(zip(kept, names))
        self.passthrough_fields = [pa.field(name, schema.field(i).type) for i, name in self._passthrough]
        self._status = next((name for i, name in self._passthrough if schema.names[i] == "status"), None)
        self._message = next((name for i, name in self._passthrough if schema.names[i] == "error_message"), None)
        self.rows_per_read = self._rows_per_read(options.rows_per_read)

    def _rows_per_read(self, batch_size: int | None) -> int:
        """``batch_size`` rows (else ``ROWS_PER_READ``), fewer if the row groups' rows are large."""
        rows = max(1, min(batch_size or ROWS_PER_READ, ROWS_PER_READ))
        metadata = self._file.metadata
        for i in range(metadata.num_row_groups):
            group = metadata.row_group(i)
            if group.num_rows:
                rows = min(rows, max(1, BYTES_PER_READ * group.num_rows // max(1, group.total_byte_size)))
        return rows

    def __iter__(self) -> Iterator[Sample]:
        row = 0
        try:
            for batch in self._file.iter_batches(batch_size=self.rows_per_read):
                yield from self._samples(batch, row)
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"parquet read failed after {row} rows: {exc}") from exc

    def _samples(self, batch: pa.RecordBatch, first_row: int) -> Iterator[Sample]:
        id_index = self._index[self.id_column] if self.id_column else None

        def values(index: int) -> list:
            return _values(batch.column(index), batch.schema.field(index).name, index == id_index)

        count = batch.num_rows
        images = values(self._index[self.image_column])
        ids = values(self._index[self.id_column]) if self.id_column else None
        captions = values(self._index[self.caption_column]) if self.caption_column else None
        # The passthrough columns are written as columns of their own: not again in metadata.
        passthrough_values = [(name, values(i)) for i, name in self._passthrough]
        for i in range(count):
            value = images[i]
            row_id = ids[i] if ids is not None else None
            image_id = str(first_row + i) if row_id is None else str(row_id)
            image_path = f"{self.path}/{image_id}"
            error = None
            if self.hf_image and value is not None:
                stored, value = value.get("path"), value.get("bytes")
                if value is None and stored:
                    image_path, value, error = self._image_file(stored)
                elif stored:
                    image_path = f"{self.path}/{stored}"
            passthrough = {name: column[i] for name, column in passthrough_values}
            caption = captions[i] if captions is not None else None
            status = passthrough.get(self._status) if self._status else None
            if status is not None and status != "success":
                error = status_error(status, passthrough.get(self._message) if self._message else None)
                value = None
            elif value is None and error is None:
                error = f"no image in column {self.image_column!r}"
            yield Sample(
                image_id=image_id,
                image_path=valid_text(image_path),
                data=value,
                caption=None if caption is None else str(caption),
                passthrough=passthrough,
                error=error,
            )

    def _image_file(self, stored: str) -> tuple[str, ByteRange | None, str | None]:
        """(image_path, deferred read, error) for a path-only Image value; the decoder reads the file."""
        if "://" in stored:
            return stored, None, f"image path is a URL, not a local file: {stored}"
        resolved, exists = resolve_image_file(stored, self.path.parent)
        if not exists:
            return resolved, None, f"image file not found: {resolved}"
        try:
            return resolved, ByteRange(resolved, 0, os.path.getsize(resolved)), None
        except OSError as exc:
            return resolved, None, f"unreadable file: {exc.strerror or exc}"


def read_parquet(path: Path, options: ReadOptions) -> ParquetShardReader:
    """Open a parquet shard (its footer only); rows are read as the result is iterated."""
    return ParquetShardReader(path, options)
