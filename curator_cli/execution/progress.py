"""What a run shows while it goes: one progress bar on stderr (when it is a terminal) and one line
per failing shard, on the bar's line or stderr, and in the log.

When the bar is off (stderr is not a terminal, or ``-q``), a heartbeat takes its place: one status
line in the log (logger ``curator``, i.e. ``--log-file``) every :data:`HEARTBEAT_S` seconds, with the
images and shards done, the rate, and what the run is waiting on, so that a run that is slow or
stuck says so where cron and batch jobs look.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("curator")

HEARTBEAT_S = 30.0  # seconds between status lines in the log when the bar is off
HEARTBEAT_ENV = "CURATOR_HEARTBEAT_S"  # overrides HEARTBEAT_S (tests, or a chattier log)


def heartbeat_seconds() -> float:
    """:data:`HEARTBEAT_S`, or ``$CURATOR_HEARTBEAT_S`` where that is a positive number."""
    try:
        value = float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S))
    except ValueError:
        return HEARTBEAT_S
    return value if value > 0 else HEARTBEAT_S


def progress_bar(enabled: bool, shards: int) -> Any:
    """A tqdm bar counting images on stderr; when not ``enabled``, a :class:`Heartbeat` with the
    same methods (``update``, ``set_postfix_str``, ``write``, ``close``) that logs instead."""
    if not enabled:
        return Heartbeat(shards)
    from tqdm import tqdm

    return tqdm(total=None, unit="img", file=sys.stderr, dynamic_ncols=True, desc="embedding",
                postfix=f"shards 0/{shards}")


class Heartbeat:
    """The bar's stand-in when it is off: counts what the bar would show and logs it, one line every
    :func:`heartbeat_seconds`, from a daemon thread (started here: create it after the decode
    workers are forked). ``activity``, when set, says what the run is waiting on."""

    def __init__(self, shards: int, interval: float | None = None) -> None:
        self.images = 0
        self.postfix = f"shards 0/{shards}"
        self.activity: Callable[[], str] | None = None
        self.interval = interval or heartbeat_seconds()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="curator-heartbeat", daemon=True)
        self._thread.start()

    def update(self, n: int = 1) -> None:
        self.images += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def write(self, line: str, file: Any = None) -> None:
        print(line, file=file or sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def status(self) -> str:
        """``status: 1200 images, shards 3/10, 40.1 images/s over 30s; waiting on stage 'clip' (...)``."""
        elapsed = time.monotonic() - self._started
        line = (f"status: {self.images} images, {self.postfix}, "
                f"{self.images / elapsed if elapsed > 0 else 0.0:.1f} images/s over {elapsed:.0f}s")
        try:
            doing = self.activity() if self.activity else None
        except Exception:  # the heartbeat must never be what fails
            doing = None
        return f"{line}; {doing}" if doing else line

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            log.info(self.status())


def set_activity(bar: Any, describe: Callable[[], str]) -> None:
    """Have the heartbeat (when the bar is off) say what the run is waiting on: ``describe()``."""
    if isinstance(bar, Heartbeat):
        bar.activity = describe


def report_failure(bar: Any, shard: str, reason: str) -> None:
    """One line for a failed shard: in the log, and on stderr without breaking the bar."""
    line = f"curator: shard {shard} failed: {reason}"
    log.error(line)
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)
