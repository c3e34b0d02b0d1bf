"""CLIP image embeddings with open_clip, L2-normalised as NeMo Curator and clip-retrieval write them.

Needs the optional extra: ``pip install 'curator-cli[clip]'`` (the ``open_clip_torch`` package).

``model`` is an open_clip model name (``ViT-B-32``, ``ViT-L-14``, ...; ``open_clip.list_models()``).
``pretrained`` is one of:

- an open_clip tag for that model (``openai``, ``laion2b_s34b_b79k``, ...;
  ``open_clip.list_pretrained_tags_by_model(model)``), downloaded into the Hugging Face cache the
  first time;
- a local checkpoint file (``.pt``/``.bin``/``.safetensors``: the model's state dict, as open_clip
  and ``torch.save(model.state_dict())`` write it);
- ``none``: random initialisation, for tests and benchmarks.

Only the image tower is kept on the device; the text tower is dropped after loading.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.model_stage import ModelEmbeddingMixin
from curator_cli.stages.checkpoints import looks_like_path
from curator_cli.stages.preprocess import Preprocess
from curator_cli.stages.runtime import stage_device, stage_precision
from curator_cli.tasks import ImageBatch
from curator_cli.stages.worker_metadata import WorkerMetadata

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def import_open_clip() -> Any:
    """The ``open_clip`` module, or a RuntimeError that says which extra to install."""
    try:
        import open_clip
    except ImportError as exc:
        raise RuntimeError(
            f"the clip stage needs open_clip ({exc}): pip install 'curator-cli[clip]' (or open_clip_torch)"
        ) from None
    return open_clip


@contextlib.contextmanager
def _quiet_third_party_logs() -> Iterator[None]:
    """Silence open_clip's and huggingface_hub's log lines while loading: our own error says what failed."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub"), logging.getLogger("open_clip")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _size(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def preprocess_of(visual: Any) -> Preprocess:
    """The eval preprocessing open_clip configured for an image tower (``visual.preprocess_cfg``)."""
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = _size(cfg.get("size", getattr(visual, "image_size", 224)))
    mode = cfg.get("resize_mode", "shortest")
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(
        crop_size=size,
        resize_size=size,
        mean=tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN),
        std=tuple(cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_STD),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
        resize_mode="squash" if mode == "squash" else "shortest",
    )


@dataclass
class ClipEmbeddingStage(ModelEmbeddingMixin, ProcessingStage[ImageBatch, ImageBatch]):
    """CLIP image embeddings (open_clip), L2-normalised; needs the extra curator-cli[clip]."""

    model: str = "ViT-B-32"
    pretrained: str = "openai"
    batch_size: int = 64
    name: str = "clip_embedding"
    decode_size: int = field(init=False, default=224)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        choice = self.pretrained.strip()
        if choice.lower() != "none" and looks_like_path(choice) and not Path(choice).expanduser().is_file():
            raise ValueError(f"checkpoint file {choice!r} not found")
        self._model = None
        try:  # the input size, so the runner can decode small before setup() loads the model
            import open_clip

            config = open_clip.get_model_config(self.model) or {}
            self.decode_size = _size(config.get("vision_cfg", {}).get("image_size", 224))
            if (config.get("preprocess_cfg") or {}).get("resize_mode") == "squash":
                self.process_tensors = None  # squashing the whole image is not a centre square: list path
        except ImportError:
            pass  # setup() says which extra to install

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding"]

    def _create(self, open_clip: Any) -> Any:
        if self.model not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(self.model, open_clip.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
            raise ValueError(f"unknown open_clip model {self.model!r} ({hint})")
        choice = self.pretrained.strip()
        if choice.lower() == "none":
            return open_clip.create_model(self.model, pretrained=None)
        if looks_like_path(choice):
            path = str(Path(choice).expanduser())
            try:
                return open_clip.create_model(self.model, pretrained=path)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise ValueError(f"cannot load checkpoint {path!r} into open_clip {self.model}: {first}") from exc
        tags = open_clip.list_pretrained_tags_by_model(self.model)
        if choice not in tags:
            raise ValueError(
                f"open_clip {self.model} has no pretrained tag {choice!r} "
                f"(tags: {', '.join(tags) or 'none'}; or a local checkpoint file, or none)"
            )
        # OpenAI's weights were trained with QuickGELU; open_clip only warns when the config lacks it
        quick_gelu = bool(open_clip.get_pretrained_cfg(self.model, choice).get("quick_gelu", False))
        try:
            return open_clip.create_model(self.model, pretrained=choice, force_quick_gelu=quick_gelu)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            if len(first) > 160:
                first = first[:160] + "..."
            raise RuntimeError(
                f"cannot load open_clip weights {self.model}/{choice} ({first}); offline? download the "
                "checkpoint elsewhere and pass --stage-arg pretrained=/path/to/open_clip_model.safetensors"
            ) from exc

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        open_clip = import_open_clip()
        self._device = stage_device(worker_metadata)
        self._precision = stage_precision(worker_metadata)
        with _quiet_third_party_logs():
            net = self._create(open_clip)
        visual = net.visual
        del net  # the text tower is not needed for image embeddings
        self._preprocess = preprocess_of(visual)
        self.decode_size = self._preprocess.decode_size
        self._model = visual.eval().to(self._device)

    def _features(self, pixels: Any) -> Any:
        features = self._model(pixels)
        return features[0] if isinstance(features, (tuple, list)) else features  # towers that also return tokens
