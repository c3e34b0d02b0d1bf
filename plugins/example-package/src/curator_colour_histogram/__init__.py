"""An example plugin stage: a joint RGB colour histogram as the embedding.

Published by this package's ``pyproject.toml`` under the ``curator.stages`` entry-point group as
``colour-histogram``. It needs no weights: each image becomes the square roots of its
``bins``^3 RGB histogram frequencies (so the vector has unit length), computed with torch on
the run's device. Good for "find images with the same colours", nothing more.
"""

from dataclasses import dataclass

import numpy as np
import torch

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.runtime import stage_device
from curator_cli.tasks import ImageBatch


@dataclass
class ColourHistogramStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Joint RGB colour histogram (bins^3 dims, square-rooted so it has unit length)."""

    bins: int = 4
    name: str = "colour_histogram"
    decode_size: int = 64  # colours do not need more pixels than this

    def __post_init__(self):
        if not 2 <= self.bins <= 16:
            raise ValueError("bins must be between 2 and 16")

    def setup(self, worker_metadata=None):
        self.device = stage_device(worker_metadata)

    def outputs(self):
        return ["data"], ["embedding"]

    def process(self, task: ImageBatch) -> ImageBatch:
        for obj in task.data:
            pixels = torch.from_numpy(np.ascontiguousarray(obj.image_data)).to(self.device).reshape(-1, 3)
            levels = pixels.long() * self.bins // 256  # 0 .. bins-1 per channel
            cells = (levels[:, 0] * self.bins + levels[:, 1]) * self.bins + levels[:, 2]
            counts = torch.bincount(cells, minlength=self.bins ** 3).float()
            obj.embedding = (counts / counts.sum()).sqrt().cpu().numpy()
        return task
