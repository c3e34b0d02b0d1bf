"""Readers turn a shard into a stream of :class:`Sample` records, one module per format."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from curator_cli.io.readers.base import ReadOptions, Sample, ShardReadError
from curator_cli.io.readers.files import read_files_shard
from curator_cli.io.readers.folder import read_folder
from curator_cli.io.readers.parquet import read_parquet
from curator_cli.io.readers.tar import read_tar
from curator_cli.io.shards import Shard

__all__ = ["ReadOptions", "Sample", "ShardReadError", "open_shard"]


class OpenShard:
    """An opened shard: its sample stream and the input columns that pass through to the output."""

    def __init__(self, samples: Iterable[Sample], passthrough_fields: list[pa.Field]) -> None:
        self.samples = samples
        self.passthrough_fields = passthrough_fields

    def __iter__(self):
        return iter(self.samples)


def open_shard(shard: Shard, options: ReadOptions) -> OpenShard:
    """Open ``shard`` with the reader for its format; raises :class:`ShardReadError` if it cannot."""
    if not shard.path.exists():
        raise ShardReadError("shard no longer exists")
    if shard.format == "tar":
        return OpenShard(read_tar(shard.path, options), [])
    if shard.format == "parquet":
        reader = read_parquet(shard.path, options)
        return OpenShard(reader, reader.passthrough_fields)
    if shard.format == "folder":
        return OpenShard(read_folder(shard.path, options), [])
    if shard.format == "files":
        return OpenShard(read_files_shard(shard.path, options), [])
    raise ShardReadError(f"unknown shard format {shard.format!r}")
