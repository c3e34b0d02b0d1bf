"""What the runner tells a stage about where it runs (NeMo Curator's ``NodeInfo``/``WorkerMetadata``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeInfo:
    """The machine a group of workers runs on."""

    node_id: str = "local"


@dataclass
class WorkerMetadata:
    """One worker: its id, the torch device it should use, and backend-specific allocation."""

    worker_id: str = "local-0"
    device: str = "cpu"
    allocation: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
