"""Stages only the GPU check (``bench/gpu.py``) runs, by file path (``--stage bench/gpu_stages.py:Class``).

- :class:`VitPlainStage`: torchvision ``vit_b_32`` (seeded random weights, nothing downloaded) as a
  plain ``process()`` stage, written the way the README's "What a good stage does" and
  ``plugins/custom_embedding.py`` lead a user to write one: ``decode_size`` declared, the batch of
  ``obj.image_data`` (H x W x 3 uint8 numpy) made into one tensor on the device by
  ``curator_cli.stages.preprocess.Preprocess``, the model under the run's precision. No
  ``process_tensors``: what curator does for a stage that only has ``process``.
- :class:`VitQuarterGpuStage`: the built-in torchvision stage declaring
  ``num_gpus_per_worker = 0.25`` (the NeMo Curator how-to's value), so ``--executor ray`` puts four
  actors on one GPU; ``cpus_per_worker`` (default 4) is the CPU cores each actor asks for, which
  is also its decode worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.builtin.torchvision_embedding import TorchvisionEmbeddingStage, remove_head
from curator_cli.stages.preprocess import Preprocess
from curator_cli.stages.resources import Resources
from curator_cli.stages.runtime import autocast, stage_device, stage_precision
from curator_cli.tasks import ImageBatch

# ViT_B_32_Weights.DEFAULT.transforms(): resize the shorter side to 256 (bilinear), centre crop 224,
# ImageNet mean/std
VIT_PREPROCESS = Preprocess(crop_size=224, resize_size=256)


@dataclass
class VitPlainStage(ProcessingStage[ImageBatch, ImageBatch]):
    """vit_b_32 (or ``model``: any torchvision model whose default weights use the same
    preprocessing), random weights (seed 0), L2-normalised features; ``process()`` only."""

    model: str = "vit_b_32"
    model_batch: int = 256
    seed: int = 0
    name: str = "torchvision_plain"
    decode_size: int = VIT_PREPROCESS.decode_size

    def setup(self, worker_metadata=None) -> None:
        import torch
        import torchvision

        torch.manual_seed(self.seed)
        self.device = stage_device(worker_metadata)
        self.precision = stage_precision(worker_metadata)
        net = torchvision.models.get_model(self.model, weights=None)
        remove_head(net)
        self.model = net.eval().to(self.device)

    def teardown(self) -> None:
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def process(self, task: ImageBatch) -> ImageBatch:
        import torch.nn.functional as F

        for start in range(0, len(task.data), self.model_batch):
            chunk = task.data[start:start + self.model_batch]
            pixels = VIT_PREPROCESS([obj.image_data for obj in chunk], self.device)
            with autocast(self.device, self.precision):
                features = self.model(pixels)
            features = F.normalize(features.float(), dim=1).cpu().numpy()
            for obj, vector in zip(chunk, features):
                obj.embedding = vector
        return task


@dataclass
class VitQuarterGpuStage(TorchvisionEmbeddingStage):
    """The built-in torchvision stage, four workers per GPU (``num_gpus_per_worker = 0.25``)."""

    num_gpus_per_worker: float = 0.25
    cpus_per_worker: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.resources = Resources(cpus=self.cpus_per_worker, gpus=self.num_gpus_per_worker)
