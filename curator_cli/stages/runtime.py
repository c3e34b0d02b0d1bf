"""The one device and precision policy: which torch device a run uses, which precision, and how a
stage's forward pass applies it.

``--device`` is resolved here (:func:`resolve_device`), the default precision is chosen here
(:func:`default_precision`), and both reach a stage one way: ``worker_metadata.device`` and
``worker_metadata.extra["precision"]`` (``fp32``, ``bf16`` or ``fp16``). Stages keep their weights
in float32 and run the forward pass under :func:`autocast`, so the same stage object works for
every precision and the embeddings come back as float32. A stage that declares
``use_autocast = True`` gets the same context from the runner around its ``process``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from curator_cli.options import PRECISIONS
from curator_cli.stages.worker_metadata import WorkerMetadata

__all__ = ["PRECISIONS", "DeviceError", "autocast", "default_precision", "device", "precision_context",
           "resolve_device", "set_active_device", "stage_device", "stage_precision"]

_active_device: str | None = None


class DeviceError(ValueError):
    """A ``--device`` value that cannot be used on this machine."""


def resolve_device(spec: str = "auto") -> str:
    """Turn ``auto|cpu|cuda|cuda:N`` into a concrete device string, checking it exists."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise DeviceError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} requested but CUDA is not available on this machine")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return spec


def set_active_device(device_name: str) -> None:
    """Record the run's device so that :func:`device` returns it inside stages."""
    global _active_device
    _active_device = device_name


def device():  # -> torch.device
    """The torch device this run uses: what ``--device`` chose, else CUDA when available."""
    import torch

    return torch.device(_active_device or resolve_device("auto"))


def default_precision(device_name: str) -> str:
    """bf16 on CUDA; on the CPU bf16 only where it has native bf16 instructions, else fp32."""
    if device_name.startswith("cuda"):
        return "bf16"
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
        return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"
    except OSError:
        return "fp32"


def stage_device(worker_metadata: WorkerMetadata | None) -> Any:  # -> torch.device
    """The torch device the runner chose for this worker (``curator_cli.device()`` outside a run)."""
    import torch

    if worker_metadata is not None and worker_metadata.device:
        return torch.device(worker_metadata.device)
    return device()


def stage_precision(worker_metadata: WorkerMetadata | None) -> str:
    """The run's ``--precision`` (fp32 when the runner did not say); ValueError for an unknown one."""
    precision = "fp32"
    if worker_metadata is not None:
        precision = str(worker_metadata.extra.get("precision", "fp32") or "fp32").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    return precision


def precision_context(device_name: Any, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``precision`` on the device's type; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device_name).type, dtype=dtype)


@contextlib.contextmanager
def autocast(device_name: Any, precision: str) -> Iterator[None]:
    """``torch.inference_mode`` plus, for bf16/fp16, ``torch.autocast`` on the device's type."""
    import torch

    with torch.inference_mode(), precision_context(device_name, precision):
        yield
