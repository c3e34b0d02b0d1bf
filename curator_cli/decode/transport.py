"""How decoded pixels reach the stages without the main process touching them: batch arenas.

Each batch being read, decoded or run gets an :class:`Arena`, a region of shared memory in
``/dev/shm`` owned by the main process. Decode workers write each picture's bytes straight into the
batch's arena (:class:`ArenaWriter`) and answer a whole job with one small message naming where
each image lies; the main process then holds *views* of the arena: no copy, no pickling of pixels,
no allocation per batch. On the tensor fast path every image is an S x S square, so the arena is
laid out as the batch's rows (N x S x S x 3, in input order) and the stage's uint8 tensor is the
arena itself.

A small ring of arenas (:class:`ArenaRing`) serves the batches in flight; an arena is reused only
once its batch has been run and every decode job writing into it has answered. Arenas are
allocated once and grown when a batch needs more room (full-size photos larger than seen so far),
never per batch. Where shared memory is short (a container's 64 MB default) nothing here is used:
pixels then travel through the workers' pipes as arrays.
"""

from __future__ import annotations

import glob
import math
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

SHM_DIR = "/dev/shm"
SHM_MIN_FREE = 2 << 30  # below this much free shared memory, pixels go through the pipe instead
ARENAS = 4  # batches with pixels at once: two read ahead, one in the stages, one being released
# (more with many decode workers: processor.read_ahead)


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


@dataclass(frozen=True)
class Place:
    """Where a decode job writes its pictures: ``arena`` (a file name) from byte ``offset`` on.
    With ``stride`` (the tensor path), image ``i`` of the batch goes at ``offset + i * stride`` and
    must be exactly ``stride`` bytes; without, images are packed one after another within
    ``capacity`` bytes. A picture that does not fit comes back through the pipe instead."""

    arena: str
    offset: int
    capacity: int
    stride: int = 0


class Arena:
    """One batch's pixels in shared memory (main-process side): created once, grown when needed;
    the stages get :meth:`view`\\ s of it. A view stays valid even after the arena is dropped (the
    mapping lives as long as any view of it)."""

    def __init__(self, prefix: str, number: int) -> None:
        self.prefix = prefix
        self.number = number
        self.generation = 0
        self.name = ""
        self.size = 0
        self._map: mmap.mmap | None = None
        self._bytes: np.ndarray | None = None  # the whole mapping as uint8: views are slices of it

    def ensure(self, size: int) -> bool:
        """At least ``size`` bytes (a new file when it must grow: workers map the new name); False
        when shared memory is short (the batch's pictures then come through the pipes). The file
        stays sparse: each worker allocates the pictures it writes (:class:`ArenaWriter`), so the
        pages are allocated and zeroed once, in parallel, by the workers, not by the main process
        (allocating a 256-image arena of 256 x 256 squares whole cost it ~10 ms: 4 arenas, 10 us per
        image of a 4,000-image run), and an arena sized for the largest photo seen holds only what
        is written."""
        if size <= self.size:
            return True
        self.drop()
        self.generation += 1
        self.name = f"{self.prefix}arena{self.number}-{self.generation}"
        # a file of this name can only be a dead run's whose pid this process now has (containers): ours now
        fd = os.open(self.name, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
            self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        except OSError:
            self.drop()
            return False
        finally:
            os.close(fd)
        self.size = size
        return True

    def view(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        """A writable uint8 array over ``shape`` bytes of the arena from ``offset`` (no copy)."""
        assert self._bytes is not None
        return self._bytes[offset:offset + math.prod(shape)].reshape(shape)

    def drop(self) -> None:
        """Delete the file; the memory goes once no view of it is left."""
        if self.name:
            try:
                os.unlink(self.name)
            except OSError:
                pass
        self._map = self._bytes = None  # closed by the garbage collector with its last view
        self.name, self.size = "", 0


class PixelBatch:
    """Where one batch's pixels go: an arena of the ring, handed out to its decode jobs piece by
    piece (:meth:`reserve`). Given back to the ring by :meth:`release` once the stages are done with
    it, but reused only after every job writing into it has answered."""

    def __init__(self, ring: ArenaRing, arena: Arena, stride: int, per_image: int) -> None:
        self.ring = ring
        self.arena = arena
        self.stride = stride  # bytes per image on the tensor path (rows of the batch), else 0
        self.per_image = per_image  # bytes reserved per image when packing pictures of any size
        self.used = 0
        self.rows = 0
        self._jobs_open = 0
        self._released = False
        self._lock = threading.Lock()

    def reserve(self, images: int) -> Place | None:
        """Room for ``images`` more pictures, or None when the arena is full (they use the pipe)."""
        room = images * (self.stride or self.per_image)
        if self.used + room > self.arena.size:
            return None
        place = Place(self.arena.name, self.used, room, self.stride)
        self.used += room
        self.rows += images if self.stride else 0
        with self._lock:
            self._jobs_open += 1
        return place

    def job_done(self) -> None:
        with self._lock:
            self._jobs_open -= 1
            free = self._released and self._jobs_open == 0
        if free:
            self.ring.give_back(self)

    def release(self) -> None:
        """The stages are done with this batch's pixels (its views must not be used any more)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            free = self._jobs_open == 0
        if free:
            self.ring.give_back(self)

    def rows_view(self, count: int, side: int) -> np.ndarray:
        """The first ``count`` rows of a tensor-path batch: ``count x side x side x 3``, no copy."""
        return self.arena.view(0, (count, side, side, 3))


class ArenaRing:
    """The arenas of the batches in flight (``count``), in shared memory under ``prefix``."""

    def __init__(self, prefix: str, count: int = ARENAS) -> None:
        self._free = [Arena(prefix, number) for number in range(count)]
        self._all = list(self._free)
        self._ready = threading.Condition()
        self.per_image = 0  # the largest picture seen when packing, in bytes
        self.short = False  # shared memory ran out: no arenas from here on

    def take(self, images: int, stride: int, guess: int, timeout: float) -> PixelBatch | None:
        """An arena for a batch of ``images``: rows of ``stride`` bytes, or packed pictures of about
        ``guess`` bytes each (the largest seen so far, if larger). None if none is free in time, or
        shared memory is short (then :attr:`short`)."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._free, timeout=timeout):
                return None
            arena = self._free.pop()
        per_image = 0 if stride else max(guess, self.per_image)
        if not arena.ensure(images * (stride or per_image)):
            self.short = True  # /dev/shm filled up: later batches use the pipes
            self.give_back_arena(arena)
            return None
        return PixelBatch(self, arena, stride, per_image)

    def saw(self, nbytes: int) -> None:
        """A picture of ``nbytes``: later batches reserve at least that much per image."""
        self.per_image = max(self.per_image, nbytes)

    def give_back(self, batch: PixelBatch) -> None:
        self.give_back_arena(batch.arena)

    def give_back_arena(self, arena: Arena) -> None:
        with self._ready:
            self._free.append(arena)
            self._ready.notify()

    def close(self) -> None:
        for arena in self._all:
            arena.drop()


class ArenaWriter:
    """A decode worker's side: maps each arena it is told to write into (once per arena file) and
    copies a picture's bytes into it."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[mmap.mmap, int]] = {}  # name -> (mapping, fd)

    def _open(self, name: str) -> tuple[mmap.mmap, int]:
        found = self._maps.get(name)
        if found is None:
            stale = [n for n in self._maps if n.rsplit("-", 1)[0] == name.rsplit("-", 1)[0]]
            for old in stale:  # an arena that grew: its old file is gone
                view, fd = self._maps.pop(old)
                view.close()
                os.close(fd)
            fd = os.open(name, os.O_RDWR)
            found = (mmap.mmap(fd, os.fstat(fd).st_size), fd)
            self._maps[name] = found
        return found

    def write(self, place: Place, offset: int, picture: Any) -> tuple[str, int, tuple[int, int, int]] | None:
        """Put ``picture`` (an RGB Pillow image) at ``offset`` of ``place``'s arena; its token
        ``("at", offset, shape)``, or None when it does not fit or the arena cannot be written."""
        width, height = picture.size
        size = width * height * 3
        if offset + size > place.offset + place.capacity or (place.stride and size != place.stride):
            return None
        try:
            view, fd = self._open(place.arena)
            os.posix_fallocate(fd, offset, size)  # arenas are sparse: ENOSPC here rather than SIGBUS on write
            view[offset:offset + size] = picture.tobytes()
        except (OSError, ValueError):
            return None
        return ("at", offset, (height, width, 3))

    def close(self) -> None:
        for view, fd in self._maps.values():
            view.close()
            os.close(fd)
        self._maps.clear()
