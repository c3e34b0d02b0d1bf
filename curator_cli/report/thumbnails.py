"""Thumbnails of output rows, read back from their source shards through the output's ``shard`` and
``image_path`` columns, as small JPEG ``data:`` URIs for a self-contained page.

Only the images asked for are read, and no shard is read whole where it can be helped:

- an ``image_path`` that is a file (a folder of images, img2dataset's ``files`` layout, a parquet
  ``Image`` column holding paths) is read directly;
- a tar is walked header by header (``io.readers.tar.iter_tar_groups``: large members are not read
  on the way) until every key wanted from it has been seen;
- a parquet shard is read at the row the output row came from (output rows are in input order, one
  per input row), in that row's row group only, page by page up to it; the id column, where there
  is one, must still hold the row's id.

A source that is gone, changed or undecodable gives a :class:`Thumbnail` saying so, never an error.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from curator_cli.io.names import valid_text
from curator_cli.io.readers.base import ShardReadError, Unusable, payload_bytes
from curator_cli.io.readers.parquet import READ_BUFFER, find_id_column, find_image_column
from curator_cli.io.readers.tar import iter_tar_groups
from curator_cli.io.shards import IMAGE_SUFFIXES, shard_format

THUMBNAIL_PX = 128  # the longer side of a thumbnail
JPEG_QUALITY = 72


@dataclass(frozen=True)
class ImageRef:
    """Where one output row's image is: its ``image_id``, ``shard`` and ``image_path`` columns, and
    its position in its output file (= its row in a parquet shard). ``image_column`` is the parquet
    image column the run was told (its manifest's ``image_column``; None: detected)."""

    image_id: str
    shard: str
    image_path: str
    row: int | None = None
    image_column: str | None = None
    id_column: str | None = None


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG ``data:`` URI and its size, or ``missing``: why there is no picture."""

    data_uri: str | None = None
    width: int = 0
    height: int = 0
    missing: str | None = None


def load_thumbnails(refs: Iterable[ImageRef], size: int = THUMBNAIL_PX) -> dict[ImageRef, Thumbnail]:
    """A thumbnail for each of ``refs``; each source shard is opened once for all the refs in it."""
    wanted = list(dict.fromkeys(refs))
    found: dict[ImageRef, bytes | str] = {}  # the image bytes, or why there are none
    by_shard: dict[str, list[ImageRef]] = {}
    for ref in wanted:
        if not ref.shard and not ref.image_path:
            found[ref] = "source unknown (no shard or image_path column)"
        elif _is_file(ref.image_path):
            found[ref] = _read_file(ref.image_path)
        else:
            by_shard.setdefault(ref.shard, []).append(ref)
    for shard, refs_in in by_shard.items():
        path = Path(shard)
        if not path.exists():
            found.update({ref: f"source missing: {shard}" for ref in refs_in})
        elif shard_format(path) == "tar":
            found.update(_from_tar(path, refs_in))
        elif shard_format(path) == "parquet":
            found.update(_from_parquet(path, refs_in))
        else:
            found.update({ref: f"source missing: {ref.image_path}" for ref in refs_in})
    return {ref: _thumbnail(found.get(ref, "source missing"), size) for ref in wanted}


def _is_file(path: str) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False


def _read_file(path: str) -> bytes | str:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _from_tar(path: Path, refs: list[ImageRef]) -> dict[ImageRef, bytes | str]:
    """The refs' image members, walking the tar's headers until all were seen."""
    pending: dict[str, list[ImageRef]] = {}
    for ref in refs:
        pending.setdefault(ref.image_id, []).append(ref)
    result: dict[ImageRef, bytes | str] = {}
    groups = iter_tar_groups(path)
    try:
        for key, members in groups:
            matches = pending.pop(valid_text(key), None)
            if not matches:
                continue
            for ref in matches:
                order = [_member_ext(ref)] + [s.lstrip(".") for s in IMAGE_SUFFIXES]
                payload = next((members[e] for e in order if e in members), None)
                if payload is None or isinstance(payload, Unusable):
                    result[ref] = f"no image member for {ref.image_id} in {path.name}"
                    continue
                try:
                    result[ref] = payload_bytes(payload) or b""
                except OSError as exc:
                    result[ref] = f"unreadable: {exc.strerror or exc}"
            if not pending:
                break
    except Exception as exc:  # ShardReadError and what a damaged tar raises: the rest are just missing
        reason = f"source unreadable: {exc}"
        result.update({ref: reason for refs_left in pending.values() for ref in refs_left})
        pending.clear()
    finally:
        groups.close()
    for refs_left in pending.values():
        result.update({ref: f"not in {path.name} any more" for ref in refs_left})
    return result


def _member_ext(ref: ImageRef) -> str:
    """The extension of the member a tar row's image came from: ``image_path`` is ``SHARD/KEY.EXT``."""
    prefix = f"{ref.shard}/{ref.image_id}."
    return ref.image_path[len(prefix):].lower() if ref.image_path.startswith(prefix) else ""


def _from_parquet(path: Path, refs: list[ImageRef]) -> dict[ImageRef, bytes | str]:
    """The refs' images from their rows, reading only the row groups that hold them."""
    result: dict[ImageRef, bytes | str] = {}
    try:
        parquet = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
        schema = parquet.schema_arrow
        starts = [0]
        for g in range(parquet.metadata.num_row_groups):
            starts.append(starts[-1] + parquet.metadata.row_group(g).num_rows)
        by_group: dict[int, list[ImageRef]] = {}
        for ref in refs:
            if ref.row is None or not 0 <= ref.row < starts[-1]:
                result[ref] = f"row {ref.row} not in {path.name} any more"
                continue
            group = next(g for g in range(len(starts) - 1) if starts[g] <= ref.row < starts[g + 1])
            by_group.setdefault(group, []).append(ref)
        for group, in_group in by_group.items():
            first = in_group[0]
            image_column = find_image_column(schema, first.image_column)
            id_column = find_id_column(schema, first.id_column)
            columns = [image_column] + ([id_column] if id_column and id_column != image_column else [])
            wanted = sorted(in_group, key=lambda r: r.row)
            row = starts[group]
            last = wanted[-1].row
            for batch in parquet.iter_batches(batch_size=256, row_groups=[group], columns=columns):
                end = row + batch.num_rows
                for ref in (r for r in wanted if row <= r.row < end):
                    result[ref] = _parquet_value(batch, ref, ref.row - row, id_column)
                row = end
                if row > last:
                    break
    except (pa.ArrowException, OSError, ValueError, ShardReadError) as exc:  # not parquet any more, no image column
        reason = f"source unreadable: {exc}"
        result.update({ref: reason for ref in refs if ref not in result})
    return result


def _parquet_value(batch, ref: ImageRef, index: int, id_column: str | None) -> bytes | str:
    """Row ``index`` of ``batch``'s image column, if the row still has the ref's id."""
    if id_column:
        held = batch.column(1).slice(index, 1).to_pylist()[0] if batch.num_columns > 1 else None
        if held is not None and str(held) != ref.image_id:
            return f"source changed: row {ref.row} holds {held}, not {ref.image_id}"
    value = batch.column(0).slice(index, 1).to_pylist()[0]
    if isinstance(value, dict):  # a Hugging Face Image struct
        value = value.get("bytes")
    return value if isinstance(value, bytes) and value else "no image bytes in the source row"


def _thumbnail(source: bytes | str, size: int) -> Thumbnail:
    """A small JPEG of the image bytes (or the reason there are none)."""
    if isinstance(source, str):
        return Thumbnail(missing=source)
    try:
        with Image.open(io.BytesIO(source)) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at 1/2 to 1/8 scale
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
                backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(backdrop, image)
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except Exception as exc:  # a report shows what it cannot decode, never fails on it
        return Thumbnail(missing=f"cannot decode: {type(exc).__name__}")
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(uri, image.width, image.height)
