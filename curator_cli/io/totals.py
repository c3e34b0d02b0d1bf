"""How many rows a run will write, known before any image is decoded: the progress bar's total and
ETA, and the total ``curator inspect`` prints.

Each shard is counted from the cheapest source that knows, in this order:

- a parquet shard: its footer's row count (every row is one sample);
- a tar, or an img2dataset ``files`` folder, with img2dataset's sidecar ``NNNNN.parquet``: every
  sample img2dataset tried, failed downloads included (embed writes those as error rows from the
  sidecar): the ``count`` of ``NNNNN_stats.json`` where it is there (a small JSON file), else the
  sidecar's footer row count;
- with only ``NNNNN_stats.json``: its ``successes`` (without a sidecar, the failed downloads are in
  no file, so they are not rows);
- a folder of images, or a ``files`` folder without either: its listing (names only, nothing read);
- a tar with neither: **estimated** from its size in bytes, at the samples per byte that the headers
  of the first members of a few tars show (:data:`SAMPLED_TARS` of them, spread over the list, at
  most :data:`PREFIX_MEMBERS` headers each). A tar whose headers all fit in that walk is counted
  whole. The progress bar refines the estimate as shards finish (``execution.progress``).

Nothing here raises for a bad shard: one that cannot be read counts 0 (embed fails it).
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from curator_cli.io.readers.base import ShardReadError
from curator_cli.io.readers.files import iter_files_groups
from curator_cli.io.readers.tar import COMPRESSED_MAGIC, split_member_name
from curator_cli.io.shards import Shard, is_image_file, sidecar_parquet, stats_json

SAMPLED_TARS = 3  # tars without sidecars whose first headers are walked, per compression kind
PREFIX_MEMBERS = 2048  # headers walked per sampled tar, at most
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz")

ESTIMATED = "size estimate"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class ShardCount:
    """One shard's rows: ``samples``, where the number came from, whether it is exact, and the
    shard's size in bytes (what an estimate scales with)."""

    samples: int
    source: str
    exact: bool = True
    size: int = 0


@dataclass
class SampleCounts:
    """The rows each shard will write, in the order of the shards counted."""

    counts: list[ShardCount] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.counts)

    @property
    def exact(self) -> bool:
        return all(c.exact for c in self.counts)

    def text(self) -> str:
        """``14 images (exact: 1 parquet footer, 1 img2dataset sidecar)`` or
        ``about 52000 images (3 of 10 shards estimated from their size)``."""
        by_source: dict[str, int] = {}
        for count in self.counts:
            by_source[count.source] = by_source.get(count.source, 0) + 1
        if self.exact:
            parts = ", ".join(f"{n} {source}" for source, n in by_source.items())
            return f"{self.samples} images (exact: {parts})"
        estimated = by_source.get(ESTIMATED, 0)
        rest = ", the rest exact" if estimated < len(self.counts) else ""
        return (f"about {self.samples} images ({estimated} of {len(self.counts)} shard(s) estimated from their "
                f"size{rest})")


def count_samples(shards: list[Shard], sampled_tars: int = SAMPLED_TARS,
                  prefix_members: int = PREFIX_MEMBERS) -> SampleCounts:
    """The rows each of ``shards`` will write (see the module docstring); cheap: footers, small
    sidecar files, folder listings, and at most ``sampled_tars`` x ``prefix_members`` tar headers."""
    counts: list[ShardCount | None] = [_exact_count(shard) for shard in shards]
    bare = [i for i, c in enumerate(counts) if c is None]
    for compressed in (False, True):
        group = [i for i in bare if _is_compressed(shards[i].path) == compressed]
        if not group:
            continue
        walked_samples = walked_bytes = 0
        for i in _spread(group, sampled_tars):
            samples, consumed, whole = _tar_prefix(shards[i].path, prefix_members)
            if whole:
                counts[i] = ShardCount(samples, "tar headers", True, _size(shards[i].path))
            walked_samples += samples
            walked_bytes += consumed
        ratio = walked_samples / walked_bytes if walked_bytes else 0.0
        for i in group:
            if counts[i] is None:
                size = _size(shards[i].path)
                counts[i] = ShardCount(round(size * ratio), ESTIMATED, False, size)
    return SampleCounts([c for c in counts if c is not None])


def _exact_count(shard: Shard) -> ShardCount | None:
    """The shard's rows where a footer, a sidecar or a listing says; None for a tar without sidecars."""
    size = _size(shard.path)
    try:
        if shard.format == "parquet":
            return ShardCount(_parquet_rows(shard.path), "parquet footer", True, size)
        if shard.format in ("tar", "files"):
            sidecar, stats = sidecar_parquet(shard.path), stats_json(shard.path)
            recorded = _stats(stats) if stats is not None else {}
            if sidecar is not None and "count" in recorded:
                return ShardCount(recorded["count"], "img2dataset stats", True, size)
            if sidecar is not None:
                return ShardCount(_parquet_rows(sidecar), "img2dataset sidecar", True, size)
            if "successes" in recorded:
                return ShardCount(recorded["successes"], "img2dataset stats", True, size)
            if shard.format == "tar":
                return None
            return ShardCount(sum(1 for _ in iter_files_groups(shard.path)), "listing", True, size)
        if shard.format == "folder":
            images = sum(1 for p in shard.path.iterdir() if is_image_file(p) and not p.is_dir())
            return ShardCount(images, "listing", True, size)
    except (OSError, ValueError, ShardReadError):  # ArrowInvalid is a ValueError; embed fails such a shard
        return ShardCount(0, UNREADABLE, True, size)
    return ShardCount(0, UNREADABLE, True, size)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _stats(stats: Path) -> dict[str, int]:
    """``count`` and ``successes`` from img2dataset's ``_stats.json``, those that it holds as counts."""
    try:
        data = json.loads(stats.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k in ("count", "successes") if isinstance(v := data.get(k), int) and v >= 0}


def _size(path: Path) -> int:
    """Bytes of a file, or of the files directly in a folder; 0 if unreadable."""
    try:
        if path.is_dir():
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _is_compressed(path: Path) -> bool:
    return path.name.lower().endswith(COMPRESSED_SUFFIXES)


def _spread(items: list[int], n: int) -> list[int]:
    """Up to ``n`` of ``items``, spread evenly from the first to the last."""
    if len(items) <= n:
        return items
    if n <= 1:
        return items[:1]
    return sorted({items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)})


def _tar_prefix(path: Path, max_members: int) -> tuple[int, int, bool]:
    """(samples, bytes they take, whether that was the whole tar) over the first ``max_members``
    headers: a sample is a run of consecutive members with the same key (WebDataset's rule; names
    starting with ``__`` or ``.`` are not samples). Only headers are read (compressed tars are
    decompressed that far); an unreadable tar gives what was counted before the fault."""
    samples, current = 0, None
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(6).startswith(COMPRESSED_MAGIC)
            raw.seek(0)
            mode = "r|*" if compressed else "r:"
            with tarfile.open(fileobj=raw, mode=mode, errors="surrogateescape") as archive:
                for seen, info in enumerate(archive):
                    if seen >= max_members:
                        consumed = raw.tell() if compressed else info.offset
                        return samples, consumed, False
                    base = posixpath.basename(info.name.rstrip("/"))
                    if base.startswith(("__", ".")) or (info.isdir() and "." not in base):
                        continue
                    key = split_member_name(info.name.rstrip("/"))[0]
                    if key != current:
                        samples, current = samples + 1, key
        return samples, _size(path), True
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return samples, _size(path), True
