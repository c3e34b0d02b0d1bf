"""Choosing the torch device for a run, and telling stages about it."""

from __future__ import annotations

import re

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


def set_active_device(device: str) -> None:
    """Record the run's device so that :func:`device` returns it inside stages."""
    global _active_device
    _active_device = device


def device():  # -> torch.device
    """The torch device this run uses: what ``--device`` chose, else CUDA when available."""
    import torch

    return torch.device(_active_device or resolve_device("auto"))
