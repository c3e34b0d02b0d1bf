"""What every command shares: the documented exit statuses, the one-line usage error, Ctrl-C and
SIGTERM as one line and their statuses, the end-of-run summary, and the fast exit."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Protocol

import click

EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


class UsageError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = EXIT_USAGE


class Summary(Protocol):
    """What a command's end-of-run summary offers (``RunSummary``, ``DedupSummary``)."""

    def text(self) -> str: ...

    def write_json(self, path: Path) -> None: ...


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def stops_on_signals(command: str, kept: str) -> Iterator[None]:
    """Run the block with SIGTERM raised as :class:`Terminated` in the main thread, so that the
    cleanup of Ctrl-C runs for it too (locks released, temporaries removed); either then ends the
    command with one line saying the finished ``kept`` (shards, partitions) are kept, and exit
    status 130 or 143."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. embedded use): leave signals alone
        previous = None
    stopped = None
    try:
        yield
    except KeyboardInterrupt:
        stopped = ("interrupted", EXIT_SIGINT)
    except Terminated:
        stopped = ("terminated", EXIT_SIGTERM)
    finally:
        if previous is not None:  # back before the message: a second SIGTERM then just ends the process
            signal.signal(signal.SIGTERM, previous)
    if stopped is not None:
        click.echo(f"{command}: {stopped[0]}; finished {kept} are kept, rerun the same command to resume", err=True)
        sys.exit(stopped[1])


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def report_summary(summary: Summary, summary_json: Path | None, quiet: bool) -> None:
    """``--summary-json`` (a usage error, one line, when it cannot be written), then the summary on
    stderr unless ``--quiet``."""
    if summary_json:
        try:
            summary.write_json(summary_json)
        except OSError as exc:
            raise UsageError(f"cannot write --summary-json: {os_error_line(exc)}") from None
    if not quiet:
        click.echo(summary.text(), err=True)


def exit_now(code: object) -> NoReturn:
    """End the process with ``code`` (a ``SystemExit`` code) once the atexit handlers have run and
    stdout/stderr are flushed, without tearing the interpreter down: with torch and torchvision
    loaded, that teardown (freeing every module's objects, then the native libraries' destructors)
    took ~1.1 s of every run, after the last output was already committed. What the interpreter
    does before that still happens: non-daemon threads are waited for, the atexit handlers
    (logging's, multiprocessing's, Ray's, a stage's own) run, Python's and C's output buffers are
    flushed; only the freeing is skipped."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # as the interpreter does first: wait for non-daemon threads (a stage's own)
    atexit._run_exitfuncs()  # then the atexit handlers (neither call is in the modules' public API)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None when the command ran with that stream closed (`>&-`)
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (`curator show | head`) or stream
            pass
    try:  # what native libraries printed through C's stdio (os._exit does not flush it)
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
    os._exit(status)
