"""NeMo Curator's "Custom Embedding Stages" example, made concrete: copy this file and change
``build_model`` (and maybe ``PREPROCESS``) to your own network.

The stage loads a state dict from ``model_path`` (``.pth``/``.pt`` from ``torch.save``, or
``.safetensors``) into ``build_model()``, here torchvision's resnet18 with its classifier removed,
so a resnet18 checkpoint (e.g. ``resnet18-f37072fd.pth`` from torchvision) works as is:

    curator embed shards/ -o out/ --stage plugins/custom_embedding.py:MyCustomEmbeddingStage \\
        --stage-arg model_path=/models/resnet18-f37072fd.pth

It shows what every good stage does: load once in ``setup`` on the device the runner chose, run
batches on that device under the run's precision, free the model in ``teardown``, and tell the
runner the image size it needs (``decode_size``).
"""

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.checkpoints import load_state_dict
from curator_cli.stages.preprocess import Preprocess
from curator_cli.stages.runtime import autocast, stage_device, stage_precision
from curator_cli.tasks import ImageBatch

# Resize the shorter side to 256, centre crop 224, ImageNet mean/std: what resnet18 was trained with.
PREPROCESS = Preprocess(crop_size=224, resize_size=256)


def build_model() -> nn.Module:
    """Your architecture goes here. This one: resnet18, classifier replaced by Identity (512 dims)."""
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    return net


@dataclass
class MyCustomEmbeddingStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Embeds images with your own model: build_model() plus the weights in model_path."""

    model_path: str
    batch_size: int = 32
    num_gpus_per_worker: float = 0.25
    _name: str = "my_custom_embedding"
    decode_size: int = PREPROCESS.decode_size

    def setup(self, worker_metadata=None):
        # Load your custom model, once, on the device the runner chose (--device).
        self.device = stage_device(worker_metadata)
        self.precision = stage_precision(worker_metadata)  # --precision: fp32, bf16 or fp16
        self.model = self.load_my_model(self.model_path).eval().to(self.device)

    def load_my_model(self, model_path: str) -> nn.Module:
        model = build_model()
        state = load_state_dict(model_path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the checkpoint's classifier
        model.load_state_dict(state)
        return model

    def teardown(self):
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def process(self, task: ImageBatch) -> ImageBatch:
        # Process images in batches
        for i in range(0, len(task.data), self.batch_size):
            batch = task.data[i:i + self.batch_size]

            # Extract image data (H x W x 3 uint8) and make one normalised tensor on the device
            pixels = PREPROCESS([img.image_data for img in batch], self.device)

            # Generate embeddings using your model
            with autocast(self.device, self.precision):
                embeddings = self.model(pixels)
            embeddings = nn.functional.normalize(embeddings.float(), dim=1).cpu().numpy()

            # Store embeddings in ImageObjects
            for j, img_obj in enumerate(batch):
                img_obj.embedding = embeddings[j]

        return task
