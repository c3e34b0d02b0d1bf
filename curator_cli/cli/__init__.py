"""The ``curator`` command line: ``embed``, ``dedup``, ``inspect``, ``show`` and ``stages``, one
module each; :func:`run` is the ``curator`` command."""

from __future__ import annotations

import click

from curator_cli import __version__
from curator_cli.cli.dedup import dedup
from curator_cli.cli.embed import embed
from curator_cli.cli.exits import exit_now
from curator_cli.cli.inspect import inspect
from curator_cli.cli.show import show
from curator_cli.cli.stages import stages


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="curator")
def main() -> None:
    """Batch image embeddings over sharded datasets.

    Point it at WebDataset tar shards, parquet files with image bytes, or folders of images;
    name the embedding stage to run; get one parquet file of embeddings per shard.

    \b
    Examples:
      curator embed shards/ -o embeddings/
      curator embed 'shards/{00000..00099}.tar' -o out/ --stage my_stages.py:MyStage --stage-arg model_path=m.pt
      curator inspect shards/
      curator show embeddings/
      curator stages
    """


for _command in (embed, dedup, inspect, show, stages):
    main.add_command(_command)


def run() -> None:
    """The ``curator`` command: :func:`main`, then a fast exit (:func:`~curator_cli.cli.exits.exit_now`).
    An unexpected exception still ends the normal way, with its traceback."""
    try:
        main()  # click's standalone mode: always ends in SystemExit
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)
