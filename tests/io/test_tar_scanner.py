"""The tar reader's own header parser agrees with ``tarfile`` on every member, in every format, and
a header whose checksum is wrong fails the shard as ``tarfile`` would."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from curator_cli.io.readers.base import ByteRange, ShardReadError
from curator_cli.io.readers.tar import INLINE_BYTES, iter_tar_groups

LONG_DIR = "a-folder-with-a-rather-long-name-" * 3  # > 100 characters with the file name: ustar's prefix field


def _tar(path: Path, members: dict[str, bytes], fmt: int) -> Path:
    with tarfile.open(path, "w", format=fmt) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _members(fmt: int) -> dict[str, bytes]:
    return {
        "000001.jpg": b"\xff\xd8" + b"x" * (INLINE_BYTES + 10),  # large: read by the decoders
        "000001.txt": b"a caption",
        f"{LONG_DIR}/000002.jpg": b"\xff\xd8small",
        f"{LONG_DIR}/000002.json": b'{"k": 1}',
        "caf\u00e9/000003.txt": "\u00e9t\u00e9".encode(),
    }


def _contents(groups) -> dict[str, dict[str, bytes]]:
    found = {}
    for key, members in groups:
        found[key] = {ext: (p.read() if isinstance(p, ByteRange) else p) for ext, p in members.items()}
    return found


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_member_read_as_tarfile_reads_it(tmp_path, fmt):
    members = _members(fmt)
    path = _tar(tmp_path / "shard.tar", members, fmt)
    expected: dict[str, dict[str, bytes]] = {}
    for name, data in members.items():
        key, ext = name.rsplit(".", 1)
        expected.setdefault(key, {})[ext] = data
    assert _contents(iter_tar_groups(path)) == expected


def test_a_header_with_a_bad_checksum_fails_the_shard(tmp_path):
    path = _tar(tmp_path / "shard.tar", {f"{i:06d}.txt": b"caption" for i in range(5)}, tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    second = 1024  # header, one data block, then the second header
    assert data[second:second + 6] == b"000001"
    data[second + 5] = ord("9")  # the name changes, its checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match="bad checksum"):
        list(iter_tar_groups(path))
