"""What every reader yields: one :class:`Sample` per input record, in shard order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curator_cli.options import ReadOptions

__all__ = ["ByteRange", "ReadOptions", "Sample", "ShardReadError", "Unusable", "payload_bytes", "status_error",
           "valid_text"]


class ShardReadError(Exception):
    """A shard that cannot be read (any further): corrupt, truncated, not the format it claims."""


@dataclass(frozen=True)
class ByteRange:
    """Where an image's bytes lie in a file. Readers hand this to the decoders instead of the bytes,
    so the reading of large members happens in the decode worker processes, in parallel."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)


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


def valid_text(text: str) -> str:
    """``text`` as valid UTF-8: the bytes a name could not be decoded from (tarfile's and ``os``'s
    ``surrogateescape`` turns byte 0xXX into U+DCXX) become ``%XX``; any other lone surrogate U+FFFD.

    So a member named ``caf\\xe9.jpg`` (Latin-1) has the id ``caf%E9``: readable, and distinct from
    ``café`` and from other undecodable names. Text that is valid already is returned as it is.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    return "".join(
        (f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else "\ufffd") if 0xD800 <= ord(c) <= 0xDFFF else c
        for c in text
    )


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
