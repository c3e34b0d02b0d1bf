"""Finding shards: expanding INPUT arguments (files, directories, globs, brace ranges) into a shard
list, and where each shard's output goes.

What is a shard, and what never is:

- only regular files (and symlinks to them) are shard files; a FIFO, socket or device named like a
  shard is skipped with an info line (named on the command line: a usage error), so nothing ever
  blocks opening one;
- symlinked folders are followed, each real folder (device and inode) walked once, real folders
  before the links to them, so loops end and nothing is read twice;
- curator's own outputs (parquet files with a ``curator.manifest`` footer, or an older version's
  ``_NAME.manifest.json`` beside them) are never inputs, wherever an earlier run left them;
- a brace range names what exists: members that do not exist are counted as missing (a range none of
  whose members exists is a usage error).

Output paths (:func:`output_paths`) depend on each shard's path and the INPUT argument that named it,
never on the other shards, and never land on an input, on an img2dataset sidecar, or on a file that
curator did not write.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from curator_cli.io.manifest import MANIFEST_KEY, manifest_path
from curator_cli.io.names import valid_text

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
STATS_SUFFIX = "_stats.json"  # img2dataset's per-shard statistics, beside each shard


class ShardError(ValueError):
    """An INPUT that names nothing usable."""


@dataclass(frozen=True)
class Shard:
    """One unit of input and output: a tar, a parquet file, or a directory of loose images.

    ``base`` is the folder its output path is relative to, from the INPUT argument that named it
    (see :func:`output_paths`); it is not part of the shard's identity."""

    path: Path
    format: str  # "tar" | "parquet" | "folder" | "files" (img2dataset's files output: a folder with a sidecar)
    base: Path | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The shard's path as text, always valid UTF-8 (:func:`~curator_cli.io.names.valid_text`)."""
        return valid_text(str(self.path))


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


def file_kind(path: Path) -> str:
    """``"file"`` (a regular file, or a symlink to one), ``"dir"``, ``"special"`` (a FIFO, socket or
    device: never opened, as reading one can block forever) or ``"missing"`` (a broken symlink too)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return "missing"
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "special"


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


def pattern_base(pattern: str) -> Path:
    """The folder a glob or brace pattern's matches are named relative to: its leading components
    without glob magic or braces (``shards/*/x.tar`` and ``shards/{a,b}/x.tar`` -> ``shards``)."""
    parts = pattern.split(os.sep)
    keep: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part) or "{" in part:
            break
        keep.append(part)
    if keep == [""]:
        return Path(os.sep)
    return Path(os.sep.join(keep)) if keep else Path(".")


def _tar_stem(path: Path) -> str | None:
    low = path.name.lower()
    return next((path.name[: -len(suffix)] for suffix in TAR_SUFFIXES if low.endswith(suffix)), None)


def _beside(shard_path: Path, suffix: str) -> Path | None:
    """The file ``NNNNN`` + ``suffix`` beside a tar ``NNNNN.tar`` or a folder ``NNNNN/``, if there is one."""
    stem = _tar_stem(shard_path) if shard_path.is_file() else shard_path.resolve().name
    if not stem:
        return None
    candidate = shard_path.resolve().parent / f"{stem}{suffix}"
    return candidate if candidate.is_file() else None


def sidecar_parquet(shard_path: Path) -> Path | None:
    """img2dataset's metadata ``NNNNN.parquet`` beside a tar ``NNNNN.tar`` or a folder ``NNNNN/``, if there is one."""
    return _beside(shard_path, ".parquet")


def stats_json(shard_path: Path) -> Path | None:
    """img2dataset's ``NNNNN_stats.json`` beside a tar ``NNNNN.tar`` or a folder ``NNNNN/``, if there is one."""
    return _beside(shard_path, STATS_SUFFIX)


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


@lru_cache(maxsize=65536)
def _footer_has_manifest(path: str, size: int, mtime_ns: int) -> bool | None:
    """True: a whole parquet file with curator's manifest in its footer; False: a whole parquet file
    without; None: no parquet footer can be read (not parquet, truncated, unreadable)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, ValueError):  # ArrowInvalid is a ValueError, and so is a name pyarrow cannot encode
        return None
    return MANIFEST_KEY.encode() in metadata


def footer_has_manifest(path: Path) -> bool | None:
    """:func:`_footer_has_manifest` for a regular file (never opens a FIFO), cached by size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return _footer_has_manifest(str(path), st.st_size, st.st_mtime_ns)


def is_curator_output(path: Path) -> bool:
    """Whether the parquet file ``path`` is one curator wrote: its footer holds the manifest, or (an
    older version's output) a ``_NAME.manifest.json`` is beside it."""
    return manifest_path(path).is_file() or footer_has_manifest(path) is True


def _names(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(valid_text(str(p)) for p in paths[:limit])
    return shown + (", ..." if len(paths) > limit else "")


@dataclass
class InputScan:
    """What INPUT arguments name: the shards, and the files passed over on the way."""

    shards: list[Shard] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)  # img2dataset's NNNNN.parquet / NNNNN_stats.json
    ignored: list[Path] = field(default_factory=list)  # other files a glob matched that are no shards
    outputs: list[Path] = field(default_factory=list)  # folders (and files a glob matched) of curator outputs
    special: list[Path] = field(default_factory=list)  # FIFOs, sockets, devices named like shards or images
    missing: list[str] = field(default_factory=list)  # names a brace range gave that do not exist

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
        if self.outputs:
            parts.append(f"{len(self.outputs)} folder(s) or file(s) of curator outputs ({_names(self.outputs)})")
        if self.special:
            parts.append(f"{len(self.special)} FIFO(s), socket(s) or device(s) that are no regular files "
                         f"({_names(self.special)})")
        line = "skipped " + " and ".join(parts) if parts else ""
        if self.missing:
            shown = ", ".join(valid_text(m) for m in self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
            line += ("; " if line else "") + f"{len(self.missing)} shard(s) of brace ranges do not exist ({shown})"
        return line

    def input_files(self) -> set[Path]:
        """Every file this run reads, resolved: shard files and the sidecars beside them."""
        files = {s.path.resolve() for s in self.shards if s.format in ("tar", "parquet")}
        files |= {p.resolve() for p in self.sidecars}
        return files


def _walk(root: Path, exclude: Path | None):
    """``os.walk(root)`` that follows symlinked folders, walking each real folder (device and inode)
    once: the real folders under ``root`` first, then the links, so a link to a folder that is
    walked anyway adds nothing and a loop ends. Hidden folders and ``exclude`` are left out."""
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        top = pending.pop(0)
        try:
            st = os.stat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        links: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                sub = here / d
                if d.startswith(".") or (exclude and sub.resolve() == exclude):
                    continue
                if os.path.islink(sub):
                    links.append(sub)  # walked after the real folders
                    continue
                try:
                    sub_st = os.stat(sub)
                except OSError:
                    continue
                if (sub_st.st_dev, sub_st.st_ino) not in seen:
                    seen.add((sub_st.st_dev, sub_st.st_ino))
                    keep.append(d)
            dirnames[:] = keep
            yield here, dirnames, sorted(filenames)
        pending.extend(links)


def _scan_directory(root: Path, base: Path, exclude: Path | None, scan: InputScan) -> list[Shard]:
    """Shards under a directory, recursively: tar and parquet files, img2dataset files-layout
    folders, and folders holding images; their outputs are named relative to ``base``.

    img2dataset writes ``NNNNN.parquet`` (metadata) and ``NNNNN_stats.json`` beside each shard
    ``NNNNN.tar`` or ``NNNNN/``; they are skipped (and counted in ``scan``), and so are curator's own
    outputs (:func:`is_curator_output`: one footer read per parquet file, wherever earlier runs wrote
    them, even beside inputs). Hidden entries, the output directory, files that are no regular files
    and other files are skipped.
    """
    shards: list[Shard] = []
    for here, dirnames, filenames in _walk(root, exclude):
        files_layouts = {d for d in dirnames if is_files_layout(here / d)}
        dirnames[:] = [d for d in dirnames if d not in files_layouts]  # read as shards, not walked
        files, special_images, outputs_here = [], [], False
        for f in filenames:
            if f.startswith("."):
                continue
            path = here / f
            if not (shard_format(path) or is_image_file(path) or is_stats_json(path)):
                continue
            kind = file_kind(path)
            if kind == "file" and shard_format(path) == "parquet" and is_curator_output(path):
                outputs_here = True
            elif kind in ("file", "missing"):  # a broken symlink named like a shard fails as one, with its reason
                files.append(f)
            elif kind == "special":
                (special_images if is_image_file(path) else scan.special).append(path)
        stems = {f[: -len(s)] for f in files for s in TAR_SUFFIXES if f.lower().endswith(s)} | files_layouts
        entries: list[Shard] = [Shard(here / d, "files", base) for d in files_layouts]
        has_images = False
        for f in files:
            path = here / f
            fmt = shard_format(path)
            if (fmt == "parquet" and f[: -len(".parquet")] in stems) or is_stats_json(path):
                scan.sidecars.append(path)
            elif fmt:
                entries.append(Shard(path, fmt, base))
            elif is_image_file(path):
                has_images = True
        shards.extend(sorted(entries, key=lambda shard: shard.path.name))
        if has_images:
            shards.append(Shard(here, "folder", base))  # its reader accounts for image names that are no files
        else:
            scan.special.extend(special_images)
        if outputs_here:
            scan.outputs.append(here)
    return shards


def _named_file(path: Path, match: str, base: Path) -> Shard:
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

        if is_curator_output(path):
            raise ShardError(f"input {match!r} is an output of curator (embeddings), not a shard")
        owner = sidecar_owner(path)
        if owner is not None and has_image_column(path) is False:
            raise ShardError(f"input {match!r} is img2dataset's metadata sidecar of {str(owner)!r}, "
                             "not a shard: pass that (or their directory) instead")
    return Shard(path, fmt, base)


def scan_inputs(inputs: list[str], exclude: Path | None = None) -> InputScan:
    """Every shard the INPUT arguments name, in a stable order, without duplicates, and what was skipped.

    ``exclude`` (the output directory) is never searched, so rerunning over ``.`` stays correct.
    A file named on the command line must be a shard (a regular file); files a glob or a directory
    scan comes across that are not (img2dataset's sidecars, other ``.json`` files, FIFOs, curator's
    outputs) are skipped. Names a brace range gives that do not exist are ``missing``, not an error,
    unless none of them exists.
    """
    exclude = exclude.resolve() if exclude else None
    scan = InputScan()
    found: list[Shard] = []
    for raw in inputs:
        patterns = expand_braces(raw)
        braced = patterns != [raw]
        base_of_pattern = pattern_base(raw)
        found_before, missing = len(found), []
        for pattern in patterns:
            is_glob = glob.has_magic(pattern)
            if is_glob:
                matches = sorted(glob.glob(pattern, recursive=True))
                if not matches:
                    if braced:
                        missing.append(pattern)
                        continue
                    raise ShardError(f"input {pattern!r} matches no files")
            else:
                matches = [pattern]
            before, images = len(found), 0
            for match in matches:
                path = Path(match)
                kind = file_kind(path)
                named = braced or is_glob  # a match of a pattern: named relative to the pattern's folder
                if kind == "dir":
                    if exclude and path.resolve() == exclude:
                        continue
                    if is_files_layout(path):
                        found.append(Shard(path, "files", base_of_pattern if named else path))
                    else:
                        found.extend(_scan_directory(path, base_of_pattern if named else path, exclude, scan))
                elif kind == "file":
                    if not is_glob:
                        found.append(_named_file(path, match, base_of_pattern if braced else path.parent))
                    elif is_stats_json(path) or sidecar_owner(path) is not None:
                        scan.sidecars.append(path)
                    elif shard_format(path) is None:
                        images += is_image_file(path)
                        scan.ignored.append(path)
                    elif shard_format(path) == "parquet" and is_curator_output(path):
                        scan.outputs.append(path)
                    else:
                        found.append(Shard(path, shard_format(path), base_of_pattern))
                elif kind == "special":
                    if not is_glob:
                        raise ShardError(f"input {valid_text(match)!r} is not a regular file "
                                         "(a FIFO, socket or device): only files can be shards")
                    scan.special.append(path)
                elif braced and not is_glob:
                    missing.append(match)
                elif not is_glob:
                    raise ShardError(f"input {valid_text(match)!r} does not exist")
            if is_glob and len(found) == before and images:
                raise ShardError(
                    f"input {pattern!r} matches single images: pass their directory to embed a folder of images"
                )
        if missing and len(found) == found_before:
            raise ShardError(f"input {raw!r} names no file that exists ({len(missing)} name(s), none found)")
        scan.missing.extend(missing)
    unique: dict[Path, Shard] = {}
    for shard in found:
        unique.setdefault(shard.path.resolve(), shard)
    scan.shards = list(unique.values())
    scan.sidecars = list(dict.fromkeys(p.resolve() for p in scan.sidecars))
    scan.ignored = list(dict.fromkeys(p.resolve() for p in scan.ignored))
    scan.outputs = list(dict.fromkeys(scan.outputs))
    scan.special = list(dict.fromkeys(scan.special))
    if scan.skipped_summary():
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


def relative_output(shard: Shard) -> Path:
    """Where ``shard``'s output goes under ``--output``: its path relative to ``shard.base`` (the
    directory an INPUT directory argument named, or a glob's or brace range's folder before its
    first pattern; for a file named on its own, or a shard without a base, its name alone), with the
    shard suffix replaced by ``.parquet``. Names that are not valid UTF-8 get ``%XX`` (:func:`~curator_cli.io.names.valid_text`)."""
    path = os.path.abspath(shard.path)
    base = os.path.abspath(shard.base if shard.base is not None else shard.path.parent)
    rel = Path(os.path.relpath(path, base))
    if not rel.parts or rel.parts == (".",) or ".." in rel.parts:
        rel = Path(os.path.basename(path))
    parts = [valid_text(p) for p in rel.parts]
    return Path(*parts[:-1], _output_stem(shard, parts[-1]) + ".parquet")


def _refuse_target(target: Path, shard: Shard, inputs: dict[Path, str]) -> str | None:
    """Why ``shard``'s output may not be written at ``target``, or None: it would replace an input of
    this run, sit beside a tar (or files folder) as its img2dataset sidecar, or replace a file that
    curator did not write. A file that cannot be told (a truncated or empty parquet) may be replaced."""
    resolved = target.resolve()
    if resolved in inputs:
        return f"the output of {shard.name!r} would overwrite the input {inputs[resolved]}; choose another --output"
    stem = target.name[: -len(".parquet")]
    for suffix in TAR_SUFFIXES:
        beside = target.parent / f"{stem}{suffix}"
        if os.path.lexists(beside):
            return (f"the output of {shard.name!r} would be {valid_text(str(target))!r}, img2dataset's sidecar "
                    f"name for {valid_text(str(beside))!r} beside it; choose another --output")
    if (target.parent / stem).is_dir() and is_files_layout(target.parent / stem):
        return (f"the output of {shard.name!r} would be {valid_text(str(target))!r}, the sidecar of the "
                f"img2dataset folder beside it; choose another --output")
    if not os.path.lexists(target):
        return None
    kind = file_kind(target)
    if kind != "file" or os.path.islink(target):
        return f"the output of {shard.name!r} would replace {valid_text(str(target))!r}, which is no plain file"
    try:
        with open(target, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return f"cannot read {valid_text(str(target))!r}: {exc.strerror or exc}"
    if (head and head != b"PAR1") or (footer_has_manifest(target) is False and not manifest_path(target).is_file()):
        return (f"the output of {shard.name!r} would replace {valid_text(str(target))!r}, which curator did not "
                "write (no curator.manifest); move it or choose another --output")
    return None


def output_paths(shards: list[Shard], output_dir: Path) -> dict[Shard, Path]:
    """Map each shard to its parquet file: ``output_dir`` / :func:`relative_output`.

    A shard's output path depends only on its own path and the INPUT argument that named it, so adding
    shards never moves the outputs of others. ``in/a/00001.tar`` of INPUT ``in/`` -> ``OUT/a/00001.parquet``;
    a folder shard ``imgs/cats`` -> ``OUT/.../cats.parquet`` (``cats.images.parquet`` if there is a
    ``cats.tar`` or ``cats.parquet`` beside it). Paths always stay inside ``output_dir``; two shards
    that would collide, or an output that would replace an input, a sidecar or a file curator did not
    write, are an error (:class:`ShardError`).
    """
    if not shards:
        return {}
    result: dict[Shard, Path] = {}
    taken: dict[Path, Shard] = {}
    out_root = output_dir.resolve()
    inputs = {s.path.resolve(): repr(s.name) for s in shards if s.format in ("tar", "parquet")}
    for shard in shards:
        sidecar = sidecar_parquet(shard.path) if shard.format in ("tar", "files") else None
        if sidecar is not None:
            inputs.setdefault(sidecar.resolve(), f"{valid_text(str(sidecar))!r} (img2dataset's sidecar of {shard.name!r})")
    for shard in shards:
        target = out_root / relative_output(shard)
        if out_root not in target.parents:
            raise ShardError(f"shard {shard.name!r} would be written outside {output_dir}")
        if target in taken:
            raise ShardError(
                f"shards {taken[target].name!r} and {shard.name!r} would both be written to "
                f"{valid_text(str(target))} (outputs are named relative to the INPUT that names each shard)"
            )
        reason = _refuse_target(target, shard, inputs)
        if reason:
            raise ShardError(reason)
        taken[target] = shard
        result[shard] = target
    return result
