"""The end-of-run summary: counts, throughput and where the time went; printed and written as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curator_cli.execution.stats import TIME_FIELDS, WorkerStats


@dataclass
class ShardFailure:
    shard: str
    reason: str


@dataclass(kw_only=True)
class RunSummary(WorkerStats):
    """What a run did: its counts, and its workers' :class:`WorkerStats` added up (``seconds_*`` split
    the wall time ``seconds`` by where it went)."""

    output_dir: str
    shards_total: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    shards_missing: int = 0  # names a brace range gave that do not exist (not counted in shards_total)
    shards_failed: list[ShardFailure] = field(default_factory=list)
    images: int = 0
    images_failed: int = 0
    decode_min_side: int | None = None  # None: full-size decode
    seconds: float = 0.0  # the run's span: from planning to the last output
    process_seconds: float | None = None  # the whole process so far (start-up and imports too), where known
    workers: list[dict] = field(default_factory=list)  # per Ray actor: shards, images, images/s

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def merge_stats(self, stats: WorkerStats) -> None:
        """Add one worker's time split and error kinds, and what it learned (dimension, batch size)."""
        for name in TIME_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(stats, name))
        self.decode_workers_replaced += stats.decode_workers_replaced
        self.main_cpu_seconds += stats.main_cpu_seconds
        self.decode_cpu_seconds += stats.decode_cpu_seconds
        for kind, count in stats.errors_by_kind.items():
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + count
        self.embedding_dim = self.embedding_dim or stats.embedding_dim
        if stats.stage_batch_size:
            self.stage_batch_size = min(self.stage_batch_size or stats.stage_batch_size, stats.stage_batch_size)

    @property
    def main_cpu_us_per_image(self) -> float:
        """Microseconds of CPU per image in the pipeline's own process, the stages' calls left out:
        what bounds a run whatever the decode workers and the GPU can do."""
        return self.main_cpu_seconds / self.images * 1e6 if self.images else 0.0

    @property
    def decode_cpu_us_per_image(self) -> float:
        """Microseconds of decode-worker CPU per image (reading its bytes and decoding it): what one
        more core buys, compared with a plain Pillow decode of the same size."""
        return self.decode_cpu_seconds / self.images * 1e6 if self.images else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["images_per_second"] = round(self.images_per_second, 2)
        data["main_cpu_us_per_image"] = round(self.main_cpu_us_per_image, 1)
        data["decode_cpu_us_per_image"] = round(self.decode_cpu_us_per_image, 1)
        data["shards_failed"] = [asdict(f) for f in self.shards_failed]
        return data

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def text(self) -> str:
        """One paragraph for the terminal."""
        parts = [
            f"{self.shards_written} of {self.shards_total} shard(s) written",
        ]
        if self.shards_skipped:
            parts.append(f"{self.shards_skipped} already done")
        if self.shards_failed:
            parts.append(f"{len(self.shards_failed)} failed")
        if self.shards_missing:
            parts.append(f"{self.shards_missing} missing (named by a brace range, not there yet)")
        line = ", ".join(parts) + (
            f"; {self.images} image(s), {self.images_failed} failed, "
            f"in {self.seconds:.1f}s ({self.images_per_second:.1f} images/s) -> {self.output_dir}"
        )
        if self.embedding_dim:
            line += f"; embedding dim {self.embedding_dim}"
        busy = {
            "setup": self.seconds_setup, "read": self.seconds_read, "decode": self.seconds_decode,
            "wait for input": self.seconds_wait_input, "stages": self.seconds_stages, "write": self.seconds_write,
        }
        line += ". Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in busy.items()) + "."
        if self.images:
            line += f" Main process CPU {self.main_cpu_us_per_image:.0f} us/image (stages' own calls aside)."
        if self.process_seconds is not None:
            line += f" Whole process {self.process_seconds:.1f}s."
        return line
