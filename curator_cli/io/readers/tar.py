"""WebDataset / img2dataset tar shards: consecutive members sharing a key form one sample.

Every member that could be part of a sample is accounted for:

- a hard link (and a symlink whose target is an earlier member of the same tar) is read as the
  member it points to;
- a member that cannot hold data (a symlink out of the tar or to a later member, a device, a FIFO,
  a directory named like a sample member) stays in its sample as :class:`Unusable`, so a sample with
  no usable image is an error row (``tar member is a symlink, not a file: KEY.jpg -> TARGET``) rather
  than gone. Plain directory entries (no extension, as ``tar -c folder/`` writes them) are not samples;
- a key seen before in the shard (the same key and extension again in a run of members, or the key
  again after another key) starts a new sample, which :func:`samples_of_groups` writes as an error
  row ``duplicate key in shard: KEY``, with that same ``image_id``: the first occurrence is embedded,
  every later one is accounted for but not embedded, so ids are unique among the rows whose
  ``error`` is null. WebDataset itself raises on the first case and silently repeats the key on the
  second;
- member names that are not valid UTF-8 are read with ``surrogateescape`` and written with each
  undecodable byte as ``%XX`` (:func:`~curator_cli.io.readers.base.valid_text`).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import os
import posixpath
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from curator_cli.io.readers.base import (
    ByteRange,
    ReadOptions,
    Sample,
    ShardReadError,
    Unusable,
    payload_bytes,
    valid_text,
)
from curator_cli.io.readers.img2dataset import sidecar_failures
from curator_cli.io.shards import sidecar_parquet

INLINE_BYTES = 16 << 10  # members up to this size are read here; larger ones by the decoders
NAME_ENCODING = "utf-8"  # tar member names: UTF-8, undecodable bytes kept as surrogates (see valid_text)

Payload = bytes | ByteRange | Unusable


def split_member_name(name: str) -> tuple[str, str]:
    """``a/b.seg.JPG`` -> (``a/b``, ``seg.jpg``): key keeps the directory, extension is lower-case."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, ext.lower() if dot else ""


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
_DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ": lzma.open}
END_OF_ARCHIVE = 1024  # two zero blocks close every complete tar


def _check_end_marker(handle, offset: int) -> None:
    """An uncompressed tar cut at a member boundary reads as a shorter archive: its missing
    end-of-archive blocks are the only sign that members were lost."""
    handle.seek(offset)
    tail = handle.read(END_OF_ARCHIVE)
    if len(tail) < END_OF_ARCHIVE or tail.count(0) != len(tail):
        raise tarfile.ReadError("truncated: no end-of-archive marker after the last member")


BLOCK = 512
_USTAR_MAGIC = (b"ustar\x0000", b"ustar  \x00")  # POSIX ustar, GNU


class _Plain(NamedTuple):
    """A plain regular member (the common case), parsed here without building a ``TarInfo``."""

    name: str
    offset_data: int
    size: int


_HEADER = struct.Struct("100s24x12s20x1s100x8s")  # name, size, type flag, magic + version


def _plain_header(block: bytes, offset: int) -> _Plain | None:
    """The member whose header is ``block`` (at ``offset``) if it is a plain regular file with no
    extension header, else None (``tarfile`` then reads it, whatever it is). Its checksum is checked
    later, with many others at once (:class:`_Checksums`)."""
    if len(block) < BLOCK:
        return None
    name, size_field, typeflag, magic = _HEADER.unpack_from(block)
    if typeflag not in (b"0", b"\0") or magic not in _USTAR_MAGIC:
        return None
    try:
        size = int(size_field.partition(b"\0")[0] or b"0", 8)
    except ValueError:
        return None
    name = name.partition(b"\0")[0]
    if magic == _USTAR_MAGIC[0] and block[345]:
        name = block[345:500].partition(b"\0")[0] + b"/" + name
    if not name or name[-1:] == b"/":
        return None  # an old-style directory entry: tarfile's call
    return _Plain(name.decode(NAME_ENCODING, "surrogateescape"), offset + BLOCK, size)


class _Checksums:
    """Header checksums of the members parsed here, checked in bulk (numpy over a few hundred
    headers at a time, not a Python loop over 512 bytes per member): a bad one fails the shard as
    ``tarfile`` would (``bad checksum``), at the latest when the shard's last member is read."""

    EVERY = 512

    def __init__(self) -> None:
        self.blocks: list[bytes] = []

    def add(self, block: bytes) -> None:
        self.blocks.append(block)
        if len(self.blocks) >= self.EVERY:
            self.check()

    def check(self) -> None:
        if not self.blocks:
            return
        blocks = np.frombuffer(b"".join(self.blocks), dtype=np.uint8).reshape(-1, BLOCK)
        stored = [int(block[148:156].partition(b"\0")[0].strip() or b"0", 8) for block in self.blocks]
        self.blocks = []
        unsigned = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 256
        for row in np.flatnonzero(np.asarray(stored) != unsigned):  # old tars may sum signed chars: tarfile accepts both
            signed = blocks[row].view(np.int8).astype(np.int64)
            if stored[row] != int(signed.sum() - signed[148:156].sum() + 256):
                raise tarfile.ReadError("bad checksum")


class _Scanner:
    """Members of an uncompressed tar, headers only, memory flat on large shards. Plain regular
    members (nearly all of a WebDataset shard) are parsed here from windows read with ``pread``
    (one read usually holds a sample's caption and metadata members, their data, and the next
    image's header), a few microseconds each; anything else (links, long names, pax headers,
    sparse files, a header that does not parse) is read by ``tarfile`` from the same offset, so
    its rules hold."""

    WINDOW = 16 << 10

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.fd = raw.fileno()
        self.size = os.fstat(self.fd).st_size
        self.offset = 0  # where the next header is; after the last member: where the end marker is
        self.archive: tarfile.TarFile | None = None
        self.checksums = _Checksums()
        self._window = b""
        self._start = 0

    def _bytes(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the file from ``offset`` (fewer at its end), from the current window or a new one."""
        if offset < self._start or offset + size > self._start + len(self._window):
            self._window = os.pread(self.fd, max(self.WINDOW, size), offset)
            self._start = offset
        return self._window[offset - self._start:offset - self._start + size]

    def __iter__(self) -> Iterator[_Plain | tarfile.TarInfo]:
        checksums, end = self.checksums, self.size
        while True:
            offset = self.offset
            block = self._bytes(offset, BLOCK)
            plain = _plain_header(block, offset)
            if plain is not None and plain.offset_data + plain.size <= end:
                checksums.add(block)
                self.offset = plain.offset_data + -(-plain.size // BLOCK) * BLOCK
                yield plain
                continue
            checksums.check()
            info = self._by_tarfile()
            if info is None:
                return
            yield info

    def _by_tarfile(self) -> tarfile.TarInfo | None:
        """The member at ``self.offset`` read by ``tarfile`` (None at the end of the archive)."""
        if self.archive is None:
            self.raw.seek(self.offset)
            self.archive = tarfile.TarFile(fileobj=self.raw, mode="r", encoding=NAME_ENCODING,
                                           errors="surrogateescape")
            info = self.archive.firstmember
            self.archive.firstmember = None
        else:
            self.archive.offset = self.offset
            info = self.archive.next()
        self.archive.members.clear()
        self.offset = self.archive.offset
        return info

    def data(self, member: _Plain | tarfile.TarInfo) -> bytes:
        """A small member's bytes."""
        if type(member) is _Plain:
            return self._bytes(member.offset_data, member.size)
        assert self.archive is not None
        handle = self.archive.extractfile(member)
        return handle.read() if handle is not None else b""


_NOT_FILES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "directory",
}


class _Links:
    """Where the data of each regular member seen so far lies, so that a hard link (or a symlink to
    an earlier member) reads its target's bytes. One small entry per member: (offset, size)."""

    def __init__(self, path: Path, magic: bytes) -> None:
        self.path = path
        self.magic = magic
        self.compressed = magic.startswith(COMPRESSED_MAGIC)
        self._data: dict[str, tuple[int, int]] = {}
        self._normalised = False  # set once a link looked something up: names are normalised from then on
        self._stream: BinaryIO | None = None  # compressed tars: a second decompressing reader

    def add(self, name: str, offset: int, size: int) -> None:
        # names are normalised only once a link looks one up (see find): most shards have no link
        self._data[posixpath.normpath(name) if self._normalised else name] = (offset, size)

    def find(self, name: str) -> tuple[int, int] | None:
        if not self._normalised:
            self._data = {posixpath.normpath(n): where for n, where in self._data.items()}
            self._normalised = True
        return self._data.get(posixpath.normpath(name))

    def payload(self, info: tarfile.TarInfo) -> Payload:
        """The payload of link member ``info``: its target's bytes, or why it has none."""
        name = valid_text(info.name)
        target_text = valid_text(info.linkname)
        if info.issym():
            if info.linkname.startswith("/"):
                return Unusable(f"tar member is a symlink, not a file: {name} -> {target_text} (absolute)")
            target = posixpath.join(posixpath.dirname(info.name), info.linkname)
        else:
            target = info.linkname
        found = self.find(target)
        if found is None:
            what = "symlink, not a file" if info.issym() else "hard link to no earlier member"
            return Unusable(f"tar member is a {what}: {name} -> {target_text} (not an earlier member of this tar)")
        self.add(info.name, *found)  # a link to this link finds the same data
        offset, size = found
        if not self.compressed:
            return ByteRange(str(self.path), offset, size)
        if self._stream is None:
            self._stream = _DECOMPRESSORS[next(m for m in COMPRESSED_MAGIC if self.magic.startswith(m))](self.path)
        self._stream.seek(offset)  # forward from the last link's target, or from the start if behind
        return self._stream.read(size)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def iter_tar_groups(path: Path) -> Iterator[tuple[str, dict[str, Payload]]]:
    """(key, {extension: payload}) for each run of consecutive members with the same key, streaming.
    A member whose key and extension are already in the run starts a new run (a repeated key).

    In an uncompressed tar, members larger than ``INLINE_BYTES`` are not read here: their payload is
    a :class:`ByteRange` the decoder reads. Compressed tars are read as a stream, bytes and all.
    Hard links and symlinks to earlier members carry their target's payload; members that cannot
    hold data carry an :class:`Unusable` (see the module docstring).
    """
    current_key: str | None = None
    members: dict[str, Payload] = {}
    magic = _magic(path)
    compressed = magic.startswith(COMPRESSED_MAGIC)
    links = _Links(path, magic)
    location = str(path)
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(path, "rb"))
            if compressed:
                archive = stack.enter_context(tarfile.open(fileobj=raw, mode="r|*", encoding=NAME_ENCODING,
                                                          errors="surrogateescape"))
                members_of: Iterator = iter(archive)
                read_small = _stream_reader(archive)
            else:
                scanner = _Scanner(raw)
                members_of, read_small = iter(scanner), scanner.data
            for info in members_of:
                name = info.name.rstrip("/")
                if "/" in name:
                    base = name[name.rfind("/") + 1:]
                    key, ext = split_member_name(name)
                else:  # the usual WebDataset name, ``KEY.EXT``: split_member_name's result, faster
                    base = name
                    key, dot, ext = name.partition(".")
                    ext = ext.lower() if dot else ""
                if base[:1] == "." or base[:2] == "__":
                    continue
                payload: Payload
                if type(info) is _Plain:
                    links.add(info.name, info.offset_data, info.size)
                    payload = (ByteRange(location, info.offset_data, info.size) if info.size > INLINE_BYTES
                               else read_small(info))
                elif info.isfile():
                    links.add(info.name, info.offset_data, info.size)
                    if not compressed and info.size > INLINE_BYTES and not info.issparse():
                        payload = ByteRange(location, info.offset_data, info.size)
                    else:
                        payload = read_small(info)
                elif info.islnk() or (info.issym() and ext):
                    payload = links.payload(info)
                elif info.isdir() and not ext:
                    continue  # a folder entry, not a sample member
                elif info.issym() and not ext:
                    continue  # a symlink to a folder, as tar -c writes them
                else:
                    what = _NOT_FILES.get(info.type, f"member of type {info.type!r}")
                    payload = Unusable(f"tar member is a {what}, not a file: {valid_text(info.name)}")
                if key != current_key or ext in members:
                    if current_key is not None:
                        yield current_key, members
                    current_key, members = key, {}
                members[ext] = payload
            if not compressed:
                _check_end_marker(raw, scanner.offset)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if current_key is not None:
            yield current_key, members
        raise ShardReadError(f"corrupt or truncated tar: {valid_text(str(exc))}") from exc
    finally:
        links.close()
    if current_key is not None:
        yield current_key, members


def _stream_reader(archive: tarfile.TarFile):
    """Reads a member's bytes from a compressed tar read as a stream."""
    def read(info: tarfile.TarInfo) -> bytes:
        handle = archive.extractfile(info)
        return handle.read() if handle is not None else b""
    return read


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(6)


def _decode_text(payload: Payload) -> str:
    return (payload_bytes(payload) or b"").decode("utf-8", errors="replace").strip()


def _valid_json(parsed: object, raw: bytes) -> object:
    """``parsed`` with any lone surrogate (``"\\ud800"`` is valid JSON) replaced, so it can be written as UTF-8."""
    if b"\\u" not in raw:  # from valid UTF-8 without escapes: no surrogate can be there
        return parsed
    text = json.dumps(parsed, ensure_ascii=False)
    try:
        text.encode("utf-8")
        return parsed
    except UnicodeEncodeError:
        return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))


def sample_from_members(key: str, members: dict[str, Payload], location: str,
                        options: ReadOptions) -> Sample:
    """One WebDataset-style sample: the image chosen by ``options.image_exts``, caption from .txt,
    metadata from .json. ``location`` is the tar or folder the members are in (for ``image_path``).
    The image is the first member of those extensions that holds data; if the only ones there are
    :class:`Unusable`, the sample is an error row with the first one's reason."""
    usable = members
    if any(type(payload) is Unusable for payload in members.values()):
        usable = {ext: payload for ext, payload in members.items() if not isinstance(payload, Unusable)}
    image_ext = next((ext for ext in options.image_exts if ext in usable), None)
    metadata: dict = {}
    metadata_text = None
    error = None
    if "json" in usable:
        try:
            raw = payload_bytes(usable["json"]) or b"{}"
            try:
                text: str | None = raw.decode("utf-8")
            except UnicodeDecodeError:  # JSON in UTF-16 or -32: json.loads tells those apart itself
                text = None
            parsed = json.loads(text if text is not None else raw)
            metadata = _valid_json(parsed if isinstance(parsed, dict) else {"json": parsed}, raw)
            if text is not None and metadata is parsed and raw[:1] == b"{" and b"{" not in raw[1:] and b"[" not in raw:
                # the member's own text says the same, and no stage can change it unseen (nothing nested:
                # no bracket anywhere, a conservative test): written as it is
                metadata_text = text.strip()
        except (json.JSONDecodeError, UnicodeDecodeError):
            metadata = {"json_text": _decode_text(usable["json"])}
        except OSError:
            metadata = {}
    caption = None
    if "txt" in usable:
        try:
            caption = _decode_text(usable["txt"])
        except OSError:
            caption = None
    unusable_image = next((members[ext] for ext in options.image_exts if ext in members), None)
    if image_ext is None and isinstance(unusable_image, Unusable):
        error = unusable_image.reason
    elif image_ext is None:
        found = ", ".join(sorted(valid_text(ext) for ext in members)) or "none"
        error = f"no image member (wanted {'/'.join(options.image_exts)}; found {found})"
    return Sample(
        image_id=valid_text(key),
        image_path=valid_text(f"{location}/{key}.{image_ext or options.image_exts[0]}"),
        data=usable.get(image_ext) if image_ext else None,
        caption=caption,
        metadata=metadata,
        metadata_text=metadata_text,
        error=error,
    )


def samples_of_groups(groups: Iterator[tuple[str, dict]], path: Path, options: ReadOptions) -> Iterator[Sample]:
    """A sample per key's members (:func:`sample_from_members`), then the samples img2dataset failed
    to fetch (listed only in the shard's sidecar ``NNNNN.parquet``, when there is one) as error rows.
    A key seen before in the shard is an error row ``duplicate key in shard`` (its caption and
    metadata kept, its image not embedded), so every occurrence has a row and ids stay unique among
    the embedded ones."""
    seen: set[str] = set()
    for key, members in groups:
        sample = sample_from_members(key, members, str(path), options)
        if sample.image_id in seen:
            sample.data = None
            sample.error = f"duplicate key in shard: {sample.image_id} (an earlier sample has this key)"
        seen.add(sample.image_id)
        yield sample
    yield from sidecar_failures(sidecar_parquet(path), seen, options, valid_text(str(path)))


def read_tar(path: Path, options: ReadOptions) -> Iterator[Sample]:
    """Samples of a tar shard, then its sidecar's failures (:func:`samples_of_groups`)."""
    return samples_of_groups(iter_tar_groups(path), path, options)
