"""One output directory, one writer: a lock file holding the host and pid of the run that owns it.

How a lock is held, taken and taken over (``fcntl.flock`` on the lock file, Linux and macOS):

- **Held**: the run keeps the lock file open with an exclusive ``flock`` for its whole life. The
  kernel drops the ``flock`` when the process dies, however it dies, so on one host "is the owner
  alive" is a question the kernel answers, not a pid that may have been reused. Decode workers
  forked by the run close their copy (``os.register_at_fork``), so an orphaned worker never keeps a
  dead run's lock alive.
- **Taken**: the file is created under a unique temporary name, ``flock``-ed, written, and
  ``os.link``-ed to ``_curator.lock`` (fails if the name exists): the lock never exists without
  its content and its ``flock``, and two runs can never both create it.
- **Taken over**: a run that finds a lock file ``flock``s it (non-blocking). If that fails, a live
  run holds it: refused. If it succeeds, no run on this host holds it; the run checks that the name
  still names the file it locked (a releasing run unlinks it first), that the content names this
  host and no live process, and then rewrites the content in place while holding the ``flock``. Two
  runs that both find the same dead lock cannot both take it: the second one's ``flock`` fails.
- **Released**: the owner unlinks the file while still holding the ``flock``, then closes it.
- **Nested**: a lock covers the folder's subfolders. After taking its lock, a run looks for a live
  lock in every ancestor folder and every subfolder of its output directory, and gives its own back
  (refused) if it finds one; since each run looks only after its lock exists, of two runs starting
  together at least one sees the other.

Across hosts (NFS): ``os.link`` is atomic on NFS, so two hosts never both create the lock. A lock
naming another host is never taken over (its process cannot be checked from here): delete it by
hand once that run is known to be gone. The Linux NFS client maps ``flock`` to NFS byte-range
locks, which other hosts see where the server's locking works; with ``-o nolock`` or
``local_lock=flock`` they are local to each host, and only the "never take over another host's
lock" rule protects a live run on another host.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "_curator.lock"
_STALE_EMPTY_S = 5.0  # a lock file with no content older than this was left by a writer killed mid-way

_held_fds: set[int] = set()


def _close_in_child() -> None:
    """A forked child (a decode worker) must not keep its parent's lock alive after the parent dies."""
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class LockedError(RuntimeError):
    """Another live ``curator embed`` writes to the same output directory (or a folder above or below it)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_of(fd: int) -> tuple[str, int] | None:
    """The (host, pid) a lock file's content names, read through ``fd``; None if it names none."""
    try:
        host, pid = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _owner_text(owner: tuple[str, int] | None) -> str:
    return f"pid {owner[1]} on {owner[0]}" if owner else "another run"


def live_lock_owner(path: Path) -> tuple[str, int] | None:
    """The owner of the lock file ``path`` if a live run may hold it: one that holds its ``flock``, one
    on another host (which cannot be checked from here), or a live process on this host. None when
    there is no lock file or its run is gone. The probe takes a shared ``flock`` for an instant."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        owner = _owner_of(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return owner or ("?", 0)
        except OSError:
            pass  # a file system without flock: the content decides
        if owner is None:
            return None
        host, pid = owner
        if host != socket.gethostname() or (pid != os.getpid() and _alive(pid)):
            return owner
        return None
    finally:
        os.close(fd)


class OutputLock:
    """Held for the whole run; a lock left by a dead run on this host is taken over (see the module docstring)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self.held = False
        self._fd: int | None = None

    def _content(self) -> bytes:
        return f"{socket.gethostname()} {os.getpid()}\n".encode()

    def _create(self) -> int | None:
        """A new lock file, flocked and written before it gets its name; None if the name is taken."""
        temp = self.path.parent / f".{LOCK_FILE}.tmp-{os.getpid()}"
        temp.unlink(missing_ok=True)  # left by an earlier process with this pid
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        linked = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # a file system without flock: the link alone makes creation exclusive
            os.write(fd, self._content())
            os.fsync(fd)
            try:
                os.link(temp, self.path)
                linked = True
            except (FileExistsError, FileNotFoundError):  # taken; or our temporary was cleaned meanwhile
                pass
            except OSError:  # no hard links here (some FUSE/SMB mounts)
                linked = None
        finally:
            if not linked:
                os.close(fd)
            temp.unlink(missing_ok=True)
        if linked is None:
            return self._create_without_link()
        return fd if linked else None

    def _create_without_link(self) -> int | None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass
        os.write(fd, self._content())
        os.fsync(fd)
        return fd

    def _take_over(self) -> int | None:
        """The existing lock file, if its run is gone: flocked, then rewritten as ours. None: try again
        (it was released meanwhile). Raises :class:`LockedError` when a live run (or another host's) holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(self._in_use(_owner_of(fd))) from None
            except OSError:
                pass  # a file system without flock: the content decides, as before
            if not _same_file(fd, self.path):
                os.close(fd)
                return None  # released (unlinked) while we opened it: create a new one
            owner = _owner_of(fd)
            if owner is None:  # no content: a writer killed mid-way (or one writing now, on a file system without links)
                if time.time() - os.fstat(fd).st_mtime <= _STALE_EMPTY_S:
                    os.close(fd)
                    return None
            else:
                host, pid = owner
                if host != socket.gethostname():
                    raise LockedError(self._in_use(owner))
                if pid != os.getpid() and _alive(pid):  # a live process without the flock: an older curator
                    raise LockedError(self._in_use(owner))
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._content(), 0)
            os.fsync(fd)
            return fd
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise

    def _in_use(self, owner: tuple[str, int] | None) -> str:
        return (f"output directory {self.path.parent} is in use by curator ({_owner_text(owner)}); "
                f"if that run is gone, delete {self.path}")

    def _check_nested(self, below: bool = True) -> None:
        """A lock covers subfolders: refuse when a live run holds a lock in a folder above (or, with
        ``below``, under) ours."""
        mine = self.path.parent.resolve()
        for ancestor in mine.parents:
            owner = live_lock_owner(ancestor / LOCK_FILE)
            if owner is not None:
                raise LockedError(f"output directory {self.path.parent} is inside {ancestor}, which curator "
                                  f"({_owner_text(owner)}) is writing to; if that run is gone, "
                                  f"delete {ancestor / LOCK_FILE}")
        for dirpath, dirnames, filenames in os.walk(mine) if below else ():
            if dirpath != str(mine) and LOCK_FILE in filenames:
                owner = live_lock_owner(Path(dirpath) / LOCK_FILE)
                if owner is not None:
                    raise LockedError(f"output directory {self.path.parent} holds {dirpath}, which curator "
                                      f"({_owner_text(owner)}) is writing to; if that run is gone, "
                                      f"delete {Path(dirpath) / LOCK_FILE}")

    def acquire(self) -> None:
        self._check_nested(below=False)  # before creating anything inside another run's folder
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 2 * _STALE_EMPTY_S
        while True:
            fd = self._create()
            if fd is None:
                fd = self._take_over()
            if fd is not None:
                break
            if time.monotonic() > deadline:
                raise LockedError(f"could not take the lock {self.path}")
            time.sleep(0.05)
        self._fd = fd
        _held_fds.add(fd)
        self.held = True
        try:
            self._check_nested()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.held and self._fd is not None:
            fd, self._fd = self._fd, None
            _held_fds.discard(fd)
            try:
                if _owner_of(fd) == (socket.gethostname(), os.getpid()) and _same_file(fd, self.path):
                    self.path.unlink(missing_ok=True)  # still holding the flock: nobody takes it in between
            finally:
                os.close(fd)
        self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
