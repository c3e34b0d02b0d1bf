"""What a rerun reuses: ``OUT/_dedup/``, the work of earlier runs on the same inputs and settings.

``run.json`` holds the run's key: every input's path, size, modification time and row count, the id
and embedding columns, the threshold, ``--neighbours``, ``--cells`` and ``--seed`` (what decides the
pairs). A rerun whose key matches reuses the k-means centroids, the spilled vectors and every
partition already done (``parts/part-NNNNN.npz``, each committed whole, as ``io.commit`` commits
outputs); one whose key differs starts over. ``--keep`` and ``--max-memory`` are not in the key: a
rerun with another ``--keep`` reuses every partition and only writes the outputs again.

The spilled vectors (``spill/``, the bulk of the disk use) are deleted partition by partition as
partitions finish; the rest is small (about 40 bytes per image that has a duplicate) and is kept, so
the folder can be deleted at any time without losing anything but the reuse.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curator_cli import __version__
from curator_cli.dedup.components import PairSummary
from curator_cli.dedup.pairs import CellStats
from curator_cli.io.commit import commit, temp_path, write_atomic

WORK_DIR = "_dedup"
FORMAT = 1  # bump when what is stored here changes meaning


@dataclass
class PartResult:
    """One partition's outcome: the reduced pairs and what it took."""

    summary: PairSummary
    stats: CellStats
    pairs: int


class WorkDir:
    """The files under ``OUT/_dedup`` and what they say is done."""

    def __init__(self, output: Path) -> None:
        self.root = output / WORK_DIR
        self.spill_dir = self.root / "spill"
        self.parts_dir = self.root / "parts"

    # --- the key -----------------------------------------------------------------------------
    def open(self, key: dict[str, Any]) -> bool:
        """Use the work of an earlier run with this key (True), or clear it and start over (False)."""
        key = {**key, "format": FORMAT}
        try:
            earlier = json.loads((self.root / "run.json").read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier is not None and earlier.get("key") == key:
            self.state = earlier.get("state", {})
            return True
        if self.root.exists():
            shutil.rmtree(self.root)
        self.parts_dir.mkdir(parents=True)
        self.state = {}
        self._key = key
        self._write_run(key)
        return False

    def _write_run(self, key: dict[str, Any]) -> None:
        write_atomic(self.root / "run.json", json.dumps({"key": key, "state": self.state, "tool_version": __version__},
                                                        indent=1, sort_keys=True) + "\n")

    def remember(self, **values: Any) -> None:
        """Record derived facts (counts, the partition count) next to the key."""
        key = json.loads((self.root / "run.json").read_text())["key"]
        self.state.update(values)
        self._write_run(key)

    # --- rows, centroids -----------------------------------------------------------------------
    def save_array(self, name: str, array: np.ndarray) -> None:
        path = self.root / f"{name}.npy"
        temp = temp_path(path)
        with open(temp, "wb") as handle:
            np.save(handle, array)
        commit(temp, path)

    def load_array(self, name: str) -> np.ndarray | None:
        try:
            return np.load(self.root / f"{name}.npy")
        except (OSError, ValueError):
            return None

    # --- spill ---------------------------------------------------------------------------------
    def spill_ready(self, partitions: list[int], record_bytes: int) -> np.ndarray | None:
        """The spill index, if the spill finished and every partition in ``partitions`` still has its file
        at the size the index says; else None (spill again)."""
        try:
            done = json.loads((self.spill_dir / "done.json").read_text())
            index = np.load(self.spill_dir / "index.npy")
        except (OSError, ValueError):
            return None
        sizes = {int(p): int(n) for p, n in done["records"].items()}
        for p in partitions:
            path = self.spill_dir / f"partition-{p:05d}.bin"
            if not path.is_file() or path.stat().st_size != sizes.get(p, 0) * record_bytes:
                return None
        return index

    def mark_spilled(self, index: np.ndarray, records: np.ndarray) -> None:
        temp = temp_path(self.spill_dir / "index.npy")
        with open(temp, "wb") as handle:
            np.save(handle, index)
        commit(temp, self.spill_dir / "index.npy")
        write_atomic(self.spill_dir / "done.json", json.dumps({"records": {str(p): int(n) for p, n in enumerate(records)}}))

    def reset_spill(self) -> None:
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        self.spill_dir.mkdir(parents=True)

    def drop_spill(self, partition: int | None = None) -> None:
        """Delete one partition's spilled vectors (it is done), or all of them."""
        if partition is None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        else:
            (self.spill_dir / f"partition-{partition:05d}.bin").unlink(missing_ok=True)

    # --- partitions ----------------------------------------------------------------------------
    def part_path(self, partition: int) -> Path:
        return self.parts_dir / f"part-{partition:05d}.npz"

    def pairs_path(self, partition: int) -> Path:
        return self.parts_dir / f"pairs-{partition:05d}.bin"

    def done(self, partitions: int, with_pairs: bool) -> set[int]:
        """Partitions whose result is committed (and, with ``with_pairs``, their pair list too)."""
        return {p for p in range(partitions)
                if self.part_path(p).is_file() and (not with_pairs or self.pairs_path(p).is_file())}

    def save_part(self, partition: int, result: PartResult) -> None:
        path = self.part_path(partition)
        temp = temp_path(path)
        s = result.summary
        stats = np.array([result.pairs] + [getattr(result.stats, n) for n in _STAT_NAMES], np.int64)
        with open(temp, "wb") as handle:
            np.savez(handle, link_a=s.link_a, link_b=s.link_b, best_node=s.best_node, best_partner=s.best_partner,
                     best_sim=s.best_sim, stats=stats)
        commit(temp, path)

    def load_part(self, partition: int) -> PartResult:
        with np.load(self.part_path(partition)) as data:
            summary = PairSummary(data["link_a"], data["link_b"], data["best_node"], data["best_partner"],
                                  data["best_sim"])
            stats = [int(v) for v in data["stats"]]
        return PartResult(summary, CellStats(**dict(zip(_STAT_NAMES, stats[1:]))), stats[0])


_STAT_NAMES = ("cells", "home_vectors", "visitor_vectors", "dot_products", "candidates", "pairs", "largest_cell")
