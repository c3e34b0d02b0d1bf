"""What the model-backed built-in stages share: batches of pixels through a torch model into embeddings."""

from __future__ import annotations

from typing import Any

from curator_cli.stages.runtime import autocast
from curator_cli.tasks import ImageBatch


class ModelEmbeddingMixin:
    """``process`` and the tensor fast path ``process_tensors`` for a stage that, in ``setup``, sets
    ``_preprocess`` (a :class:`~curator_cli.stages.preprocess.Preprocess`), ``_device``, ``_precision``
    and whatever ``_features(pixels)`` needs; ``batch_size`` images go through the model at a time."""

    normalize: bool = True

    def _features(self, pixels: Any) -> Any:  # -> torch.Tensor (N, D)
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def process(self, task: ImageBatch) -> ImageBatch:
        return self._embed(task, [obj.image_data for obj in task.data])

    def process_tensors(self, pixels: Any, task: ImageBatch) -> ImageBatch:
        """Tensor fast path: the decoders already cut ``decode_size`` squares (N x 3 x S x S uint8)."""
        return self._embed(task, list(pixels.permute(0, 2, 3, 1)))

    def _embed(self, task: ImageBatch, images: list[Any]) -> ImageBatch:
        import torch.nn.functional as F

        if not self._ready():
            raise RuntimeError(f"stage {self.name!r} used before setup()")
        for start in range(0, len(task.data), self.batch_size):
            chunk = task.data[start:start + self.batch_size]
            pixels = self._preprocess(images[start:start + self.batch_size], self._device)
            with autocast(self._device, self._precision):
                features = self._features(pixels)
            features = features.float().flatten(1)
            if self.normalize:
                features = F.normalize(features, dim=1)
            for obj, vector in zip(chunk, features.cpu().numpy()):
                obj.embedding = vector
        return task
