"""Finding shards: expanding INPUT arguments (files, directories, globs, brace ranges) into a shard list."""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
STATS_SUFFIX = "_stats.json"  # img2dataset's per-shard statistics, beside each shard


class ShardError(ValueError):
    """An INPUT that names nothing usable."""


@dataclass(frozen=True)
class Shard:
    """One unit of input and output: a tar, a parquet file, or a directory of loose images."""

    path: Path
    format: str  # "tar" | "parquet" | "folder" | "files" (img2dataset's files output: a folder with a sidecar)

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



def _tar_stem(path: Path) -> str | None:
    low = path.name.lower()
    return next((path.name[: -len(suffix)] for suffix in TAR_SUFFIXES if low.endswith(suffix)), None)


def sidecar_parquet(shard_path: Path) -> Path | None:
    """img2dataset's metadata ``NNNNN.parquet`` beside a tar ``NNNNN.tar`` or a folder ``NNNNN/``, if there is one."""
    stem = _tar_stem(shard_path) if shard_path.is_file() else shard_path.resolve().name
    if not stem:
        return None
    candidate = shard_path.resolve().parent / f"{stem}.parquet"
    return candidate if candidate.is_file() else None


def is_files_layout(folder: Path) -> bool:
    """img2dataset's ``files`` output: a folder ``NNNNN/`` with ``NNNNN_stats.json`` or a sidecar
    ``NNNNN.parquet`` beside it (a parquet without an image column: one with images is a dataset
    of its own, as a Hugging Face parquet beside the folder its paths point into)."""
    folder = folder.resolve()
    if not folder.name or not folder.is_dir():
        return False
    if (folder.parent / f"{folder.name}{STATS_SUFFIX}").is_file():
        return True
    sidecar = folder.parent / f"{folder.name}.parquet"
    if not sidecar.is_file():
        return False
    from curator_cli.io.readers.parquet import has_image_column  # readers import this module

    return has_image_column(sidecar) is False


def sidecar_owner(path: Path) -> Path | None:
    """The shard whose img2dataset sidecar ``path`` is: ``NNNNN.tar`` (by name alone, as img2dataset
    writes one beside every tar) or a files-layout folder ``NNNNN/``; None if it is no sidecar."""
    if shard_format(path) != "parquet":
        return None
    stem = path.name[: -len(".parquet")]
    for suffix in TAR_SUFFIXES:
        if (path.parent / f"{stem}{suffix}").is_file():
            return path.parent / f"{stem}{suffix}"
    folder = path.parent / stem
    return folder if is_files_layout(folder) else None


def is_stats_json(path: Path) -> bool:
    return path.name.lower().endswith(STATS_SUFFIX)


@dataclass
class InputScan:
    """What INPUT arguments name: the shards, and the files passed over on the way."""

    shards: list[Shard] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)  # img2dataset's NNNNN.parquet / NNNNN_stats.json
    ignored: list[Path] = field(default_factory=list)  # other files a glob matched that are no shards

    def skipped_summary(self) -> str:
        """One line on what was skipped, or '' if nothing was."""
        parts = []
        if self.sidecars:
            parquet = sum(1 for p in self.sidecars if p.name.lower().endswith(".parquet"))
            kinds = [f"{parquet} NNNNN.parquet"] if parquet else []
            if len(self.sidecars) - parquet:
                kinds.append(f"{len(self.sidecars) - parquet} {STATS_SUFFIX}")
            parts.append(f"{len(self.sidecars)} img2dataset sidecar file(s) ({', '.join(kinds)})")
        if self.ignored:
            parts.append(f"{len(self.ignored)} other file(s) that are no shards")
        return "skipped " + " and ".join(parts) if parts else ""


def _scan_directory(root: Path, exclude: Path | None, scan: InputScan) -> list[Shard]:
    """Shards under a directory, recursively: tar and parquet files, img2dataset files-layout
    folders, and folders holding images.

    img2dataset writes ``NNNNN.parquet`` (metadata) and ``NNNNN_stats.json`` beside each shard
    ``NNNNN.tar`` or ``NNNNN/``; they are skipped (and counted in ``scan``). Hidden entries, the
    output directory and other files are skipped.
    """
    shards: list[Shard] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not (exclude and (here / d).resolve() == exclude)
        )
        files_layouts = {d for d in dirnames if is_files_layout(here / d)}
        dirnames[:] = [d for d in dirnames if d not in files_layouts]  # read as shards, not walked
        files = sorted(f for f in filenames if not f.startswith("."))
        stems = {f[: -len(s)] for f in files for s in TAR_SUFFIXES if f.lower().endswith(s)} | files_layouts
        entries: list[Shard] = [Shard(here / d, "files") for d in files_layouts]
        has_images = False
        for f in files:
            path = here / f
            fmt = shard_format(path)
            if (fmt == "parquet" and f[: -len(".parquet")] in stems) or is_stats_json(path):
                scan.sidecars.append(path)
            elif fmt:
                entries.append(Shard(path, fmt))
            elif is_image_file(path):
                has_images = True
        shards.extend(sorted(entries, key=lambda shard: shard.path.name))
        if has_images:
            shards.append(Shard(here, "folder"))
    return shards


def _named_file(path: Path, match: str) -> Shard:
    """The shard a file named on the command line is; a file that is none is a usage error."""
    fmt = shard_format(path)
    if fmt is None:
        if is_image_file(path):
            raise ShardError(f"input {match!r} is a single image: pass its directory to embed a folder of images")
        if is_stats_json(path):
            raise ShardError(
                f"input {match!r} is img2dataset's stats file, not a shard: pass the shard or its directory"
            )
        raise ShardError(f"input {match!r} is not a .tar or .parquet shard")
    if fmt == "parquet":
        from curator_cli.io.readers.parquet import has_image_column  # readers import this module

        owner = sidecar_owner(path)
        if owner is not None and has_image_column(path) is False:
            raise ShardError(f"input {match!r} is img2dataset's metadata sidecar of {str(owner)!r}, "
                             "not a shard: pass that (or their directory) instead")
    return Shard(path, fmt)


def scan_inputs(inputs: list[str], exclude: Path | None = None) -> InputScan:
    """Every shard the INPUT arguments name, in a stable order, without duplicates, and what was skipped.

    ``exclude`` (the output directory) is never searched, so rerunning over ``.`` stays correct.
    A file named on the command line must be a shard; files a glob or a directory scan comes across
    that are not (img2dataset's sidecars, other ``.json`` files) are skipped.
    """
    exclude = exclude.resolve() if exclude else None
    scan = InputScan()
    found: list[Shard] = []
    for raw in inputs:
        for pattern in expand_braces(raw):
            is_glob = glob.has_magic(pattern)
            if is_glob:
                matches = sorted(glob.glob(pattern, recursive=True))
                if not matches:
                    raise ShardError(f"input {pattern!r} matches no files")
            else:
                matches = [pattern]
            before, images = len(found), 0
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    if exclude and path.resolve() == exclude:
                        continue
                    if is_files_layout(path):
                        found.append(Shard(path, "files"))
                    else:
                        found.extend(_scan_directory(path, exclude, scan))
                elif path.is_file():
                    if not is_glob:
                        found.append(_named_file(path, match))
                    elif is_stats_json(path) or sidecar_owner(path) is not None:
                        scan.sidecars.append(path)
                    elif shard_format(path) is None:
                        images += is_image_file(path)
                        scan.ignored.append(path)
                    else:
                        found.append(Shard(path, shard_format(path)))
                elif not is_glob:
                    raise ShardError(f"input {match!r} does not exist")
            if is_glob and len(found) == before and images:
                raise ShardError(
                    f"input {pattern!r} matches single images: pass their directory to embed a folder of images"
                )
    unique: dict[Path, Shard] = {}
    for shard in found:
        unique.setdefault(shard.path.resolve(), shard)
    scan.shards = list(unique.values())
    scan.sidecars = list(dict.fromkeys(p.resolve() for p in scan.sidecars))
    scan.ignored = list(dict.fromkeys(p.resolve() for p in scan.ignored))
    if scan.sidecars or scan.ignored:
        logging.getLogger("curator").info(scan.skipped_summary())
    return scan


def find_shards(inputs: list[str], exclude: Path | None = None) -> list[Shard]:
    """Every shard the INPUT arguments name (see :func:`scan_inputs`)."""
    return scan_inputs(inputs, exclude).shards


def _strip_shard_suffix(name: str) -> str:
    low = name.lower()
    for suffix in TAR_SUFFIXES + PARQUET_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _output_stem(shard: Shard, name: str) -> str:
    """A shard's output name without ``.parquet``: its own without the shard suffix. A folder
    beside a shard file of the same name (``train/`` and ``train.parquet``) is ``NAME.images``, so
    that the two never share an output; an img2dataset sidecar is no shard and does not count."""
    if shard.format not in ("folder", "files"):
        return _strip_shard_suffix(name)
    folder = shard.path.resolve()
    siblings = [folder.parent / f"{folder.name}{suffix}" for suffix in TAR_SUFFIXES]
    if shard.format == "folder":
        siblings.append(folder.parent / f"{folder.name}.parquet")
    return f"{name}.images" if any(s.is_file() for s in siblings) else name


def output_paths(shards: list[Shard], output_dir: Path) -> dict[Shard, Path]:
    """Map each shard to its parquet file: its path relative to the inputs' common root.

    ``a/00001.tar`` -> ``OUT/a/00001.parquet``; a folder shard ``imgs/cats`` -> ``OUT/.../cats.parquet``
    (``cats.images.parquet`` if there is a ``cats.tar`` or ``cats.parquet`` beside it).
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
        target = (out_root / rel.parent / (_output_stem(shard, rel.name) + ".parquet")).resolve()
        if out_root not in target.parents:
            raise ShardError(f"shard {shard.name!r} would be written outside {output_dir}")
        if target in taken:
            raise ShardError(
                f"shards {taken[target].name!r} and {shard.name!r} would both be written to {target}"
            )
        taken[target] = shard
        result[shard] = target
    return result
