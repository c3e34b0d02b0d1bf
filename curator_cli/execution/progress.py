"""What a run shows while it goes: one progress bar on stderr (when it is a terminal) and one line
per failing shard, on the bar's line or stderr, and in the log."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("curator")


def progress_bar(enabled: bool, shards: int) -> Any:
    """A tqdm bar counting images; disabled (but callable) when ``enabled`` is false."""
    from tqdm import tqdm

    return tqdm(total=None, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                desc="embedding", postfix=f"shards 0/{shards}")


def report_failure(bar: Any, shard: str, reason: str) -> None:
    """One line for a failed shard: in the log, and on stderr without breaking the bar."""
    line = f"curator: shard {shard} failed: {reason}"
    log.error(line)
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)
