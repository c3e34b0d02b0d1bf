"""Vectors on disk, by cell: what lets the pairs step hold one cell at a time, not the dataset.

The assign pass writes every vector once for its home cell and once more for each cell it visits,
in the input's float type with its inverse norm (so that each cell is normalised exactly as a brute
force over the inputs would be). Cells are grouped into partitions (contiguous cell ranges), one
file per partition, so that a partition is a unit of work and of resume, and the number of open
files stays small. Within a file, each flush of the assign pass (up to 256 MB of records, or what the
memory bound allows) appends, per cell, one run of home records and one of visitor records (each
sorted by global index); ``index.npy`` lists the runs,
so a cell's homes and visitors are read back without reading the rest of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

HOME, VISITOR = 0, 1
INDEX_FILE = "index.npy"
_INDEX_COLUMNS = 5  # partition, cell, kind, offset (records), count


def record_dtype(dim: int, neighbour_columns: int, value_type: str) -> np.dtype:
    """One spilled vector: global index, home cell, 1/|v|, the cells it visits, its values."""
    return np.dtype([("idx", "<i8"), ("home", "<i4"), ("inv", "<f4"), ("visits", "<i4", (neighbour_columns,)),
                     ("vec", value_type, (dim,))])


@dataclass(frozen=True)
class SpillLayout:
    """Where a run's spilled vectors go: ``partitions`` files over ``cells`` cells."""

    directory: Path
    cells: int
    partitions: int
    dim: int
    neighbour_columns: int
    value_type: str

    @property
    def dtype(self) -> np.dtype:
        return record_dtype(self.dim, self.neighbour_columns, self.value_type)

    def partition_of(self, cells: np.ndarray) -> np.ndarray:
        """Partition of each cell: contiguous ranges of cells."""
        return (cells.astype(np.int64) * self.partitions) // self.cells

    def path(self, partition: int) -> Path:
        return self.directory / f"partition-{partition:05d}.bin"


class SpillWriter:
    """Appends assigned vectors to the partition files; partitions in ``skip`` (already done) get
    nothing. Records are gathered up to ``flush_bytes`` before they are sorted by cell and written,
    so that a cell's records form few runs (the index grows with flushes x cells, not batches x cells)."""

    def __init__(self, layout: SpillLayout, skip: set[int], flush_bytes: int = 256 << 20) -> None:
        self.layout = layout
        self.skip = skip
        self.flush_records = max(1, flush_bytes // layout.dtype.itemsize)
        self.records = np.zeros(layout.partitions, np.int64)
        self.runs: list[np.ndarray] = []
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (records, cell, kind)
        self.pending_records = 0
        layout.directory.mkdir(parents=True, exist_ok=True)
        for partition in range(layout.partitions):
            if partition not in skip:
                layout.path(partition).write_bytes(b"")

    def add(self, idx: np.ndarray, vectors: np.ndarray, inv: np.ndarray, home: np.ndarray, visits: np.ndarray) -> int:
        """Spill one batch of vectors (only those to compare): a home record each, and one visitor
        record per visited cell. Returns the number of records."""
        rows = len(visits)
        visitor_row, visitor_col = np.nonzero(visits >= 0)
        source = np.concatenate([np.arange(rows), visitor_row])
        cell = np.concatenate([home, visits[visitor_row, visitor_col]]).astype(np.int64)
        kind = np.concatenate([np.full(rows, HOME, np.int8), np.full(len(visitor_row), VISITOR, np.int8)])
        if self.skip:
            wanted = ~np.isin(self.layout.partition_of(cell), list(self.skip))
            source, cell, kind = source[wanted], cell[wanted], kind[wanted]
        records = np.empty(len(source), self.layout.dtype)
        records["idx"] = idx[source]
        records["home"] = home[source]
        records["inv"] = inv[source]
        records["visits"] = visits[source]
        records["vec"] = vectors[source]
        self.pending.append((records, cell, kind))
        self.pending_records += len(records)
        if self.pending_records >= self.flush_records:
            self.flush()
        return len(records)

    def flush(self) -> None:
        """Write what is gathered: sorted by (cell, kind, index), one run per (cell, kind)."""
        if not self.pending:
            return
        records = np.concatenate([p[0] for p in self.pending])
        cell = np.concatenate([p[1] for p in self.pending])
        kind = np.concatenate([p[2] for p in self.pending])
        self.pending, self.pending_records = [], 0
        if not len(records):
            return
        order = np.lexsort((records["idx"], kind, cell))
        records, cell, kind = records[order], cell[order], kind[order]
        partition = self.layout.partition_of(cell)
        starts = np.flatnonzero(np.r_[True, (cell[1:] != cell[:-1]) | (kind[1:] != kind[:-1])])
        counts = np.diff(np.r_[starts, len(records)])
        run_partition = partition[starts]
        # partitions are contiguous cell ranges, so each partition's records are contiguous too
        for p in np.unique(run_partition):
            chosen = np.flatnonzero(run_partition == p)
            first, last = starts[chosen[0]], starts[chosen[-1]] + counts[chosen[-1]]
            with open(self.layout.path(int(p)), "ab") as handle:
                records[first:last].tofile(handle)
            offsets = self.records[p] + (starts[chosen] - first)
            self.runs.append(np.stack([np.full(len(chosen), p), cell[starts[chosen]], kind[starts[chosen]],
                                       offsets, counts[chosen]], axis=1).astype(np.int64))
            self.records[p] += last - first

    def index(self) -> np.ndarray:
        """Every run written (after a last :meth:`flush`): (partition, cell, kind, offset, count)."""
        self.flush()
        return np.concatenate(self.runs) if self.runs else np.zeros((0, _INDEX_COLUMNS), np.int64)


@dataclass
class Runs:
    """The runs (offset, count) that hold one cell's homes, or its visitors, in one partition file."""

    offsets: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def read(self, handle: BinaryIO, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
        """Records ``start:stop`` of the concatenated runs."""
        out = np.empty(stop - start, dtype)
        ends = np.cumsum(self.counts)
        begins = ends - self.counts
        filled = 0
        for offset, begin, end in zip(self.offsets, begins, ends):
            lo, hi = max(begin, start), min(end, stop)
            if lo >= hi:
                continue
            handle.seek(int(offset + lo - begin) * dtype.itemsize)
            chunk = np.fromfile(handle, dtype=dtype, count=int(hi - lo))
            if len(chunk) != hi - lo:
                raise OSError(f"spill file {getattr(handle, 'name', '?')} is shorter than its index says")
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return out


def cell_runs(index: np.ndarray, partition: int) -> dict[int, tuple[Runs, Runs]]:
    """For each cell of ``partition``: (home runs, visitor runs), in writing order."""
    mine = index[index[:, 0] == partition]
    mine = mine[np.argsort(mine[:, 1], kind="stable")]  # by cell, writing order kept within a cell
    out: dict[int, tuple[Runs, Runs]] = {}
    cells, starts = np.unique(mine[:, 1], return_index=True)
    for cell, rows in zip(cells, np.split(mine, starts[1:])):
        homes, visitors = rows[rows[:, 2] == HOME], rows[rows[:, 2] == VISITOR]
        out[int(cell)] = (Runs(homes[:, 3].copy(), homes[:, 4].copy()), Runs(visitors[:, 3].copy(), visitors[:, 4].copy()))
    return out
