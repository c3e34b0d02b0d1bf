"""Step 3, pairs: every pair at or above the threshold within a cell, exactly.

Within a cell, each home vector is compared with every other home vector and each visitor (a vector
from a neighbouring cell, ``partition``) with every home vector, block by block (torch matmul on
normalised vectors, on the run's device: CUDA when there is one, all CPU cores otherwise).

**Exact, and fast on CPUs with bf16.** Where bf16 matrix multiplication is native (CUDA, and CPUs
with AVX-512 BF16 or AMX: about 2.7x fp32's speed on this project's 2-core machine), blocks are
screened in bf16 with a margin larger than bf16's worst-case error for unit vectors (0.0125 below
the threshold), and every candidate is then recomputed in float32: a pair is reported only if its
float32 cosine is at or above the threshold. Elsewhere blocks are computed in float32 directly.

A pair of a visitor and a home may be found in both of their cells (when each visits the other's
cell); it is reported by the smaller cell only, so pairs are unique without a global sort.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from curator_cli.dedup.spill import Runs

BF16_MARGIN = 0.0125  # > 2u + u^2 + u/2 for bf16 (u = 2^-8) plus float32 accumulation, for unit vectors
VERIFY_CHUNK = 1 << 16
PAD_ROWS = 256


@dataclass
class Edges:
    """Pairs by global index (a < b) with their float32 cosine similarity."""

    a: np.ndarray
    b: np.ndarray
    sim: np.ndarray

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.a)


@dataclass
class CellStats:
    """What the pairs step did, for the summary."""

    cells: int = 0
    home_vectors: int = 0
    visitor_vectors: int = 0
    dot_products: int = 0
    candidates: int = 0  # bf16 screen hits recomputed in float32
    pairs: int = 0
    largest_cell: int = 0

    def add(self, other: CellStats) -> None:
        for name in ("cells", "home_vectors", "visitor_vectors", "dot_products", "candidates", "pairs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.largest_cell = max(self.largest_cell, other.largest_cell)


@dataclass
class _Block:
    """Rows of a cell on the device: unit vectors, global indices, homes and visited cells."""

    unit: object  # torch.Tensor float32 rows x dim
    screen: object  # the same in the screening type (or the same tensor)
    idx: np.ndarray
    home: np.ndarray
    visits: np.ndarray


@dataclass
class PairFinder:
    """Finds the pairs of one cell. ``block_rows`` bounds a block (and so the similarity tile)."""

    threshold: float
    device: str
    screen: str  # "bf16" or "fp32"
    block_rows: int
    stats: CellStats = field(default_factory=CellStats)

    def __post_init__(self) -> None:
        import torch

        self._torch = torch
        self._device = torch.device(self.device)
        if self._device.type == "cuda":  # bf16 reductions in bf16 would break the screening margin
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def _block(self, records: np.ndarray) -> _Block:
        """Records -> unit vectors on the device, padded with zero rows to a multiple of ``PAD_ROWS``: a
        zero row scores 0 against everything (below any threshold, which is > 0), and a few shapes
        let the matmul kernels be reused across cells instead of prepared for each."""
        torch = self._torch
        rows = len(records)
        padded = -(-rows // PAD_ROWS) * PAD_ROWS
        unit = np.zeros((padded, records["vec"].shape[1]), np.float32)
        np.multiply(records["vec"], records["inv"][:, None], out=unit[:rows], casting="unsafe")
        unit = torch.from_numpy(unit).to(self._device)
        screen = unit.to(torch.bfloat16) if self.screen == "bf16" else unit
        return _Block(unit, screen, records["idx"], records["home"], records["visits"])

    def _tile(self, x: _Block, y: _Block, diagonal: bool, stats: CellStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local (row, column, float32 cosine) of the pairs >= threshold between blocks ``x`` and ``y``
        (``diagonal``: x is y, each pair once, row < column). Only rows whose best score passes the
        screen are searched: most rows of most tiles have no pair."""
        torch = self._torch
        t = self.threshold
        stats.dot_products += len(x.idx) * len(y.idx) // (2 if diagonal else 1)
        bf16 = self.screen == "bf16"
        scores = (x.screen @ y.screen.T) if bf16 else (x.unit @ y.unit.T)
        cut = t - BF16_MARGIN if bf16 else t
        if diagonal:
            scores.fill_diagonal_(-2.0)
        hit_rows = (scores.amax(dim=1) >= cut).nonzero().flatten()
        if not len(hit_rows):
            nothing = np.zeros(0, np.int64)
            return nothing, nothing, np.zeros(0, np.float32)
        some = scores[hit_rows]
        local, cols = (some >= cut).nonzero(as_tuple=True)
        rows = hit_rows[local]
        if diagonal:
            upper = rows < cols
            rows, cols, local = rows[upper], cols[upper], local[upper]
        if not bf16:
            sims = some[local, cols]
        else:
            stats.candidates += len(rows)
            if len(rows) * 16 > some.numel():  # dense hits: one float32 product is cheaper than gathering
                sims = (x.unit[hit_rows] @ y.unit.T)[local, cols]
            else:
                sims = torch.empty(len(rows), dtype=torch.float32, device=self._device)
                for s in range(0, len(rows), VERIFY_CHUNK):
                    r, c = rows[s:s + VERIFY_CHUNK], cols[s:s + VERIFY_CHUNK]
                    sims[s:s + VERIFY_CHUNK] = (x.unit[r] * y.unit[c]).sum(dim=1)
        keep = sims >= t
        return rows[keep].cpu().numpy(), cols[keep].cpu().numpy(), sims[keep].cpu().numpy()

    def cell(self, cell: int, homes: Runs, visitors: Runs, read: Callable[[Runs, int, int], np.ndarray]) -> Edges:
        """Every pair of cell ``cell``: home-home, and visitor-home where this cell reports it."""
        h, v = homes.total, visitors.total
        stats = CellStats(cells=1, home_vectors=h, visitor_vectors=v, largest_cell=h)
        found: list[Edges] = []
        b = self.block_rows
        home_spans = [(s, min(s + b, h)) for s in range(0, h, b)]
        visitor_spans = [(s, min(s + b, v)) for s in range(0, v, b)]
        resident = h + v <= b  # small cell: everything in one load
        cached: dict[tuple[str, int], _Block] = {}

        def load(kind: str, span: tuple[int, int]) -> _Block:
            key = (kind, span[0])
            if key not in cached:
                if not resident:
                    cached.clear()
                cached[key] = self._block(read(homes if kind == "h" else visitors, *span))
            return cached[key]

        if h >= 1 and (h >= 2 or v):
            for i, span_i in enumerate(home_spans):
                for span_j in home_spans[i:]:
                    x, y = load("h", span_i), load("h", span_j)
                    rows, cols, sims = self._tile(x, y, span_i == span_j, stats)
                    xi, yi = x.idx[rows], y.idx[cols]
                    found.append(Edges(np.minimum(xi, yi), np.maximum(xi, yi), sims))
            for span_i in visitor_spans:
                x = load("v", span_i)
                for span_j in home_spans:
                    y = load("h", span_j)
                    rows, cols, sims = self._tile(x, y, False, stats)
                    visitor_home = x.home[rows]
                    # also found in the visitor's own cell when this home visits it: the smaller cell reports
                    twice = (y.visits[cols] == visitor_home[:, None]).any(axis=1)
                    mine = ~twice | (cell < visitor_home)
                    xi, yi = x.idx[rows[mine]], y.idx[cols[mine]]
                    found.append(Edges(np.minimum(xi, yi), np.maximum(xi, yi), sims[mine]))
        edges = Edges(*(np.concatenate([getattr(e, n) for e in found]) if found else getattr(Edges.empty(), n)
                        for n in ("a", "b", "sim")))
        stats.pairs = len(edges)
        self.stats.add(stats)
        return edges
