"""img2dataset's metadata sidecar: the ``NNNNN.parquet`` written beside each tar or files-folder shard.

It has a row for every sample of the shard, including those that failed to download, which are in
the sidecar only. Both layouts that have one write those failures as error rows, with the status
(and ``error_message``) as the error, so that every input sample is in the output exactly once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.io.readers.base import ReadOptions, Sample, status_error
from curator_cli.io.readers.parquet import find_caption_column, is_binary_type

log = logging.getLogger("curator")


@dataclass
class SidecarRows:
    """A sidecar's samples whose status is not ``success``, and how many rows it has in all."""

    rows: int = 0
    failed: list[dict] = field(default_factory=list)
    caption_column: str | None = None

    def statuses(self) -> Counter[str]:
        return Counter(str(row["status"]) for row in self.failed)

    def unfetched(self, seen: set[str]) -> Iterator[tuple[str, dict]]:
        """(key, row) of each failed sample the shard itself does not hold (key not in ``seen``, which
        this adds to), each key once: the samples written as error rows."""
        for row in self.failed:
            key = str(row["key"])
            if key not in seen:
                seen.add(key)
                yield key, row


def failed_mask(statuses: list) -> list[bool]:
    """Which rows img2dataset did not fetch: a status other than ``success`` (a null one says nothing)."""
    return [status is not None and status != "success" for status in statuses]


def read_sidecar(sidecar: Path, options: ReadOptions) -> SidecarRows | None:
    """The failed rows of a sidecar (binary columns left out); None if it is unreadable or has no
    ``key`` and ``status`` columns, since a sidecar only adds to a shard, never breaks it."""
    try:
        parquet = pq.ParquetFile(sidecar)
        schema = parquet.schema_arrow
        if "key" not in schema.names or "status" not in schema.names:
            return None
        table = parquet.read(columns=[f.name for f in schema if not is_binary_type(f.type)])
    except (pa.ArrowException, OSError) as exc:
        log.warning("img2dataset sidecar %s not read: %s", sidecar, exc)
        return None
    failed = table.filter(pa.array(failed_mask(table.column("status").to_pylist())))
    caption_column = options.caption_column if options.caption_column in schema.names else None
    if caption_column is None and options.caption_column is None:
        caption_column = find_caption_column(schema, None)
    return SidecarRows(table.num_rows, failed.to_pylist(), caption_column)


def sidecar_failures(sidecar: Path | None, seen: set[str], options: ReadOptions, location: str) -> Iterator[Sample]:
    """Error rows for the sidecar's non-success samples whose key is not in ``seen`` (the shard's own)."""
    if sidecar is None:
        return
    found = read_sidecar(sidecar, options)
    if found is None:
        return
    for key, row in found.unfetched(seen):
        caption = row.get(found.caption_column) if found.caption_column else None
        yield Sample(
            image_id=key,
            image_path=f"{location}/{key}.{options.image_exts[0]}",
            caption=None if caption is None else str(caption),
            metadata=row,
            error=status_error(row["status"], row.get("error_message")),
        )
