"""Embeddings from any timm model (https://huggingface.co/docs/timm): its pooled features,
classifier removed. timm is optional: ``pip install timm``.

    curator embed shards/ -o out/ --stage plugins/timm_backbone.py:TimmBackboneStage \\
        --stage-arg model_name=convnext_small.fb_in22k --stage-arg pretrained=true

``pretrained=true`` downloads the weights from the Hugging Face hub (online only);
``checkpoint_path=FILE`` loads a local ``.pth``/``.safetensors`` file instead (its classifier, if
any, is ignored); neither gives random initialisation. Images get the model's own preprocessing
(``timm.data.resolve_model_data_config``), run as batched tensor ops on the device.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.preprocess import Preprocess
from curator_cli.stages.runtime import autocast, stage_device, stage_precision
from curator_cli.tasks import ImageBatch


def import_timm():
    try:
        import timm
    except ImportError:
        raise RuntimeError("the timm backbone stage needs timm: pip install timm") from None
    return timm


def timm_preprocess(model) -> Preprocess:
    """The eval preprocessing timm resolves for ``model``, as a batched :class:`Preprocess`."""
    timm = import_timm()
    cfg = timm.data.resolve_model_data_config(model)
    size = int(cfg["input_size"][-1])
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(
        crop_size=size,
        resize_size=max(size, int(math.floor(size / cfg.get("crop_pct", 1.0)))),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
        resize_mode="squash" if cfg.get("crop_mode") == "squash" else "shortest",
    )


@dataclass
class TimmBackboneStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Pooled features of a timm model (classifier removed), L2-normalised; needs timm."""

    model_name: str = "resnet50"
    pretrained: bool = False
    checkpoint_path: str = ""
    batch_size: int = 64
    num_gpus_per_worker: float = 1.0
    name: str = "timm_backbone"
    decode_size: int = field(init=False, default=256)

    def __post_init__(self):
        timm = import_timm()  # fail at --stage time, with the install hint, rather than mid-run
        if not timm.list_models(self.model_name.split(".")[0]):
            raise ValueError(f"unknown timm model {self.model_name!r} (see timm.list_models())")
        self.model = None

    def setup(self, worker_metadata=None):
        timm = import_timm()
        self.device = stage_device(worker_metadata)
        self.precision = stage_precision(worker_metadata)
        kwargs = {"num_classes": 0}  # num_classes=0: timm drops the classifier, returns pooled features
        if self.checkpoint_path:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": self.checkpoint_path})
        else:
            kwargs["pretrained"] = self.pretrained
        model = timm.create_model(self.model_name, **kwargs)
        self.preprocess = timm_preprocess(model)
        self.decode_size = self.preprocess.decode_size
        self.model = model.eval().to(self.device)

    def teardown(self):
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def process(self, task: ImageBatch) -> ImageBatch:
        for start in range(0, len(task.data), self.batch_size):
            chunk = task.data[start:start + self.batch_size]
            pixels = self.preprocess([obj.image_data for obj in chunk], self.device)
            with autocast(self.device, self.precision):
                features = self.model(pixels)
            features = nn.functional.normalize(features.float().flatten(1), dim=1).cpu().numpy()
            for obj, vector in zip(chunk, features):
                obj.embedding = vector
        return task
