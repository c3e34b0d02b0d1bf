"""Embeddings from any ``torchvision.models`` classification model: its features before the classifier.

``model`` is a torchvision model name (``resnet50``, ``vit_b_16``, ``convnext_tiny``, ...).
``weights`` is one of:

- a torchvision weights name: ``DEFAULT``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``,
  downloaded into the torch cache (``$TORCH_HOME/hub/checkpoints``) the first time, as torchvision does;
- a local ``.pth``/``.pt``/``.safetensors`` file holding the model's state dict (its classifier
  may have any number of classes: the classifier is dropped anyway);
- ``none``: random initialisation, for tests and benchmarks.

The classifier (the last ``nn.Linear``: ``fc``, ``classifier[-1]``, ``heads.head``, ``head``) is
replaced by ``nn.Identity``, so the embedding is what the classifier would have read, e.g. 2048
dims for resnet50, 768 for vit_b_16 and convnext_tiny, 512 for resnet18. The images get the
weights' own preprocessing (resize, centre crop, ImageNet mean/std), run as batched tensor ops on
the device; with ``none`` or a file, the preprocessing of the model's default weights.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.model_stage import ModelEmbeddingMixin
from curator_cli.stages.checkpoints import load_state_dict, looks_like_path
from curator_cli.stages.preprocess import Preprocess
from curator_cli.stages.runtime import stage_device, stage_precision
from curator_cli.tasks import ImageBatch
from curator_cli.stages.worker_metadata import WorkerMetadata


def classification_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def remove_head(net: Any) -> str:
    """Replace the classifier of a torchvision model with ``nn.Identity`` (in place).

    Returns the state-dict prefix of what was removed (``fc.``, ``heads.head.``, ``classifier.3.``...),
    so that a checkpoint's classifier weights can be left out when loading it.
    """
    from torch import nn

    classifier = getattr(net, "classifier", None)
    if isinstance(classifier, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in classifier):
        # SqueezeNet: a 1x1 convolution to the classes, then pooling; keep the pooled 512 channels
        net.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return "classifier."
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classifier to remove")
    parent_name, _, child = last.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Identity())
    return last + "."


def _resolve_weights(model: str, weights: str) -> Any:
    """The torchvision weights enum member ``weights`` names for ``model``; ValueError if none."""
    from torchvision.models import get_model_weights, get_weight

    enum = get_model_weights(model)
    valid = ", ".join(m for m in enum.__members__)
    if "." in weights:
        try:
            member = get_weight(weights)
        except (ValueError, KeyError, AttributeError):
            member = None
        if member is None or type(member) is not enum:
            raise ValueError(f"{weights!r} are not weights of {model} (use one of: {valid}, a file, or none)")
        return member
    try:
        return enum[weights.upper()]
    except KeyError:
        raise ValueError(f"{model} has no weights {weights!r} (use one of: {valid}, a .pth/.safetensors file, or none)") from None


def _preprocess_of(weights: Any) -> Preprocess:
    """The resize/crop/normalise parameters of torchvision ``weights.transforms()``."""
    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    return Preprocess(
        crop_size=crop,
        resize_size=max(crop, int(transform.resize_size[0])),
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        interpolation=transform.interpolation.value,
    )


def _load_local(net: Any, path: str, head_prefix: str, model: str) -> None:
    """Load a state dict file into ``net`` (head already removed), ignoring the file's classifier."""
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith(head_prefix)}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise ValueError(f"weights file {path!r} does not fit torchvision {model}: {'; '.join(parts)}")
    net.load_state_dict(state)


@dataclass
class TorchvisionEmbeddingStage(ModelEmbeddingMixin, ProcessingStage[ImageBatch, ImageBatch]):
    """Features of a torchvision classification model (resnet50, vit_b_16, ...) with its classifier removed."""

    model: str = "resnet50"
    weights: str = "DEFAULT"
    normalize: bool = True
    batch_size: int = 64
    name: str = "torchvision_embedding"
    decode_size: int = field(init=False, default=256)

    def __post_init__(self) -> None:
        known = classification_models()
        if self.model not in known:
            close = difflib.get_close_matches(self.model, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
            raise ValueError(f"unknown torchvision model {self.model!r} ({hint})")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        from torchvision.models import get_model_weights

        self._weights_enum = None
        self._weights_file: str | None = None
        choice = self.weights.strip()
        if choice.lower() == "none":
            reference = get_model_weights(self.model).DEFAULT
        elif looks_like_path(choice):
            path = Path(choice).expanduser()
            if not path.is_file():
                raise ValueError(f"weights file {choice!r} not found")
            self._weights_file = str(path)
            reference = get_model_weights(self.model).DEFAULT
        else:
            self._weights_enum = reference = _resolve_weights(self.model, choice)
        self._preprocess = _preprocess_of(reference)
        self.decode_size = self._preprocess.decode_size
        self._model = None

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def _build(self) -> Any:
        from torchvision.models import get_model

        if self._weights_enum is not None:
            try:
                net = get_model(self.model, weights=self._weights_enum)
            except OSError as exc:  # urllib's URLError/HTTPError, socket errors: the download failed
                url = self._weights_enum.url
                raise RuntimeError(
                    f"cannot download torchvision weights {self._weights_enum} from {url} ({exc}); "
                    f"offline? copy the file here and pass --stage-arg weights=/path/to/{url.rsplit('/', 1)[-1]} "
                    "(or put it in $TORCH_HOME/hub/checkpoints)"
                ) from exc
            remove_head(net)
            return net
        kwargs: dict[str, Any] = {}
        if self.model.startswith("vit_"):
            kwargs["image_size"] = self._preprocess.crop_size  # vit_h_14's default weights are 518 px
        net = get_model(self.model, weights=None, **kwargs)
        head_prefix = remove_head(net)
        if self._weights_file is not None:
            _load_local(net, self._weights_file, head_prefix, self.model)
        return net

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self._device = stage_device(worker_metadata)
        self._precision = stage_precision(worker_metadata)
        self._model = self._build().eval().to(self._device)
