"""What every command shares: the documented exit statuses and the one-line usage error."""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

import click

EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


class UsageError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = EXIT_USAGE


def exit_now(code: object) -> NoReturn:
    """End the process with ``code`` (a ``SystemExit`` code) once the atexit handlers have run and
    stdout/stderr are flushed, without tearing the interpreter down: with torch and torchvision
    loaded, that teardown (freeing every module's objects, then the native libraries' destructors)
    took ~1.1 s of every run, after the last output was already committed. The handlers
    (logging's, multiprocessing's, Ray's) still run; only the freeing is skipped."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # what the interpreter would run at exit; not in atexit's public API
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`curator show | head`) or stream
            pass
    os._exit(status)
