"""Where and how a built-in stage runs its model: the runner's device and ``--precision``.

The runner tells a stage its device in ``worker_metadata.device`` and the precision in
``worker_metadata.extra["precision"]`` (``fp32``, ``bf16`` or ``fp16``). Stages keep their weights in
float32 and run the forward pass under ``torch.autocast`` when the precision is not fp32, so the
same stage object works for every precision and the embeddings come back as float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from curator_cli.devices import device as run_device
from curator_cli.stages.worker_metadata import WorkerMetadata

PRECISIONS = ("fp32", "bf16", "fp16")


def stage_device(worker_metadata: WorkerMetadata | None) -> Any:  # -> torch.device
    """The torch device the runner chose for this worker (``curator_cli.device()`` outside a run)."""
    import torch

    if worker_metadata is not None and worker_metadata.device:
        return torch.device(worker_metadata.device)
    return run_device()


def stage_precision(worker_metadata: WorkerMetadata | None) -> str:
    """The run's ``--precision`` (fp32 when the runner did not say); ValueError for an unknown one."""
    precision = "fp32"
    if worker_metadata is not None:
        precision = str(worker_metadata.extra.get("precision", "fp32") or "fp32").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    return precision


@contextlib.contextmanager
def autocast(device: Any, precision: str) -> Iterator[None]:
    """``torch.inference_mode`` plus, for bf16/fp16, ``torch.autocast`` on the device's type."""
    import torch

    with torch.inference_mode():
        if precision == "fp32":
            yield
            return
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            yield
