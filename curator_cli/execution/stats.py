"""What one worker (the local process, or one Ray actor) measured: where its time went, the error
kinds it wrote, and what it learned about the output (dimension, the batch size that fitted).
The run's :class:`~curator_cli.execution.summary.RunSummary` adds these up over its workers."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from curator_cli.io.writer import error_kind

TIME_FIELDS = ("seconds_setup", "seconds_read", "seconds_decode", "seconds_wait_input", "seconds_stages",
               "seconds_write")


@dataclass
class WorkerStats:
    """One worker's time split, error kinds and settings learned."""

    seconds_setup: float = 0.0  # the stages' setup (model load), while the first images decode
    seconds_read: float = 0.0
    seconds_decode: float = 0.0
    seconds_wait_input: float = 0.0
    seconds_stages: float = 0.0
    seconds_write: float = 0.0
    decode_workers_replaced: int = 0  # workers killed by a hanging or crashing image
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    embedding_dim: int | None = None
    stage_batch_size: int | None = None  # images per stage call that worked (smaller after CUDA OOM)
    # CPU seconds of the process running the pipeline (all its threads, not the decode worker
    # processes), less the stages' own calls: curator's cost in the one process every image passes
    main_cpu_seconds: float = 0.0
    # CPU seconds the decode workers spent decoding (reading the bytes included), summed over them
    decode_cpu_seconds: float = 0.0

    def count_error(self, error: str) -> None:
        kind = error_kind(error)
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1


def process_cpu_seconds() -> float:
    """CPU time (user + system) of this process's threads so far, not its children's."""
    return time.process_time()


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that is not known: the
    whole process as a cron job sees it, interpreter start-up and imports included."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
