"""Scoring images from their embeddings with a small linear or MLP head, like NeMo Curator's
aesthetic and NSFW filters: reads ``embedding``, writes ``aesthetic_score`` or ``nsfw_score``,
and with a ``threshold`` keeps only the images that pass.

The head file (``.pth``/``.pt`` from ``torch.save``, or ``.safetensors``) is the state dict of a
stack of ``nn.Linear`` layers, e.g. of ``nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1))``:

- every 2-D ``<prefix>weight`` tensor (shape ``out x in``) is one layer, with ``<prefix>bias``
  as its bias when present; layers run in the natural order of their prefixes (``layers.2`` before
  ``layers.10``), so Dropout/ReLU modules in between, which hold no weights, do not matter;
- each layer's input size is the previous layer's output size; the last layer has one output;
- ``activation`` goes between layers (``relu``, ``gelu`` or ``none``: LAION's improved aesthetic
  predictor uses none), ``output_activation`` after the last (``sigmoid`` for a probability).

The embedding is L2-normalised first unless ``normalize_input=false`` (CLIP heads expect unit vectors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.checkpoints import load_state_dict
from curator_cli.stages.runtime import stage_device
from curator_cli.tasks import ImageBatch, to_vector
from curator_cli.stages.worker_metadata import WorkerMetadata


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def head_layers(state: dict[str, Any], source: str) -> list[tuple[Any, Any]]:
    """(weight, bias or None) per linear layer of a head state dict, in order; ValueError if malformed."""
    prefixes = sorted(
        (key[: -len("weight")] for key, value in state.items() if key.endswith("weight") and value.ndim == 2),
        key=_natural_key,
    )
    if not prefixes:
        raise ValueError(f"head file {source!r} has no 2-D '...weight' tensor (expected nn.Linear state dict)")
    used = {p + "weight" for p in prefixes} | {p + "bias" for p in prefixes if p + "bias" in state}
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"head file {source!r} has tensors that are not linear layers: {', '.join(extra[:5])}")
    layers = [(state[p + "weight"].float(), state[p + "bias"].float() if p + "bias" in state else None) for p in prefixes]
    for (previous, _), (weight, _), prefix in zip(layers, layers[1:], prefixes[1:]):
        if weight.shape[1] != previous.shape[0]:
            raise ValueError(
                f"head file {source!r}: layer {prefix}weight takes {weight.shape[1]} inputs "
                f"but the layer before gives {previous.shape[0]}"
            )
    if layers[-1][0].shape[0] != 1:
        raise ValueError(f"head file {source!r}: the last layer has {layers[-1][0].shape[0]} outputs, expected 1")
    return layers


@dataclass
class LinearHeadScoreStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Scores embeddings with a linear/MLP head from a file (aesthetic, NSFW); optional threshold filter."""

    head_path: str
    target: Literal["aesthetic_score", "nsfw_score"] = "aesthetic_score"
    activation: Literal["relu", "gelu", "none"] = "relu"
    output_activation: Literal["none", "sigmoid"] = "none"
    normalize_input: bool = True
    threshold: float | None = None
    keep: Literal["above", "below"] = "above"
    name: str = "linear_head_score"
    decode_size: int = field(init=False, default=0)  # reads no pixels

    def __post_init__(self) -> None:
        if self.target not in ("aesthetic_score", "nsfw_score"):
            raise ValueError(f"target must be aesthetic_score or nsfw_score, not {self.target!r}")
        if self.activation not in ("relu", "gelu", "none"):
            raise ValueError(f"activation must be relu, gelu or none, not {self.activation!r}")
        if self.output_activation not in ("none", "sigmoid"):
            raise ValueError(f"output_activation must be none or sigmoid, not {self.output_activation!r}")
        if self.keep not in ("above", "below"):
            raise ValueError(f"keep must be above or below, not {self.keep!r}")
        if not Path(self.head_path).expanduser().is_file():
            raise ValueError(f"head file {self.head_path!r} not found")
        self._head = None

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], [self.target]

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        import torch
        from torch import nn

        self._device = stage_device(worker_metadata)
        layers = head_layers(load_state_dict(self.head_path), self.head_path)
        modules: list[nn.Module] = []
        for index, (weight, bias) in enumerate(layers):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias)
            modules.append(linear)
            if index < len(layers) - 1 and self.activation != "none":
                modules.append(nn.ReLU() if self.activation == "relu" else nn.GELU())
        if self.output_activation == "sigmoid":
            modules.append(nn.Sigmoid())
        self._in_features = int(layers[0][0].shape[1])
        self._head = nn.Sequential(*modules).eval().to(self._device)

    def teardown(self) -> None:
        self._head = None

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N,) float32 scores. The head is tiny: it always runs in float32."""
        import torch
        import torch.nn.functional as F

        if self._head is None:
            raise RuntimeError(f"stage {self.name!r} used before setup()")
        if embeddings.shape[1] != self._in_features:
            raise ValueError(
                f"head {self.head_path!r} takes {self._in_features}-dim embeddings, got {embeddings.shape[1]} "
                "(put the embedding stage it was trained on before it)"
            )
        x = torch.from_numpy(embeddings).to(self._device)
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        with torch.inference_mode():
            return self._head(x).squeeze(1).float().cpu().numpy()

    def process(self, task: ImageBatch) -> ImageBatch:
        if not task.data:
            return task
        missing = [obj.image_id for obj in task.data if obj.embedding is None]
        if missing:
            raise ValueError(
                f"{len(missing)} image(s) have no embedding (first: {missing[0]!r}): "
                "run an embedding stage before this one"
            )
        values = self.scores(np.stack([to_vector(obj.embedding) for obj in task.data]))
        for obj, value in zip(task.data, values):
            setattr(obj, self.target, float(value))
        if self.threshold is not None:
            if self.keep == "above":
                task.data = [obj for obj, v in zip(task.data, values) if v >= self.threshold]
            else:
                task.data = [obj for obj, v in zip(task.data, values) if v < self.threshold]
        return task
