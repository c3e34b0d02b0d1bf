"""Turning a batch of decoded images into a model's input tensor, on the stage's device.

Every model-backed stage needs the same steps: resize (shorter side to ``resize_size``, or both
sides for ``squash``), centre crop to ``crop_size``, scale to [0, 1], normalise by mean/std. Here
they run as batched torch ops on the device: images are uploaded as uint8 (a quarter of the bytes
of float), images of equal shape are resized together, and the result is one (N, 3, S, S) tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curator_cli.stages.staging import upload

INTERPOLATIONS = ("bilinear", "bicubic")


def stacked_by_shape(images: Sequence[Any], device: Any = None,
                     limit: int | None = None) -> Iterator[tuple[list[int], Any]]:  # Any: torch.Tensor
    """Images of equal shape stacked together, so that a batched op resizes all of them in one call.

    Yields ``(indices, pixels)`` for each shape, in order of first appearance: the positions in
    ``images`` of the images of that shape (at most ``limit`` of them at a time; None entries are
    skipped) and one tensor of them stacked along a new first dimension, each in its own layout
    (H x W x C arrays give N x H x W x C). Numpy arrays are uploaded to ``device`` (on CUDA through
    the reusable pinned ring of :func:`~curator_cli.stages.staging.upload`); tensors, e.g. decoded
    on the GPU, are moved there; with ``device`` None everything stays where it is.
    """
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        if image is not None:
            groups.setdefault(tuple(image.shape), []).append(index)
    cuda = device is not None and torch.device(device).type == "cuda"
    for members in groups.values():
        step = limit or len(members)
        for start in range(0, len(members), step):
            indices = members[start:start + step]
            group = [images[i] for i in indices]
            if all(isinstance(image, torch.Tensor) for image in group):
                pixels = torch.stack(group)
                yield indices, pixels if device is None else pixels.to(device)
                continue
            arrays = [np.asarray(image.cpu()) if isinstance(image, torch.Tensor) else image for image in group]
            if cuda and arrays[0].dtype == np.uint8:
                yield indices, upload(arrays, device)
                continue
            pixels = torch.from_numpy(np.stack(arrays))
            yield indices, pixels if device is None else pixels.to(device)


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre crop and normalise, as torchvision's and open_clip's eval transforms do."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    resize_mode: str = "shortest"  # "shortest": shorter side to resize_size; "squash": both sides

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} not supported (use {', '.join(INTERPOLATIONS)})")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r} not supported (use shortest or squash)")
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise ValueError(f"need 1 <= crop_size <= resize_size, got {self.crop_size} and {self.resize_size}")

    @property
    def decode_size(self) -> int:
        """The shorter side, in pixels, an image needs to be decoded at for this preprocessing."""
        return self.resize_size

    def _resized_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_mode == "squash":
            return self.resize_size, self.resize_size
        short, long = min(height, width), max(height, width)
        new_long = max(self.resize_size, int(self.resize_size * long / short))
        return (self.resize_size, new_long) if height <= width else (new_long, self.resize_size)

    def __call__(self, images: Sequence[np.ndarray] | Any, device: Any) -> Any:  # -> torch.Tensor
        """H x W x 3 uint8 arrays (or tensors), or one N x H x W x 3 uint8 tensor (the tensor fast
        path's batch, moved to ``device`` as one piece: from pinned memory, asynchronously) ->
        normalised float32 tensor (N, 3, crop, crop) on ``device``."""
        import torch
        import torch.nn.functional as F

        device = torch.device(device)
        out = torch.empty((len(images), 3, self.crop_size, self.crop_size), dtype=torch.float32, device=device)
        if isinstance(images, torch.Tensor):
            groups: Any = [(slice(None), images.to(device, non_blocking=images.is_pinned()))]
        else:
            groups = stacked_by_shape(images, device)
        for indices, pixels in groups:
            height, width = pixels.shape[1:3]
            x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
            new_h, new_w = self._resized_shape(height, width)
            if (new_h, new_w) != (height, width):
                x = F.interpolate(x, size=(new_h, new_w), mode=self.interpolation, antialias=True, align_corners=False)
                if self.interpolation == "bicubic":
                    x = x.clamp_(0.0, 1.0)
            top = int(round((new_h - self.crop_size) / 2.0))
            left = int(round((new_w - self.crop_size) / 2.0))
            out[indices] = x[:, :, top:top + self.crop_size, left:left + self.crop_size]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        return out.sub_(mean).div_(std)
