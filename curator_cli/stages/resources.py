"""What a stage needs per worker: NeMo Curator's ``Resources``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """CPU cores, GPU fraction and GPU memory one worker of a stage asks for.

    ``gpus=0.25`` means four workers share one GPU.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    gpu_memory_gb: float = 0.0

    @property
    def requires_gpu(self) -> bool:
        return self.gpus > 0 or self.gpu_memory_gb > 0
