"""Step 2, partition: k-means cells over the vectors, each vector's home cell, and the neighbouring
cells it lies near enough to hold one of its pairs.

**Cells.** faiss spherical k-means (``faiss.Kmeans``) trained on a sample, in two levels: about
sqrt(k) regions, then each region's share of the k cells within it. faiss is the field's standard
for clustering and nearest neighbours, well kept, and its k-means handles initialisation and empty
clusters. Cells hold about ``CELL_SIZE`` vectors whatever the dataset's size, so the pairs step
costs the same per vector at 100k and at 100M. Up to ``FLAT_CELLS`` cells (about 4 million
vectors) every vector is scored against every cell, so its home is its most similar cell exactly
(k scores per vector: the cost per vector grows with k up to there). Above that, against the
candidate cells of its ``PROBE_REGIONS`` most similar regions (each region's cells and their
nearest cells beyond it: IVF's coarse-to-fine idea): sqrt(k) region scores plus ``PROBE_REGIONS``
candidate lists of about 5 sqrt(k) cells each (about 2,000 scores per vector at 9,990 cells, not
9,990), at the price of a home that is now and then the second-best cell (the bench measures what
that costs in recall).

**Boundary points.** A pair ``x, y`` with cosine >= T whose homes differ is found only if ``x`` is
also compared with ``y``'s cell (or ``y`` with ``x``'s). For unit vectors and unit centroids, ``y``
lies in cell B rather than ``x``'s home A only if it is on B's side of the hyperplane that bisects
``c_A`` and ``c_B`` (it passes through the origin), at distance
``delta_B = (x.c_A - x.c_B) / |c_A - c_B|`` from ``x``; and a unit ``x`` further than
``sqrt(1 - T^2)`` from such a hyperplane has no unit ``y`` with ``x.y >= T`` on its other side. So a
cell with ``delta_B > sqrt(1 - T^2)`` provably holds none of ``x``'s pairs; the others are ranked
by ``delta_B`` and ``x`` visits the ``neighbours`` nearest.
In 512 dimensions the proof rarely rules a cell out (most boundaries lie within reach), so the
ranking is what bounds the work; the measured recall is in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KMEANS_ITERATIONS = 10
SAMPLE_PER_CELL = 40  # faiss asks for at least 39 training points per centroid
CELL_SIZE = 1000  # vectors per cell the cell count aims at
MAX_CELLS = 1 << 17
SINGLE_CELL_BELOW = 4096  # fewer vectors than this: one cell, every pair compared
FLAT_CELLS = 4096  # up to this many cells (about 4 million vectors) every vector is scored against every cell
PROBE_REGIONS = 4  # above it: regions whose candidate cells a vector is scored against
ADJACENT_CELLS = 16  # a region's candidates: its cells and each one's most similar cells


def choose_cells(vectors: int) -> int:
    """How many cells: about ``CELL_SIZE`` vectors each (one below ``SINGLE_CELL_BELOW`` vectors)."""
    if vectors < SINGLE_CELL_BELOW:
        return 1
    return int(max(1, min(round(vectors / CELL_SIZE), vectors // SAMPLE_PER_CELL, MAX_CELLS)))


def boundary_reach(threshold: float) -> float:
    """``sin(arccos T)``: a unit vector ``x`` further than this from a hyperplane through the origin
    has no unit vector with cosine >= T to it on the hyperplane's other side."""
    return math.sqrt(max(0.0, 1.0 - threshold * threshold))


@dataclass
class CellModel:
    """Regions and the cells within them (unit centroids); cells of region ``j`` are
    ``cells[offsets[j]:offsets[j + 1]]``."""

    regions: np.ndarray  # regions x dim, float32
    cells: np.ndarray  # cells x dim, float32
    offsets: np.ndarray  # int64, regions + 1

    @property
    def count(self) -> int:
        return len(self.cells)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"regions": self.regions, "cells": self.cells, "offsets": self.offsets}


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _kmeans(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """At most ``k`` unit centroids of unit vectors (rows x dim, at least one row) by faiss's
    spherical k-means; the normalised mean for one, the points themselves for k or fewer points."""
    if k <= 1:
        return _normalise(sample.mean(axis=0, keepdims=True))
    if len(sample) <= k:
        return _normalise(sample)
    import faiss

    kmeans = faiss.Kmeans(sample.shape[1], k, niter=KMEANS_ITERATIONS, spherical=True, seed=seed,
                          max_points_per_centroid=len(sample) // k + 1, verbose=False)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return _normalise(kmeans.centroids)


def train_cells(sample: np.ndarray, cells: int, seed: int) -> CellModel:
    """Regions, then each region's cells, from a sample of unit vectors (float32, rows x dim)."""
    dim = sample.shape[1]
    if cells <= 1 or len(sample) < 2:
        centre = _kmeans(sample, 1, seed) if len(sample) else np.ones((1, dim), np.float32) / math.sqrt(dim)
        return CellModel(centre, centre.copy(), np.array([0, 1], np.int64))
    regions = _kmeans(sample, max(1, min(round(math.sqrt(cells)), len(sample) // SAMPLE_PER_CELL)), seed)
    member = (sample @ regions.T).argmax(axis=1)
    sizes = np.bincount(member, minlength=len(regions))
    shares = cells * sizes / len(sample)  # each region's cells: its share of the sample, summing to ``cells``
    counts = np.floor(shares).astype(np.int64)
    counts[np.argsort(counts - shares)[: cells - counts.sum()]] += 1
    counts = np.maximum(1, np.minimum(counts, np.maximum(1, sizes // SAMPLE_PER_CELL)))
    parts, offsets = [], [0]
    for j in range(len(regions)):
        points = sample[member == j]
        parts.append(_kmeans(points, int(counts[j]), seed + 1 + j) if len(points) else regions[j:j + 1])
        offsets.append(offsets[-1] + len(parts[-1]))
    return CellModel(regions, np.concatenate(parts), np.array(offsets, np.int64))


@dataclass
class Assignment:
    """Where a batch of vectors goes: its home cell and up to ``neighbours`` cells it visits (-1: none)."""

    home: np.ndarray  # int32, rows
    visits: np.ndarray  # int32, rows x max(1, neighbours), nearest boundary first, -1 padded
    capped: int  # vectors with more cells within reach than ``neighbours``


def region_candidates(model: CellModel, adjacent: int | None = None) -> list[np.ndarray]:
    """For each region, the cells a vector homed in it is scored against: the region's own cells and
    each one's ``adjacent`` most similar cells, wherever they are (so that a vector near the edge of
    its region still sees the cells beyond the edge). Sorted cell ids, one array per region."""
    cells = model.cells
    adjacent = ADJACENT_CELLS if adjacent is None else adjacent
    nearest = np.zeros((len(cells), min(adjacent, len(cells))), np.int64)
    for lo in range(0, len(cells), 4096):  # blocks of the cell x cell similarity matrix
        sims = cells[lo:lo + 4096] @ cells.T
        nearest[lo:lo + 4096] = np.argpartition(-sims, nearest.shape[1] - 1, axis=1)[:, : nearest.shape[1]]
    offsets = model.offsets
    return [np.unique(np.concatenate([np.arange(offsets[j], offsets[j + 1]), nearest[offsets[j]:offsets[j + 1]].ravel()]))
            for j in range(len(model.regions))]


class Assigner:
    """Assigns unit vectors to cells on the run's device: scores against the regions, then against the
    candidate cells (:func:`region_candidates`) of the ``PROBE_REGIONS`` best regions; the home is the
    best of those, and ``delta`` ranks the others."""

    def __init__(self, model: CellModel, threshold: float, neighbours: int, device: str) -> None:
        import torch

        self.device = torch.device(device)
        # float32, not bf16: the scores are few (a few sqrt(k) per vector), and on CPUs bf16 matmuls of
        # ever-changing shapes (rows per region differ in every batch) keep memory they never return
        self.model = model
        self.neighbours = min(neighbours, model.count - 1)
        self.columns = max(1, neighbours)
        self.cells = torch.from_numpy(model.cells).to(self.device)
        self.reach = boundary_reach(threshold) + 1e-4  # float32 rounding
        self.flat = model.count <= FLAT_CELLS
        if self.flat:  # every cell scored: the home is the most similar cell, exactly
            self.gram = self.cells @ self.cells.T
            return
        self.probe = min(PROBE_REGIONS, len(model.regions))
        candidates = region_candidates(model)
        self.widest = max(len(c) for c in candidates)
        self.regions = torch.from_numpy(model.regions).to(self.device)
        self.candidate_ids = [torch.from_numpy(c).to(self.device) for c in candidates]
        self.candidate_vectors = [self.cells[c] for c in self.candidate_ids]

    def rows_per_batch(self, budget: int) -> int:
        """Rows whose candidate matrices (rows x scored cells, a few float32 copies) fit in ``budget``."""
        width = self.model.count if self.flat else len(self.model.regions) + self.probe * self.widest
        return int(max(256, min(65536, budget // (width * 24 + 1))))

    def _flat(self, x, visits: np.ndarray) -> tuple[object, int]:  # -> (home tensor, capped)
        import torch

        scores = x @ self.cells.T
        best, home = scores.max(dim=1)
        if self.neighbours == 0:
            return home, 0
        gaps = (2.0 - 2.0 * self.gram[home]).clamp_min_(1e-12).sqrt_()  # |c_A - c_B| for unit centroids
        delta = (best[:, None] - scores).div_(gaps)
        delta[torch.arange(len(x), device=self.device), home] = float("inf")
        delta.masked_fill_(delta > self.reach, float("inf"))
        capped = int((torch.isfinite(delta).sum(dim=1) > self.neighbours).sum())
        nearest, cells = delta.topk(self.neighbours, dim=1, largest=False)
        chosen = torch.where(torch.isfinite(nearest), cells, torch.full_like(cells, -1))
        visits[:, : self.neighbours] = chosen.to(torch.int32).cpu().numpy()
        return home, capped

    def _regions(self, x, visits: np.ndarray) -> tuple[object, int]:  # -> (home tensor, capped)
        """Scores each row against the candidate cells of its ``probe`` best regions, region by region
        (a row's probed regions are its *entries*; the entries are sorted by region once, so each
        region's rows are one contiguous block and one matmul): the home is the best cell over a
        row's entries; each entry keeps only its ``neighbours + 1`` smallest ``delta``, and the few
        left per row are merged (a cell can be a candidate of two probed regions: ranked once).

        Every entry's candidates are distinct cells, so a row's ``neighbours`` nearest distinct cells
        are each among the ``neighbours`` nearest of every entry that holds them, and an entry with
        ``neighbours + 1`` cells within reach proves the row capped: the merge of the few is exact.
        (An earlier version sorted every row's whole candidate list, probe x a few hundred cells,
        twice, and scattered the scores into a padded tensor: 80 % of the time went there.)"""
        import torch

        rows, probe, n = len(x), self.probe, self.neighbours
        top = (x @ self.regions.T).topk(probe, dim=1).indices.reshape(-1)  # entry e: row e // probe
        order = top.argsort(stable=True)
        entry_row = order // probe
        counts = torch.bincount(top, minlength=len(self.candidate_ids)).tolist()
        xs = x[entry_row]  # the entries' vectors, grouped by region
        blocks, lo = [], 0
        best = torch.empty(len(order), device=self.device)
        best_cell = torch.empty(len(order), dtype=torch.long, device=self.device)
        for region, count in enumerate(counts):
            if count:
                scores = xs[lo:lo + count] @ self.candidate_vectors[region].T
                value, where = scores.max(dim=1)
                best[lo:lo + count], best_cell[lo:lo + count] = value, self.candidate_ids[region][where]
                blocks.append((region, lo, count, scores))
            lo += count
        # back in row order: rows x probe
        by_row = torch.empty_like(order)
        by_row[order] = torch.arange(len(order), device=self.device)
        row_best, slot = best[by_row].reshape(rows, probe).max(dim=1)
        home = best_cell[by_row].reshape(rows, probe).gather(1, slot[:, None]).squeeze(1)
        if n == 0:
            return home, 0
        keep = n + 1
        near_delta = torch.full((len(order), keep), float("inf"), device=self.device)
        near_cell = torch.full((len(order), keep), -1, dtype=torch.long, device=self.device)
        entry_home, entry_best = home[entry_row], row_best[entry_row]
        for region, lo, count, scores in blocks:
            ids = self.candidate_ids[region]
            homes = entry_home[lo:lo + count]
            # |c_A - c_B| = sqrt(2 - 2 c_A.c_B) for unit centroids, for every candidate cell B
            gaps = (2.0 - 2.0 * (self.cells[homes] @ self.candidate_vectors[region].T)).clamp_min_(1e-12).sqrt_()
            delta = (entry_best[lo:lo + count, None] - scores).div_(gaps)
            delta.masked_fill_((ids[None, :] == homes[:, None]) | (delta > self.reach), float("inf"))
            k = min(keep, len(ids))
            value, where = delta.topk(k, dim=1, largest=False)
            near_delta[lo:lo + count, :k], near_cell[lo:lo + count, :k] = value, ids[where]
        capped_entries = torch.isfinite(near_delta[:, -1])  # keep finite cells in one entry: more than n
        # the few per row, merged: sorted by cell, each cell's smallest delta first; repeats dropped
        delta = near_delta[by_row].reshape(rows, probe * keep)
        cells = near_cell[by_row].reshape(rows, probe * keep)
        cells = torch.where(torch.isfinite(delta), cells, torch.full_like(cells, -1))
        by_delta = delta.argsort(dim=1, stable=True)
        delta, cells = delta.gather(1, by_delta), cells.gather(1, by_delta)
        by_cell = cells.argsort(dim=1, stable=True)
        delta, cells = delta.gather(1, by_cell), cells.gather(1, by_cell)
        repeated = torch.zeros_like(delta, dtype=torch.bool)
        repeated[:, 1:] = cells[:, 1:] == cells[:, :-1]
        delta[repeated | (cells < 0)] = float("inf")
        distinct = torch.isfinite(delta).sum(dim=1)
        capped = int(((distinct > n) | capped_entries[by_row].reshape(rows, probe).any(dim=1)).sum())
        nearest, pick = delta.topk(n, dim=1, largest=False)
        chosen = torch.where(torch.isfinite(nearest), cells.gather(1, pick), torch.full_like(pick, -1))
        visits[:, : chosen.shape[1]] = chosen.to(torch.int32).cpu().numpy()
        return home, capped

    def assign(self, unit: np.ndarray) -> Assignment:
        """Home cell and visited cells of each row of ``unit`` (float32 unit vectors)."""
        import torch

        rows = len(unit)
        visits = np.full((rows, self.columns), -1, dtype=np.int32)
        if self.model.count == 1:
            return Assignment(np.zeros(rows, np.int32), visits, 0)
        x = torch.from_numpy(unit).to(self.device)
        if self.flat:
            home, capped = self._flat(x, visits)
        else:
            home, capped = self._regions(x, visits)
        return Assignment(home.to(torch.int32).cpu().numpy(), visits, capped)
