"""``curator stages``: the stages ``--stage`` can name."""

from __future__ import annotations

import click

from curator_cli.cli.exits import UsageError


@click.command()
@click.argument("name", required=False, metavar="[NAME]")
def stages(name) -> None:
    """List the stages --stage can name, with a one-line description and their arguments.

    NAME (a registered name, module:Class or path/to/file.py:Class) shows one stage in full.

    \b
    Examples:
      curator stages
      curator stages torchvision
    """
    from curator_cli.loading.catalog import find_stage, format_list, format_one, list_stages
    from curator_cli.loading.specs import StageSpecError

    if name is None:
        click.echo(format_list(list_stages()))
        return
    try:
        info = find_stage(name)
    except StageSpecError as exc:
        raise UsageError(str(exc)) from None
    click.echo(format_one(info))
