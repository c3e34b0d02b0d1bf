"""What the model-backed built-in stages share: batches of pixels through a torch model into embeddings."""

from __future__ import annotations

from typing import Any

from curator_cli.stages.runtime import autocast
from curator_cli.tasks import ImageBatch


class ModelEmbeddingMixin:
    """``process``, the tensor fast path ``process_tensors`` and ``teardown`` for a stage that, in
    ``setup``, sets ``_model``, ``_preprocess`` (a :class:`~curator_cli.stages.preprocess.Preprocess`),
    ``_device`` and ``_precision``; ``batch_size`` images go through the model at a time."""

    normalize: bool = True
    _model: Any = None

    def _features(self, pixels: Any) -> Any:  # -> torch.Tensor (N, D)
        return self._model(pixels)

    def teardown(self) -> None:
        import torch

        self._model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def process(self, task: ImageBatch) -> ImageBatch:
        return self._embed(task, [obj.image_data for obj in task.data])

    def process_tensors(self, pixels: Any, task: ImageBatch) -> ImageBatch:
        """Tensor fast path: the decoders already cut ``decode_size`` squares (N x 3 x S x S uint8),
        which go to the device as one tensor (never split into images and stacked again)."""
        return self._embed(task, pixels.permute(0, 2, 3, 1))

    def _embed(self, task: ImageBatch, images: list[Any] | Any) -> ImageBatch:
        """``images``: H x W x 3 arrays, or one N x H x W x 3 uint8 tensor."""
        import torch.nn.functional as F

        if self._model is None:
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
