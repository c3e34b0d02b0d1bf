"""The two stages the benchmark runs, written as ordinary curator (NeMo Curator-style) stages.

- :class:`MeanPixelStage`: embedding = per-channel mean of the pixels (3-d). Almost no compute,
  so a run is bound by reading and decoding: it measures the pipeline, not the model.
- :class:`ResNet18Stage`: torchvision resnet18 with fixed random weights (seeded init, eval mode;
  nothing is downloaded), the classic ImageNet preprocessing (resize the shorter side to 224,
  center crop 224 x 224, ImageNet mean/std), embedding = the 512-d pooled features. On a CPU
  it is bound by the model.

Every system in the benchmark (the how-to loop, Ray Data, ``curator embed``) calls these same
classes, so the model code and the preprocessing are identical across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageStat

from curator_cli.stages.base import ProcessingStage
from curator_cli.tasks import ImageBatch
from curator_cli.stages.worker_metadata import WorkerMetadata

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MeanPixelStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Embedding = mean R, G, B of the image (float32, 3-d): the cheapest possible stage.

    It declares no ``decode_size``, so it gets full-size images like any NeMo Curator stage:
    the run then measures full-resolution decode. (A mean needs no resolution: declaring a small
    ``decode_size`` would be legitimate, and faster for a size-aware decoder.)
    """

    name: str = "mean_pixel"

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def process(self, task: ImageBatch) -> ImageBatch:
        for obj in task.data:
            obj.embedding = channel_means(obj.image_data)
        return task


@dataclass
class CentrePixelStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Embedding = the centre pixel's R, G, B (float32): truly near-free on any image size, a plain
    ``process()`` stage on full-size images. :class:`MeanPixelStage`'s histogram costs ~1 ms per
    640 x 480 image, so on a 16-core GPU machine that stage, not curator, capped a worker-scaling run
    near 700 images/s; this one leaves the run bound by reading, decoding and the transport."""

    name: str = "centre_pixel"

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def process(self, task: ImageBatch) -> ImageBatch:
        for obj in task.data:
            height, width = obj.image_data.shape[:2]
            obj.embedding = obj.image_data[height // 2, width // 2].astype(np.float32)
        return task


@dataclass
class MeanPixelSmallStage(MeanPixelStage):
    """:class:`MeanPixelStage` declaring ``decode_size = 32``: a mean needs no resolution.

    A JPEG decoded with DCT scaling at 1/8 is made of the 8 x 8 block means, so its channel means
    match the full-size ones to within about 0.5 (of 255) on the bench images. Only a size-aware
    decoder (curator) can take advantage; the how-to loop and Ray decode full size regardless.
    """

    decode_size: ClassVar[int] = 32
    name: str = "mean_pixel_small"


@dataclass
class MeanPixel256Stage(MeanPixelStage):
    """:class:`MeanPixelStage` (a plain ``process()`` stage on numpy ``image_data``) declaring
    ``decode_size = 256``: what curator costs per image on that path, at the size img2dataset writes."""

    decode_size: ClassVar[int] = 256
    name: str = "mean_pixel_256"


@dataclass
class MeanTensorStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Near-free stage on the tensor fast path: ``decode_size = 256`` squares arrive as one
    N x 3 x 256 x 256 uint8 tensor, and the embedding is each image's centre pixel. Measures what
    curator itself costs per image on that path (its main-process CPU): the stage reads 3 bytes of
    each image, so neither its compute nor torch's own threads weigh in."""

    decode_size: ClassVar[int] = 256
    name: str = "mean_tensor"

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def process(self, task: ImageBatch) -> ImageBatch:
        for obj in task.data:
            obj.embedding = channel_means(obj.image_data)
        return task

    def process_tensors(self, pixels, task: ImageBatch) -> ImageBatch:
        side = pixels.shape[-1]
        centres = pixels[:, :, side // 2, side // 2].float().cpu().numpy()
        for obj, vector in zip(task.data, centres):
            obj.embedding = vector
        return task


@dataclass
class MeanTensor224Stage(MeanTensorStage):
    """:class:`MeanTensorStage` at ``decode_size = 224``: the decode workers' cost per image at the
    size the single-core ceiling (``Image.draft`` + resize to 224) is measured at."""

    decode_size: ClassVar[int] = 224
    name: str = "mean_tensor_224"


def channel_means(image: np.ndarray) -> np.ndarray:
    """Exact per-channel mean of an H x W x 3 uint8 image, as float32.

    Uses Pillow's C histogram (``ImageStat``): about 10x faster than ``image.mean(axis=(0, 1))``,
    whose strided float64 reduction costs more than decoding the JPEG did, which would make
    this "trivial" stage anything but.
    """
    return np.asarray(ImageStat.Stat(Image.fromarray(image)).mean, dtype=np.float32)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), then crop the central ``size`` x ``size``."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    picture = Image.fromarray(image)
    if (new_w, new_h) != (width, height):
        picture = picture.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(picture.crop((left, top, left + size, top + size)))


@dataclass
class ResNet18Stage(ProcessingStage[ImageBatch, ImageBatch]):
    """torchvision resnet18, seeded random weights, 512-d pooled features per image.

    ``decode_size = 224``: the shorter side the preprocessing resizes to, so a size-aware decoder
    may hand this stage images scaled down to no less than 224 on the shorter side.
    """

    decode_size: ClassVar[int] = 224
    seed: int = 0
    model_batch: int = 64
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    name: str = "resnet18_random"

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        import torch
        import torchvision

        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        model = torchvision.models.resnet18(weights=None)
        model.fc = torch.nn.Identity()
        self._device = torch.device(worker_metadata.device if worker_metadata else "cpu")
        self._model = model.eval().to(self._device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self._device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=self._device).view(1, 3, 1, 1) * 255.0

    def teardown(self) -> None:
        self._model = None

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """H x W x 3 uint8 images of any size -> one (N, 224, 224, 3) uint8 array."""
        return np.stack([resize_center_crop(image, self.decode_size) for image in images])

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) uint8 -> (N, 512) float32 features, in chunks of ``model_batch``."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.model_batch):
                chunk = torch.from_numpy(pixels[start:start + self.model_batch]).to(self._device)
                x = (chunk.permute(0, 3, 1, 2).float() - self._mean) / self._std
                out.append(self.forward(x))
        return np.concatenate(out) if out else np.zeros((0, 512), np.float32)

    def forward(self, x) -> np.ndarray:
        """The model alone: a normalised (N, 3, 224, 224) float tensor -> (N, 512) float32 numpy."""
        import torch

        with torch.inference_mode():
            return self._model(x).float().cpu().numpy()

    def process(self, task: ImageBatch) -> ImageBatch:
        if not task.data:
            return task
        features = self.embed_pixels(self.preprocess([obj.image_data for obj in task.data]))
        for obj, vector in zip(task.data, features):
            obj.embedding = vector
        return task

    # Opt-ins a curator stage can make (ignored by the how-to loop and Ray Data, which call process):
    # run under torch.autocast at curator's --precision (bf16 on CPUs with native bf16, as here) ...
    use_autocast: ClassVar[bool] = True

    def process_tensors(self, pixels, task: ImageBatch) -> ImageBatch:
        """... and take the tensor fast path: curator's decoders hand over (N, 3, 224, 224) uint8 crops."""
        features = self.embed_pixels(pixels.permute(0, 2, 3, 1).numpy())
        for obj, vector in zip(task.data, features):
            obj.embedding = vector
        return task
