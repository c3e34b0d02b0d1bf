"""Finding shards: expanding INPUT arguments (files, directories, globs, brace ranges) into a shard list."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ShardError(ValueError):
    """An INPUT that names nothing usable."""


@dataclass(frozen=True)
class Shard:
    """One unit of input and output: a tar, a parquet file, or a directory of loose images."""

    path: Path
    format: str  # "tar" | "parquet" | "folder"

    @property
    def name(self) -> str:
        return str(self.path)


def shard_format(path: Path) -> str | None:
    """The shard format a file's name implies, or None for files that are not shards."""
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{00000..00099}`` ranges (zero padding kept) and ``{a,b}`` lists, as shells do."""
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end():]
    range_match = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if range_match:
        lo_text, hi_text = range_match.groups()
        lo, hi = int(lo_text), int(hi_text)
        width = len(lo_text) if lo_text.startswith("0") or hi_text.startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]



def _scan_directory(root: Path, exclude: Path | None) -> list[Shard]:
    """Shards under a directory, recursively: tar and parquet files, and folders holding images.

    img2dataset writes a metadata ``NNNNN.parquet`` beside each ``NNNNN.tar``; such sidecars
    are skipped since the tar holds the images. Hidden entries and the output directory are skipped.
    """
    shards: list[Shard] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not (exclude and (here / d).resolve() == exclude)
        )
        files = sorted(f for f in filenames if not f.startswith("."))
        tar_stems = {here / f[: -len(s)] for f in files for s in TAR_SUFFIXES if f.lower().endswith(s)}
        has_images = False
        for f in files:
            path = here / f
            fmt = shard_format(path)
            if fmt == "parquet" and path.with_suffix("") in tar_stems:
                continue
            if fmt:
                shards.append(Shard(path, fmt))
            elif is_image_file(path):
                has_images = True
        if has_images:
            shards.append(Shard(here, "folder"))
    return shards


def find_shards(inputs: list[str], exclude: Path | None = None) -> list[Shard]:
    """Every shard the INPUT arguments name, in a stable order, without duplicates.

    ``exclude`` (the output directory) is never searched, so rerunning over ``.`` stays correct.
    """
    exclude = exclude.resolve() if exclude else None
    found: list[Shard] = []
    for raw in inputs:
        for pattern in expand_braces(raw):
            if glob.has_magic(pattern):
                matches = sorted(glob.glob(pattern, recursive=True))
                if not matches:
                    raise ShardError(f"input {pattern!r} matches no files")
            else:
                matches = [pattern]
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    found.extend(_scan_directory(path, exclude))
                elif path.is_file():
                    fmt = shard_format(path)
                    if fmt is None:
                        if is_image_file(path):
                            raise ShardError(
                                f"input {match!r} is a single image: pass its directory to embed a folder of images"
                            )
                        raise ShardError(f"input {match!r} is not a .tar or .parquet shard")
                    found.append(Shard(path, fmt))
                elif not glob.has_magic(pattern):
                    raise ShardError(f"input {match!r} does not exist")
    unique: dict[Path, Shard] = {}
    for shard in found:
        unique.setdefault(shard.path.resolve(), shard)
    return list(unique.values())


def _strip_shard_suffix(name: str) -> str:
    low = name.lower()
    for suffix in TAR_SUFFIXES + PARQUET_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_paths(shards: list[Shard], output_dir: Path) -> dict[Shard, Path]:
    """Map each shard to its parquet file: its path relative to the inputs' common root.

    ``a/00001.tar`` -> ``OUT/a/00001.parquet``; a folder shard ``imgs/cats`` -> ``OUT/.../cats.parquet``.
    Paths always stay inside ``output_dir``; two shards that would collide are an error.
    """
    if not shards:
        return {}
    parents = [s.path.resolve().parent for s in shards]
    root = Path(os.path.commonpath([str(p) for p in parents]))
    result: dict[Shard, Path] = {}
    taken: dict[Path, Shard] = {}
    out_root = output_dir.resolve()
    for shard in shards:
        rel = shard.path.resolve().relative_to(root)
        target = (out_root / rel.parent / (_strip_shard_suffix(rel.name) + ".parquet")).resolve()
        if out_root not in target.parents:
            raise ShardError(f"shard {shard.name!r} would be written outside {output_dir}")
        if target in taken:
            raise ShardError(
                f"shards {taken[target].name!r} and {shard.name!r} would both be written to {target}"
            )
        taken[target] = shard
        result[shard] = target
    return result
