"""img2dataset's ``files`` output format: a folder per shard (``00000/KEY.jpg``, ``KEY.txt``, ``KEY.json``)
with the metadata sidecar ``00000.parquet`` beside it. Read as a tar shard would be: ids are the
keys, and the samples that failed to download come from the sidecar as error rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from curator_cli.io.readers.base import ByteRange, ReadOptions, Sample, ShardReadError
from curator_cli.io.readers.tar import samples_of_groups, split_member_name
from curator_cli.io.shards import is_image_file


def iter_files_groups(path: Path) -> Iterator[tuple[str, dict[str, ByteRange]]]:
    """(key, {extension: file}) per key (file name up to the first dot) in key order; keys with
    neither an image, a caption nor metadata (stray files) are left out. Nothing is read here."""
    groups: dict[str, dict[str, ByteRange]] = {}
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise ShardReadError(f"cannot list the folder: {exc.strerror or exc}") from exc
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        key, ext = split_member_name(entry.name)
        try:
            groups.setdefault(key, {})[ext] = ByteRange(str(entry), 0, entry.stat().st_size)
        except OSError:  # removed while listing: the sample reports what is left
            groups.setdefault(key, {})
    for key in sorted(groups):
        members = groups[key]
        if any(ext in ("txt", "json") or is_image_file(Path(f"{key}.{ext}")) for ext in members):
            yield key, members


def read_files_shard(path: Path, options: ReadOptions) -> Iterator[Sample]:
    """A sample per key, as a tar's members make them, then the sidecar's failures
    (:func:`~curator_cli.io.readers.tar.samples_of_groups`). The image is read by the decoders."""
    return samples_of_groups(iter_files_groups(path), path, options)
