"""The default stage: a perceptual embedding that needs no downloaded weights.

It describes how an image *looks*, not what it shows: the low-frequency structure of its
brightness (a continuous cousin of pHash: the 16 x 16 lowest 2-D DCT coefficients of a 64 x 64
grey thumbnail, DC dropped, weighted towards the lowest frequencies, which a crop or a resize
moves least) plus a 4 x 4 colour layout in YCbCr, L2-normalised: 303 dims. Cosine similarity
of two such vectors is high for the same picture resized, recompressed, lightly cropped or
colour-shifted, which makes it a good key for exact and near-duplicate detection. It knows nothing
about semantics: two different photos of cats are no closer than a cat and a car.

It runs on the run's device, in float32 whatever ``--precision`` says (its arithmetic is tiny),
and needs no more than 64 pixels on an image's shorter side (``decode_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from curator_cli.stages.runtime import device as run_device
from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.preprocess import stacked_by_shape
from curator_cli.tasks import ImageBatch
from curator_cli.stages.worker_metadata import WorkerMetadata

THUMB = 64
DCT_KEEP = 16
COLOUR_GRID = 4
EMBEDDING_DIM = DCT_KEEP * DCT_KEEP - 1 + COLOUR_GRID * COLOUR_GRID * 3  # 303
# Weight of DCT coefficient (u, v) is 1 / (1 + (u + v) / FREQUENCY_FALLOFF): on real photos this keeps
# 5%-cropped copies closer to their original while unrelated photos stay far apart.
FREQUENCY_FALLOFF = 8.0


def _frequency_weights() -> np.ndarray:
    """Per-coefficient weights of the kept DCT block, flattened, DC dropped."""
    u = np.arange(DCT_KEEP, dtype=np.float32)
    weights = 1.0 / (1.0 + (u[:, None] + u[None, :]) / FREQUENCY_FALLOFF)
    return weights.reshape(-1)[1:].astype(np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis as an n x n matrix (rows are frequencies)."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.astype(np.float32)


@dataclass
class PerceptualEmbeddingStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Weight-free perceptual embedding (DCT structure + colour layout) for near-duplicate search."""

    colour_weight: float = 0.35
    name: str = "perceptual_embedding"
    decode_size: int = THUMB

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        import torch

        self._device = torch.device(worker_metadata.device if worker_metadata else run_device())
        self._dct = torch.from_numpy(_dct_matrix(THUMB)[:DCT_KEEP]).to(self._device)
        self._weights = torch.from_numpy(_frequency_weights()).to(self._device)

    def teardown(self) -> None:
        self._dct = None
        self._weights = None

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def thumbnails(self, images: list[np.ndarray]) -> Any:  # -> torch.Tensor
        """H x W x 3 uint8 arrays -> (N, 64, 64, 3) float32 in [0, 1] on the device: box-filter
        (area) downscaling, images of equal shape together."""
        import torch
        import torch.nn.functional as F

        out = torch.empty((len(images), 3, THUMB, THUMB), dtype=torch.float32, device=self._device)
        for indices, pixels in stacked_by_shape(images, self._device):
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
            out[indices] = F.adaptive_avg_pool2d(x, (THUMB, THUMB))
        return out.permute(0, 2, 3, 1)

    def embed(self, thumbs: Any) -> np.ndarray:
        """(N, 64, 64, 3) thumbnails (uint8 array, or float tensor in [0, 1]) -> (N, EMBEDDING_DIM) unit vectors."""
        import torch

        if isinstance(thumbs, np.ndarray):
            thumbs = torch.from_numpy(thumbs).to(self._device, dtype=torch.float32) / 255.0
        x = thumbs
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cb = -0.168736 * r - 0.331264 * g + 0.5 * b
        cr = 0.5 * r - 0.418688 * g - 0.081312 * b
        coeffs = self._dct @ y @ self._dct.T  # (N, 16, 16) lowest frequencies
        structure = coeffs.reshape(len(x), -1)[:, 1:]  # drop DC: brightness shifts do not count
        structure = torch.sign(structure) * structure.abs().sqrt()  # tame the 1/f dominance of the lowest terms
        structure = structure * self._weights
        structure = torch.nn.functional.normalize(structure, dim=1)
        cells = THUMB // COLOUR_GRID
        layout = torch.stack([y - y.mean(dim=(1, 2), keepdim=True), cb, cr], dim=1)
        layout = torch.nn.functional.avg_pool2d(layout, cells).reshape(len(x), -1)
        layout = torch.nn.functional.normalize(layout, dim=1)
        combined = torch.cat([structure, self.colour_weight * layout], dim=1)
        return torch.nn.functional.normalize(combined, dim=1).cpu().numpy()

    def process(self, task: ImageBatch) -> ImageBatch:
        if not task.data:
            return task
        thumbs = self.thumbnails([obj.image_data for obj in task.data])
        for obj, vector in zip(task.data, self.embed(thumbs)):
            obj.embedding = vector
        return task
