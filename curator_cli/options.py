"""What a run was asked to do, parsed once from the command line: reading, decoding, embedding.

Every layer takes its settings from here (readers a :class:`ReadOptions`, decoders a
:class:`DecodeOptions`, executors an :class:`EmbedOptions`), so a mode is spelt one way everywhere.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "fp16"]
DecodeMode = Literal["cpu", "gpu"]
EmbeddingDtype = Literal["float32", "float16"]
OnError = Literal["continue", "fail"]
Executor = Literal["local", "ray"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)
EMBEDDING_DTYPES: tuple[str, ...] = get_args(EmbeddingDtype)
ON_ERROR: tuple[str, ...] = get_args(OnError)
EXECUTORS: tuple[str, ...] = get_args(Executor)

DEFAULT_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own limit (Image.MAX_IMAGE_PIXELS)


class OptionError(ValueError):
    """A command-line value that cannot be used (printed as one line, exit 2)."""


def parse_image_exts(text: str) -> tuple[str, ...]:
    """``'jpg;jpeg,png'`` or ``'.JPG'`` -> ``('jpg', 'jpeg', 'png')``: the one reading of ``--image-ext``."""
    exts = tuple(e.strip().lower().lstrip(".") for e in text.replace(",", ";").split(";") if e.strip())
    if not exts:
        raise OptionError("--image-ext names no extension")
    return exts


def parse_decode_size(text: str | None) -> int | Literal["full"] | None:
    """``--decode-size``: None (the stages decide), ``"full"``, or a positive number of pixels."""
    if text is None or text == "full":
        return text
    if not (text.isdigit() and int(text) > 0):
        raise OptionError(f"--decode-size must be a positive number or 'full', not {text!r}")
    return int(text)


@dataclass(frozen=True)
class ReadOptions:
    """How readers find the image, id and caption of a sample."""

    image_exts: tuple[str, ...] = DEFAULT_IMAGE_EXTS
    image_column: str | None = None
    id_column: str | None = None
    caption_column: str | None = None  # parquet: None tries ``caption``, then ``text``
    rows_per_read: int | None = None  # parquet: rows read at a time (embed: --batch-size); None: the reader's


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode: pixel limit, the smallest shorter side the stages need (None: full size),
    and whether to return exact ``min_side`` squares (the tensor fast path)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int | None = None
    crop: bool = False


def _default_workers() -> int:
    return os.cpu_count() or 1


def _default_worker_start() -> str:
    # fork is fast and safe when the pool starts before any thread or model exists (the local
    # executor); Ray actors (threads from the start) use spawn
    return "fork" if sys.platform == "linux" else "spawn"


@dataclass
class EmbedOptions:
    """Everything ``curator embed`` was asked to do, past the shard list and the stages."""

    output_dir: Path
    batch_size: int = 256
    device: str = "cpu"
    read: ReadOptions = field(default_factory=ReadOptions)
    max_pixels: int | None = None
    decode_size: int | Literal["full"] | None = None  # --decode-size: None = the stages decide
    decode: DecodeMode = "cpu"
    num_workers: int = field(default_factory=_default_workers)
    decode_timeout: float = 60.0
    stage_timeout: float = 3600.0  # --stage-timeout: seconds one stage call may take; 0 = off (stages in the main thread)
    precision: Precision = "fp32"
    embedding_dtype: EmbeddingDtype = "float32"
    on_error: OnError = "continue"  # "fail": stop at the first failing shard
    overwrite: bool = False
    progress: bool = False
    worker_start: str = field(default_factory=_default_worker_start)
    executor: Executor = "local"
    ray_address: str | None = None  # --executor ray: the cluster to join (None: RAY_ADDRESS, else a local Ray)
    num_actors: int | None = None  # --executor ray: at most this many actors

    def __post_init__(self) -> None:
        if self.read.rows_per_read is None:  # readers hold about a batch of rows at a time, not a row group
            self.read = replace(self.read, rows_per_read=self.batch_size)
