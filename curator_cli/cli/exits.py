"""What every command shares: the documented exit statuses and the one-line usage error."""

from __future__ import annotations

import click

EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


class UsageError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = EXIT_USAGE
