"""What every reader yields: one :class:`Sample` per input record, in shard order."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from curator_cli.io.names import valid_text
from curator_cli.options import ReadOptions

__all__ = ["ByteRange", "OpenFiles", "ReadOptions", "Sample", "ShardReadError", "Unusable", "payload_bytes",
           "status_error", "valid_text"]


class ShardReadError(Exception):
    """A shard that cannot be read (any further): corrupt, truncated, not the format it claims."""


class ByteRange(NamedTuple):
    """Where an image's bytes lie in a file. Readers hand this to the decoders instead of the bytes,
    so the reading of large members happens in the decode worker processes, in parallel. (A named
    tuple: one is made per image in the main process, and pickled to a worker.)"""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)


class OpenFiles:
    """Reads byte ranges (:class:`ByteRange`) from a few files kept open (the most recently used),
    for the processes and threads that read many images from the same shards: a decode worker, the
    GPU decoder's thread. Opening the shard for every image cost more than reading the image."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._fds: dict[str, int] = {}

    def read(self, data: bytes | ByteRange | None) -> bytes | ByteRange | None:
        """The bytes of a :class:`ByteRange`, or ``data`` itself; an unreadable range stays a range
        (reading it again then fails with the reason, where the image's error is written)."""
        if not isinstance(data, ByteRange):
            return data
        try:
            return os.pread(self._fd(data.path), data.size, data.offset)
        except OSError:
            return data

    def read_into(self, data: ByteRange, into: memoryview) -> int:
        """Read ``data`` into ``into`` (at least ``data.size`` bytes long): how many bytes the file
        held there (fewer than ``size`` when it is cut short). OSError when it cannot be read."""
        return os.preadv(self._fd(data.path), [into[:data.size]], data.offset)

    def _fd(self, path: str) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
        self._fds[path] = fd  # the most recently used last
        while len(self._fds) > self.keep:
            os.close(self._fds.pop(next(iter(self._fds))))
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass(frozen=True)
class Unusable:
    """A member that cannot hold data (a symlink out of the shard, a device, a FIFO, a directory):
    ``reason`` is the error row's text when the sample has nothing better."""

    reason: str


def payload_bytes(payload: bytes | ByteRange | Unusable | None) -> bytes | None:
    """The bytes of a sample's payload, reading them if the reader deferred that (None if it has none)."""
    if isinstance(payload, Unusable):
        return None
    return payload.read() if isinstance(payload, ByteRange) else payload


def status_error(status: Any, message: Any = None) -> str:
    """The error of a sample img2dataset did not fetch (``status`` other than ``success``), the same
    for every layout so that ``curator show`` counts them together."""
    return f"input status {status}" + (f": {message}" if message else "")


@dataclass
class Sample:
    """One input record: its identity, encoded image bytes and side data.

    ``error`` is set when the record has no usable image (it is still written, with that reason).
    """

    image_id: str
    image_path: str
    data: bytes | ByteRange | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # ``metadata`` as the JSON text it was read from, when it is exactly that text's object (the writer
    # then writes the text instead of serialising the dict again); None otherwise
    metadata_text: str | None = None
