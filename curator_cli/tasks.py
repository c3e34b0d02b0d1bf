"""Tasks that flow between stages: NeMo Curator's ``Task``, ``ImageObject`` and ``ImageBatch``.

Field names and defaults match ``nemo_curator.tasks`` so a stage written for NeMo Curator
runs here with only its import lines changed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class Task(ABC, Generic[T]):
    """A unit of work handed from stage to stage.

    ``task_id`` is assigned by the runner (``<shard>:<batch index>``), never by the constructor.
    """

    dataset_name: str
    data: T
    _stage_perf: list[Any] = field(default_factory=list)
    _metadata: dict[str, Any] = field(default_factory=dict)
    task_id: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.validate()

    @property
    @abstractmethod
    def num_items(self) -> int:
        """Number of items this task carries."""

    def add_stage_perf(self, perf_stats: Any) -> None:
        self._stage_perf.append(perf_stats)

    def validate(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id!r}, dataset_name={self.dataset_name!r})"


@dataclass
class ImageObject:
    """One image: identity, decoded pixels and what the stages computed for it."""

    image_path: str = ""
    image_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image_data: np.ndarray | None = None  # H x W x 3, uint8, RGB
    embedding: np.ndarray | None = None
    aesthetic_score: float | None = None
    nsfw_score: float | None = None


@dataclass
class ImageBatch(Task[list[ImageObject]]):
    """A batch of images: the task every image stage receives and returns."""

    dataset_name: str = ""
    data: list[ImageObject] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.data)


def to_vector(value: Any) -> np.ndarray:
    """A stage's embedding (numpy array, torch tensor or sequence) as a 1-D float32 numpy array."""
    if type(value) is np.ndarray and value.dtype == np.float32 and value.ndim == 1:  # the usual case, as it is
        return value
    if hasattr(value, "detach"):  # torch.Tensor, on any device and dtype
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32).reshape(-1)
