"""One output directory, one writer: a lock file holding the host and pid of the run that owns it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

LOCK_FILE = "_curator.lock"


class LockedError(RuntimeError):
    """Another live ``curator embed`` writes to the same output directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Held for the whole run; a lock left by a dead process on this host is taken over."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # vanished, or half-written by a process killed while writing it
                    try:
                        if time.time() - self.path.stat().st_mtime > 5:
                            self.path.unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass
                    time.sleep(0.1)
                    continue
                host, pid = owner
                if host == socket.gethostname() and not _alive(pid):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise LockedError(
                    f"output directory {self.path.parent} is in use by curator (pid {pid} on {host}); "
                    f"if that run is gone, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
            self.held = True
            return
        raise LockedError(f"could not take the lock {self.path}")

    def _owner(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner and owner[1] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
