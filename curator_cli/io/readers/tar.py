"""WebDataset / img2dataset tar shards: consecutive members sharing a key form one sample."""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path

from curator_cli.io.readers.base import ByteRange, ReadOptions, Sample, ShardReadError, payload_bytes
from curator_cli.io.readers.img2dataset import sidecar_failures
from curator_cli.io.shards import sidecar_parquet

INLINE_BYTES = 16 << 10  # members up to this size are read here; larger ones by the decoders


def split_member_name(name: str) -> tuple[str, str]:
    """``a/b.seg.JPG`` -> (``a/b``, ``seg.jpg``): key keeps the directory, extension is lower-case."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, ext.lower() if dot else ""


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
END_OF_ARCHIVE = 1024  # two zero blocks close every complete tar


def _check_end_marker(handle, offset: int) -> None:
    """An uncompressed tar cut at a member boundary reads as a shorter archive: its missing
    end-of-archive blocks are the only sign that members were lost."""
    handle.seek(offset)
    tail = handle.read(END_OF_ARCHIVE)
    if len(tail) < END_OF_ARCHIVE or tail.count(0) != len(tail):
        raise tarfile.ReadError("truncated: no end-of-archive marker after the last member")


def _headers(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members of a seekable archive, reading headers only; memory stays flat on large shards."""
    while True:
        info = archive.next()
        if info is None:
            return
        archive.members.clear()
        yield info


def iter_tar_groups(path: Path) -> Iterator[tuple[str, dict[str, bytes | ByteRange]]]:
    """(key, {extension: payload}) for each run of consecutive members with the same key, streaming.

    In an uncompressed tar, members larger than ``INLINE_BYTES`` are not read here: their payload is
    a :class:`ByteRange` the decoder reads. Compressed tars are read as a stream, bytes and all.
    """
    current_key: str | None = None
    members: dict[str, bytes | ByteRange] = {}
    compressed = _magic(path).startswith(COMPRESSED_MAGIC)
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*" if compressed else "r:") as archive:
            for info in archive if compressed else _headers(archive):
                if not info.isfile():
                    continue
                base = posixpath.basename(info.name)
                if base.startswith("__") or base.startswith("."):
                    continue
                key, ext = split_member_name(info.name)
                payload: bytes | ByteRange
                if not compressed and info.size > INLINE_BYTES:
                    payload = ByteRange(str(path), info.offset_data, info.size)
                else:
                    handle = archive.extractfile(info)
                    payload = handle.read() if handle is not None else b""
                if key != current_key:
                    if current_key is not None:
                        yield current_key, members
                    current_key, members = key, {}
                members[ext] = payload
            if not compressed:
                _check_end_marker(raw, archive.offset)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if current_key is not None:
            yield current_key, members
        raise ShardReadError(f"corrupt or truncated tar: {exc}") from exc
    if current_key is not None:
        yield current_key, members


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(6)


def _decode_text(payload: bytes | ByteRange) -> str:
    return payload_bytes(payload).decode("utf-8", errors="replace").strip()


def sample_from_members(key: str, members: dict[str, bytes | ByteRange], location: str,
                        options: ReadOptions) -> Sample:
    """One WebDataset-style sample: the image chosen by ``options.image_exts``, caption from .txt,
    metadata from .json. ``location`` is the tar or folder the members are in (for ``image_path``)."""
    image_ext = next((ext for ext in options.image_exts if ext in members), None)
    metadata: dict = {}
    error = None
    if "json" in members:
        try:
            parsed = json.loads(payload_bytes(members["json"]) or b"{}")
            metadata = parsed if isinstance(parsed, dict) else {"json": parsed}
        except (json.JSONDecodeError, UnicodeDecodeError):
            metadata = {"json_text": _decode_text(members["json"])}
        except OSError:
            metadata = {}
    caption = None
    if "txt" in members:
        try:
            caption = _decode_text(members["txt"])
        except OSError:
            caption = None
    if image_ext is None:
        found = ", ".join(sorted(members)) or "none"
        error = f"no image member (wanted {'/'.join(options.image_exts)}; found {found})"
    return Sample(
        image_id=key,
        image_path=f"{location}/{key}.{image_ext or options.image_exts[0]}",
        data=members.get(image_ext) if image_ext else None,
        caption=caption,
        metadata=metadata,
        error=error,
    )


def samples_of_groups(groups: Iterator[tuple[str, dict]], path: Path, options: ReadOptions) -> Iterator[Sample]:
    """A sample per key's members (:func:`sample_from_members`), then the samples img2dataset failed
    to fetch (listed only in the shard's sidecar ``NNNNN.parquet``, when there is one) as error rows."""
    seen: set[str] = set()
    for key, members in groups:
        seen.add(key)
        yield sample_from_members(key, members, str(path), options)
    yield from sidecar_failures(sidecar_parquet(path), seen, options, str(path))


def read_tar(path: Path, options: ReadOptions) -> Iterator[Sample]:
    """Samples of a tar shard, then its sidecar's failures (:func:`samples_of_groups`)."""
    return samples_of_groups(iter_tar_groups(path), path, options)
