"""Shared-memory hand-over of decoded pixels from decode workers to the parent: reusable buffers
in ``/dev/shm`` (no file creation, zeroing or page faulting per image), and clean-up of buffers
left by killed runs."""

from __future__ import annotations

import glob
import mmap
import os
from typing import Any

import numpy as np

JOBS_PER_WORKER = 2  # a buffer is reused this many jobs later, by when the parent has copied it out
SHM_DIR = "/dev/shm"
SHM_MIN_FREE = 2 << 30  # below this much free shared memory, pixels go through the pipe instead
SHM_MIN_BYTES = 256 << 10  # smaller images are cheaper to pickle through the pipe than to map


def shared_memory_usable() -> bool:
    """True on Linux with a roomy /dev/shm (container defaults of 64 MB are not)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= SHM_MIN_FREE


def shm_prefix(parent_pid: int) -> str:
    return os.path.join(SHM_DIR, f"curator-{parent_pid}-")


def remove_orphaned_shared_memory() -> None:
    """Delete pixel files left in /dev/shm by runs that were killed (their parent pid is gone)."""
    for path in glob.glob(os.path.join(SHM_DIR, "curator-*-*")):
        try:
            parent = int(os.path.basename(path).split("-")[1])
            os.kill(parent, 0)
        except ProcessLookupError:
            try:
                os.unlink(path)
            except OSError:
                pass
        except (ValueError, IndexError, PermissionError):
            continue


class SlotWriter:
    """A worker's side of the pixel hand-over: reusable shared-memory buffers, one per (job parity,
    position in job). A buffer is reused two jobs later, by when the parent has copied it out (it
    copies a job's pixels before it sends that worker another job), so there is no file creation,
    zeroing or page faulting per image."""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        self._maps: dict[str, tuple[mmap.mmap, int]] = {}

    def ship(self, array: np.ndarray, slot: str) -> Any:
        """``("slot", name, shape)`` once the pixels are in shared memory, else the array itself."""
        if self.prefix is None or array.nbytes < SHM_MIN_BYTES:
            return array
        name = f"{self.prefix}{os.getpid()}-{slot}"
        view, size = self._maps.get(name, (None, 0))
        if size < array.nbytes:
            size = max(array.nbytes, 2 * size)
            fd = os.open(name, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # ENOSPC here, rather than SIGBUS on write
                if view is not None:
                    view.close()
                view = mmap.mmap(fd, size)
            except OSError:
                self._maps.pop(name, None)
                return array
            finally:
                os.close(fd)
            self._maps[name] = (view, size)
        np.frombuffer(view, dtype=np.uint8, count=array.nbytes).reshape(array.shape)[...] = array
        return ("slot", name, array.shape)


class SlotReader:
    """The parent's side: maps each worker buffer once and copies the pixels out of it."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def receive(self, value: Any) -> Any:
        if not (isinstance(value, tuple) and value and value[0] == "slot"):
            return value
        _, name, shape = value
        count = int(np.prod(shape))
        view = self._maps.get(name)
        if view is None or len(view) < count:
            fd = os.open(name, os.O_RDONLY)
            try:
                if view is not None:
                    view.close()
                view = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            self._maps[name] = view
        return np.frombuffer(view, dtype=np.uint8, count=count).reshape(shape).copy()

    def close(self) -> None:
        """Unmap and delete the buffers (the worker is gone or going)."""
        for name, view in self._maps.items():
            view.close()
            try:
                os.unlink(name)
            except OSError:
                pass
        self._maps.clear()
