"""The end-of-run summary of ``curator dedup``: printed on stderr and written by ``--summary-json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curator_cli.io.commit import write_atomic

PHASES = ("read", "cluster", "assign", "pairs", "groups", "write")


@dataclass
class DedupSummary:
    """What a dedup run found and what it took."""

    inputs: int = 0
    rows: int = 0
    failed_rows: int = 0  # error set or no embedding: skipped
    invalid_vectors: int = 0  # zero or non-finite without an error: skipped
    vectors: int = 0  # compared
    dim: int | None = None
    threshold: float = 0.0
    keep: str = "first"
    cells: int = 0
    partitions: int = 0
    partitions_computed: int = 0
    partitions_reused: int = 0
    neighbours: int = 0
    visits_per_vector: float = 0.0  # neighbouring cells each vector was compared with, on average
    vectors_capped: int = 0  # vectors with more neighbouring cells in reach than --neighbours
    pairs: int = 0
    groups: int = 0
    images_in_groups: int = 0
    images_to_drop: int = 0
    images_kept: int = 0  # rows of keep.parquet
    groups_without_keep_value: int = 0  # --keep highest/largest: no member had a value, the first was kept
    dot_products: int = 0
    candidates_verified: int = 0
    largest_cell: int = 0
    device: str = "cpu"
    screen: str = "fp32"
    components: str = "union-find (numpy)"
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.to_json())

    def text(self) -> str:
        """A few lines for the terminal."""
        skipped = []
        if self.failed_rows:
            skipped.append(f"{self.failed_rows:,} failed row(s)")
        if self.invalid_vectors:
            skipped.append(f"{self.invalid_vectors:,} zero or non-finite vector(s)")
        lines = [
            f"dedup: {self.vectors:,} vector(s) of {self.rows:,} row(s) in {self.inputs:,} file(s)"
            + (f" compared, skipped {' and '.join(skipped)}" if skipped else " compared")
            + (f"; dim {self.dim}" if self.dim else ""),
            f"  {self.pairs:,} pair(s) with cosine >= {self.threshold:g} in {self.groups:,} group(s) of "
            f"{self.images_in_groups:,} image(s): {self.images_to_drop:,} to drop, {self.images_kept:,} kept "
            f"(--keep {self.keep})",
            f"  {self.cells:,} cell(s) in {self.partitions:,} partition(s) ({self.partitions_computed:,} computed, "
            f"{self.partitions_reused:,} reused); each vector compared with its cell and "
            f"{self.visits_per_vector:.2f} neighbouring cell(s) on average (at most {self.neighbours})",
        ]
        if self.groups_without_keep_value:
            lines.append(f"  {self.groups_without_keep_value:,} group(s) had no value for --keep {self.keep}: "
                         "their first image was kept")
        split = ", ".join(f"{name} {self.seconds.get(name, 0.0):.1f}" for name in PHASES)
        lines.append(f"  {self.seconds.get('total', 0.0):.1f} s ({split}); peak memory {self.peak_rss_mb:,.0f} MB; "
                     f"{self.device}, {self.screen} screen + fp32 check, {self.components}")
        if self.outputs:
            lines.append("  wrote " + ", ".join(self.outputs))
        return "\n".join(lines)
