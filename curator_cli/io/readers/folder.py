"""A directory of loose image files as one shard; ``NAME.txt``/``NAME.json`` beside an image are its caption/metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from curator_cli.io.readers.base import ByteRange, ReadOptions, Sample, valid_text
from curator_cli.io.shards import is_image_file


def read_folder(path: Path, options: ReadOptions) -> Iterator[Sample]:
    """Images directly inside ``path`` in name order; ids are paths relative to the folder's parent
    (names that are not valid UTF-8 with each undecodable byte as ``%XX``). An image name that is not
    a regular file (a broken symlink, a FIFO) is an error row, never read."""
    base = path.parent
    for image in sorted(p for p in path.iterdir() if is_image_file(p) and not p.is_dir()):
        caption = None
        metadata: dict = {}
        caption_file = image.with_suffix(".txt")
        if caption_file.is_file():
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        meta_file = image.with_suffix(".json")
        if meta_file.is_file():
            try:
                parsed = json.loads(meta_file.read_text(encoding="utf-8"))
                metadata = parsed if isinstance(parsed, dict) else {"json": parsed}
            except (json.JSONDecodeError, UnicodeDecodeError):
                metadata = {}
        try:
            if image.is_file():
                data, error = ByteRange(str(image), 0, image.stat().st_size), None  # read by the decoder
            else:
                data, error = None, "not a regular file: " + ("broken symlink" if image.is_symlink() else "FIFO, device or socket")
        except OSError as exc:
            data, error = None, f"unreadable file: {exc.strerror or exc}"
        yield Sample(
            image_id=valid_text(image.relative_to(base).as_posix()),
            image_path=valid_text(str(image)),
            data=data,
            caption=caption,
            metadata=metadata,
            error=error,
        )
