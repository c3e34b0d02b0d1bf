"""Names as text that every writer of UTF-8 accepts: file and tar member names are bytes, and a byte
that is not UTF-8 is kept as ``%XX`` (readable, and distinct from every other name)."""

from __future__ import annotations


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
