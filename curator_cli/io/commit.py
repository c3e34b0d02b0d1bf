"""Atomic commits of output files: the one place that knows how a file reaches its final name.

A file is written under a hidden temporary name beside its final path (``.NAME.tmp-PID``),
fsynced, renamed into place, and its directory fsynced: a file under its final name is always
whole. A run killed mid-write leaves only such temporaries, which :func:`clean_stale_temporaries`
removes at the start of the next run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from curator_cli.io.lock import LOCK_FILE, live_lock_owner

TEMP_GLOB = ".*.tmp-*"  # every name temp_path() gives, whatever the process id
_TEMP_NAME = re.compile(r"\..+\.tmp-\d+")  # what temp_path() gives, exactly


def temp_path(final_path: Path) -> Path:
    """The hidden temporary name ``final_path`` is written under by this process."""
    return final_path.parent / f".{final_path.name}.tmp-{os.getpid()}"


def is_hidden(name: str) -> bool:
    """Whether a name in an output directory is not a finished output: a temporary (``.NAME.tmp-PID``),
    another hidden file, or a ``_`` file (``_SUCCESS``, an older version's sidecar manifest)."""
    return name.startswith((".", "_"))


def output_files(output_dir: Path) -> list[Path]:
    """The finished parquet files of an output directory, in name order (temporary and hidden files,
    and those in hidden folders, skipped)."""
    return sorted(
        p for p in output_dir.rglob("*.parquet")
        if not any(is_hidden(part) for part in p.relative_to(output_dir).parts)
    )


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a file system that cannot fsync a directory is let be."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(temp: Path) -> None:
    try:
        temp.unlink(missing_ok=True)
    except OSError:
        pass


def commit(temp: Path, final_path: Path, sync_dir: bool = False) -> None:
    """Move the complete file ``temp`` to ``final_path``: fsync, rename, and with ``sync_dir`` fsync the directory.

    If the fsync or the rename fails (a full disk, an I/O error), ``temp`` is removed before the
    error goes on: a failed commit leaves neither a final file nor a temporary."""
    try:
        fsync_file(temp)
        os.replace(temp, final_path)
    except BaseException:
        _discard(temp)
        raise
    if sync_dir:
        fsync_dir(final_path.parent)


def write_atomic(path: Path, text: str, sync_dir: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file, as :func:`commit` moves it into place;
    if anything fails, the temporary is removed and the error goes on."""
    temp = temp_path(path)
    try:
        with open(temp, "w") as handle:
            handle.write(text)
    except BaseException:
        _discard(temp)
        raise
    commit(temp, path, sync_dir=sync_dir)


def clean_stale_temporaries(output_dir: Path) -> int:
    """Remove temporary files left by a killed run (hidden ``.NAME.tmp-PID`` files) under ``output_dir``.

    A subfolder holding the live ``_curator.lock`` of another run is that run's: it is not entered
    (:func:`~curator_cli.io.lock.live_lock_owner`), so its temporaries in progress are left alone."""
    removed = 0
    if not output_dir.is_dir():
        return 0
    for dirpath, dirnames, filenames in os.walk(output_dir):
        here = Path(dirpath)
        if here != output_dir and LOCK_FILE in filenames and live_lock_owner(here / LOCK_FILE) is not None:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
        for name in filenames:
            if _TEMP_NAME.fullmatch(name):
                (here / name).unlink(missing_ok=True)
                removed += 1
    return removed
