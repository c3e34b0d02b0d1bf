"""img2dataset's ``files`` output format: a folder per shard (``00000/KEY.jpg``, ``KEY.txt``, ``KEY.json``)
with the metadata sidecar ``00000.parquet`` beside it. Read as a tar shard would be: ids are the
keys, and the samples that failed to download come from the sidecar as error rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from curator_cli.io.readers.base import ByteRange, ReadOptions, Sample, ShardReadError, Unusable, valid_text
from curator_cli.io.readers.tar import samples_of_groups, split_member_name
from curator_cli.io.shards import is_image_file


def iter_files_groups(path: Path) -> Iterator[tuple[str, dict[str, ByteRange | Unusable]]]:
    """(key, {extension: file}) per key (file name up to the first dot) in key order; keys with
    neither an image, a caption nor metadata (stray files) are left out. Nothing is read here.

    Two files of the same key and extension (``k.jpg`` and ``k.JPG``) are two samples, the second a
    duplicate (:func:`~curator_cli.io.readers.tar.samples_of_groups`); an entry that is not a regular
    file (a broken symlink, a FIFO, a device) is :class:`Unusable`, so its sample is an error row."""
    groups: dict[str, list[dict[str, ByteRange | Unusable]]] = {}
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise ShardReadError(f"cannot list the folder: {exc.strerror or exc}") from exc
    for entry in entries:
        if entry.name.startswith(".") or entry.is_dir():
            continue
        key, ext = split_member_name(entry.name)
        runs = groups.setdefault(key, [{}])
        if ext in runs[-1]:
            runs.append({})
        try:
            if entry.is_file():
                runs[-1][ext] = ByteRange(str(entry), 0, entry.stat().st_size)
            else:
                runs[-1][ext] = Unusable(f"not a regular file: {valid_text(entry.name)}")
        except OSError:  # removed while listing: the sample reports what is left
            pass
    for key in sorted(groups):
        for members in groups[key]:
            if any(ext in ("txt", "json") or is_image_file(Path(f"{key}.{ext}")) for ext in members):
                yield key, members


def read_files_shard(path: Path, options: ReadOptions) -> Iterator[Sample]:
    """A sample per key, as a tar's members make them, then the sidecar's failures
    (:func:`~curator_cli.io.readers.tar.samples_of_groups`). The image is read by the decoders."""
    return samples_of_groups(iter_files_groups(path), path, options)
