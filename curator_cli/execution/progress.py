"""What a run shows while it goes: one progress bar on stderr (when it is a terminal) and one line
per failing shard, on the bar's line or stderr, and in the log.

The bar has a total, known before anything is decoded (``io.totals``: footers, img2dataset
sidecars, listings, else the tars' sizes), so it shows a percentage and the time left. An estimated
total is written ``~N`` and refined as shards finish: each finished shard counts with the rows it
wrote, and the shards still estimated are scaled with the rows per byte the finished estimated ones
showed (:class:`RunningTotal`).

When the bar is off (stderr is not a terminal, or ``-q``), a heartbeat takes its place: one status
line in the log (logger ``curator``, i.e. ``--log-file``) every :data:`HEARTBEAT_S` seconds, with the
images done of the total, the shards, the rate, the time left, and what the run is waiting on, so
that a run that is slow or stuck says so where cron and batch jobs look.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from curator_cli.io.totals import SampleCounts

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


def progress_bar(enabled: bool, shards: int, expected: SampleCounts | None = None) -> Any:
    """A bar counting images on stderr, towards ``expected`` (the rows of the shards, in the order
    they are run) when given; when not ``enabled``, a :class:`Heartbeat` with the same methods
    (``update``, ``shards_done``, ``write``, ``close``) that logs instead."""
    if not enabled:
        return Heartbeat(shards, expected=expected)
    return Bar(shards, expected)


class RunningTotal:
    """The images a run will have written when it ends, refined as its shards finish.

    Shards finish in the order they were counted (the local executor runs them in that order; the
    Ray executor's order differs, and there the refinement is an approximation of the same kind).
    A finished shard counts with the rows it wrote; one still to come with its exact count, or,
    estimated, with its size times the rows per byte of the estimated shards finished so far (the
    first estimate until one has)."""

    def __init__(self, expected: SampleCounts | None) -> None:
        self.counts = list(expected.counts) if expected is not None else None
        self.finished = 0
        self._images_then = 0  # images when the last shard finished
        self._estimated_rows = 0  # rows and bytes of the finished shards whose count was an estimate
        self._estimated_bytes = 0
        self._expected, self._exact = self._expect()

    def shard_finished(self, images: int) -> None:
        """One more shard finished, ``images`` written by the run so far (its rows included)."""
        if self.counts is not None and self.finished < len(self.counts) and not self.counts[self.finished].exact:
            self._estimated_rows += images - self._images_then
            self._estimated_bytes += self.counts[self.finished].size
        self.finished += 1
        self._images_then = images
        self._expected, self._exact = self._expect()

    def _expect(self) -> tuple[int | None, bool]:
        """(images at the end, exact?) as of the last finished shard: once per shard, not per batch."""
        if self.counts is None:
            return None, False
        remaining = self.counts[self.finished:]
        ratio = self._estimated_rows / self._estimated_bytes if self._estimated_bytes else None
        expected = self._images_then + sum(
            c.samples if c.exact or ratio is None else round(c.size * ratio) for c in remaining)
        return expected, all(c.exact for c in remaining)

    def total(self, images: int) -> tuple[int | None, bool]:
        """(expected images, whether that is exact), ``images`` being those written so far; (None,
        False) when the run was given no counts. Never below ``images``; once every shard counted
        has finished, ``images`` itself."""
        if self._expected is None or self.counts is None:
            return None, False
        if self.finished >= len(self.counts):
            return images, True
        return max(self._expected, images), self._exact

    def shards_done(self, done: int, images: int) -> None:
        """``done`` shards finished so far (each one past :attr:`finished` counted now), ``images``
        written by the run."""
        for _ in range(done - self.finished):
            self.shard_finished(images)


def format_seconds(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``: a time left, short."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


_BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{about}{total_fmt} "
               "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


class Bar:
    """The tqdm bar on stderr: images written, of the :class:`RunningTotal` (``~`` while it is an
    estimate), with tqdm's percentage, rate and time left; a count alone when there is no total."""

    def __init__(self, shards: int, expected: SampleCounts | None = None, file: Any = None) -> None:
        from tqdm import tqdm

        self.running = RunningTotal(expected)
        total, exact = self.running.total(0)
        total = total or None  # nothing counted (say, every shard unreadable): a count alone
        self._exact = exact
        self.tqdm = tqdm(total=total, unit="img", file=file or sys.stderr, dynamic_ncols=True, desc="embedding",
                         postfix=f"shards 0/{shards}",
                         **({"bar_format": self._format(exact)} if total is not None else {}))

    @staticmethod
    def _format(exact: bool) -> str:
        return _BAR_FORMAT.replace("{about}", "" if exact else "~")

    def update(self, n: int = 1) -> None:
        self._retotal(self.tqdm.n + n)  # before tqdm draws the new count
        self.tqdm.update(n)

    def shards_done(self, done: int, shards: int) -> None:
        """``done`` of the run's ``shards`` finished: the postfix, and the total refined."""
        self.running.shards_done(done, self.tqdm.n)
        self._retotal(self.tqdm.n)
        self.tqdm.set_postfix_str(f"shards {done}/{shards}")

    def _retotal(self, images: int) -> None:
        """Give tqdm the running total for ``images`` done (drawn at its next refresh)."""
        total, exact = self.running.total(images)
        if not total or self.tqdm.total is None or (total == self.tqdm.total and exact == self._exact):
            return
        self.tqdm.total = total
        if exact != self._exact:
            self._exact = exact
            self.tqdm.bar_format = self._format(exact)

    def write(self, line: str, file: Any = None) -> None:
        self.tqdm.write(line, file=file or sys.stderr)

    def close(self) -> None:
        self.tqdm.close()


class Heartbeat:
    """The bar's stand-in when it is off: counts what the bar would show and logs it, one line every
    :func:`heartbeat_seconds`, from a daemon thread (started here: create it after the decode
    workers are forked). ``activity``, when set, says what the run is waiting on."""

    def __init__(self, shards: int, interval: float | None = None, expected: SampleCounts | None = None) -> None:
        self.images = 0
        self.postfix = f"shards 0/{shards}"
        self.running = RunningTotal(expected)
        self.activity: Callable[[], str] | None = None
        self.interval = interval or heartbeat_seconds()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="curator-heartbeat", daemon=True)
        self._thread.start()

    def update(self, n: int = 1) -> None:
        self.images += n

    def shards_done(self, done: int, shards: int) -> None:
        """``done`` of the run's ``shards`` finished: the status line's, and the total refined."""
        self.running.shards_done(done, self.images)
        self.postfix = f"shards {done}/{shards}"

    def write(self, line: str, file: Any = None) -> None:
        print(line, file=file or sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def status(self) -> str:
        """``status: 1200 of ~5000 images (24%), shards 3/10, 40.1 images/s over 30s, 1m35s left;
        waiting on stage 'clip' (...)`` (``1200 images, ...`` when there is no total)."""
        elapsed = time.monotonic() - self._started
        images = self.images
        rate = images / elapsed if elapsed > 0 else 0.0
        total, exact = self.running.total(images)
        if total is None:
            done = f"{images} images"
        else:
            done = f"{images} of {'' if exact else '~'}{total} images ({100 * images / total if total else 100:.0f}%)"
        line = f"status: {done}, {self.postfix}, {rate:.1f} images/s over {elapsed:.0f}s"
        if total is not None:
            line += f", {format_seconds((total - images) / rate)} left" if rate > 0 else ", time left unknown"
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
