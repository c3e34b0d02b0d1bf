"""``python -m curator_cli.cli``: the same as the ``curator`` command."""

from curator_cli.cli import run

run()
