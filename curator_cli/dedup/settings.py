"""A dedup run's settings, parsed once from the command line, and the error a user can fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Measured on the default `perceptual` stage (`bench/dedup.py images`; bench/RESULTS.md, "The default
# threshold"): resized, recompressed, tinted and up to 3 % cropped copies score 0.83-1.0, unrelated
# pictures at most 0.77 (64,620 pairs of photos and crops) and 0.79 (1.1 million synthetic pairs).
PERCEPTUAL_DEFAULT_THRESHOLD = 0.85
DEFAULT_NEIGHBOURS = 3
DEFAULT_MAX_MEMORY = 4 << 30
MIN_MAX_MEMORY = 1 << 30
KEEP_HELP = "first | highest:COLUMN | largest"


class DedupError(ValueError):
    """A mistake the user can fix (no inputs, a missing column, mixed dimensions, a bad option):
    the command prints it as one line and exits 2."""


@dataclass(frozen=True)
class KeepRule:
    """Which image of a group stays: the first in input order, the highest value of a numeric
    column (ties: the first), or the most pixels (ties: the first)."""

    kind: str  # "first" | "highest" | "largest"
    column: str | None = None

    @classmethod
    def parse(cls, text: str) -> KeepRule:
        """``first``, ``highest:COLUMN`` or ``largest``; anything else is a :class:`DedupError`."""
        value = text.strip()
        if value in ("first", "largest"):
            return cls(value)
        kind, sep, column = value.partition(":")
        if kind == "highest" and sep and column.strip():
            return cls("highest", column.strip())
        if kind == "highest":
            raise DedupError(f"--keep {text!r}: name the column, e.g. highest:aesthetic_score")
        raise DedupError(f"--keep {text!r} is not one of {KEEP_HELP}")

    def __str__(self) -> str:
        return f"highest:{self.column}" if self.kind == "highest" else self.kind


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``4G``, ``4GB``, ``512M``, ``1.5g`` or a number of bytes -> bytes (binary units); at least 1 GiB."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise DedupError(f"--max-memory {text!r}: give a size such as 4G or 512M")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    size = int(float(match.group(1)) * scale)
    if size < MIN_MAX_MEMORY:
        raise DedupError(f"--max-memory {text}: at least 1G is needed (torch, faiss and pyarrow alone take about 0.6 GB)")
    return size


@dataclass(frozen=True)
class DedupSettings:
    """Everything a dedup run is told. What decides its pairs (threshold, neighbours, cells, seed and
    the columns) is what a rerun's work must match to be reused (``workdir``); ``keep`` and the
    memory bound are not: a rerun with another ``--keep`` reuses every partition."""

    output: Path
    threshold: float | None  # None: the default for the inputs' stage (perceptual), else an error
    keep: KeepRule = KeepRule("first")
    id_column: str = "image_id"
    embedding_column: str = "embedding"
    max_memory: int = DEFAULT_MAX_MEMORY
    neighbours: int = DEFAULT_NEIGHBOURS
    cells: int | None = None  # None: chosen from the number of vectors
    device: str = "cpu"
    write_pairs: bool = False
    seed: int = 0
