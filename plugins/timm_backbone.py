"""Embeddings from any timm model (https://huggingface.co/docs/timm): its pooled features,
classifier removed. timm is optional: ``pip install timm``.

    curator embed shards/ -o out/ --stage plugins/timm_backbone.py:TimmBackboneStage \\
        --stage-arg model_name=convnext_small.fb_in22k --stage-arg pretrained=true

``pretrained=true`` downloads the weights from the Hugging Face hub (online only);
``checkpoint_path=FILE`` loads a local ``.pth``/``.safetensors`` file instead (its classifier, if
any, is ignored); neither gives random initialisation. Images get the model's own preprocessing
(``timm.data.resolve_data_config`` of its pretrained config), run as batched tensor ops on the
device; the input size is known when the stage is made, so the run decodes images at the size the
model takes (384 px for a 384-px model), before any weights are loaded.
"""

import math
from dataclasses import dataclass, field

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.model_stage import ModelEmbeddingMixin
from curator_cli.stages.preprocess import Preprocess
from curator_cli.stages.runtime import stage_device, stage_precision
from curator_cli.tasks import ImageBatch


def import_timm():
    try:
        import timm
    except ImportError:
        raise RuntimeError("the timm backbone stage needs timm: pip install timm") from None
    return timm


def timm_preprocess(model_name: str) -> Preprocess:
    """The eval preprocessing timm resolves for ``model_name`` (``arch`` or ``arch.tag``), as a batched
    :class:`Preprocess`: from the model's pretrained config alone, neither building the model nor
    loading weights (``timm.create_model`` gives the model the same config)."""
    timm = import_timm()
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=False)
    except RuntimeError as exc:  # e.g. a known architecture with an unknown tag
        raise ValueError(f"timm model {model_name!r}: {exc}") from None
    cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict())
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
class TimmBackboneStage(ModelEmbeddingMixin, ProcessingStage[ImageBatch, ImageBatch]):
    """Pooled features of a timm model (classifier removed), L2-normalised; needs timm."""

    model_name: str = "resnet50"
    pretrained: bool = False
    checkpoint_path: str = ""
    batch_size: int = 64
    num_gpus_per_worker: float = 1.0
    name: str = "timm_backbone"
    decode_size: int = field(init=False, default=256)
    process_tensors = None  # whole images, resized by the model's own preprocessing (no decoder-cut squares)

    def __post_init__(self):
        timm = import_timm()  # fail at --stage time, with the install hint, rather than mid-run
        if not timm.list_models(self.model_name.split(".")[0]):
            raise ValueError(f"unknown timm model {self.model_name!r} (see timm.list_models())")
        # known before the run plans decoding, which happens before setup(): images come decoded at
        # the size this model takes, not at a default and then scaled up
        self._preprocess = timm_preprocess(self.model_name)
        self.decode_size = self._preprocess.decode_size

    def setup(self, worker_metadata=None):
        timm = import_timm()
        self._device = stage_device(worker_metadata)
        self._precision = stage_precision(worker_metadata)
        kwargs = {"num_classes": 0}  # num_classes=0: timm drops the classifier, returns pooled features
        if self.checkpoint_path:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": self.checkpoint_path})
        else:
            kwargs["pretrained"] = self.pretrained
        self._model = timm.create_model(self.model_name, **kwargs).eval().to(self._device)
