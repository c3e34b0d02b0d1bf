"""The region-based cell assignment (above ``FLAT_CELLS`` cells) against a direct reading of its
definition: a row's candidates are the union of its probed regions' candidate cells, its home the
most similar of them, its visits the ``neighbours`` other candidates nearest by ``delta`` within reach."""

from __future__ import annotations

import numpy as np
import pytest

from curator_cli.dedup.partition import Assigner, boundary_reach, region_candidates, train_cells


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def reference(model, x: np.ndarray, threshold: float, neighbours: int, probe: int):
    candidates = region_candidates(model)
    reach = boundary_reach(threshold) + 1e-4
    homes, visits, capped = [], [], 0
    for v in x:
        regions = np.argsort(-(model.regions @ v), kind="stable")[:probe]
        cells = np.unique(np.concatenate([candidates[r] for r in regions]))
        scores = model.cells[cells] @ v
        home = cells[scores.argmax()]
        gaps = np.sqrt(np.maximum(2 - 2 * model.cells[cells] @ model.cells[home], 1e-12))
        delta = (scores.max() - scores) / gaps
        within = (cells != home) & (delta <= reach)
        capped += int(neighbours > 0 and within.sum() > neighbours)  # not counted without neighbours
        order = np.argsort(np.where(within, delta, np.inf), kind="stable")[:neighbours]
        homes.append(home)
        visits.append({int(c) for c in cells[order][within[order]]})
    return np.array(homes), visits, capped


@pytest.mark.parametrize("neighbours,threshold", [(1, 0.9), (3, 0.9), (2, 0.995), (0, 0.9)])
def test_region_assignment_matches_its_definition(neighbours, threshold):
    rng = np.random.default_rng(3)
    topics = unit(rng.standard_normal((40, 32)))
    sample = unit(topics[rng.integers(0, 40, 6000)] + 0.6 * rng.standard_normal((6000, 32)) / np.sqrt(32))
    model = train_cells(sample, 120, seed=0)
    x = unit(topics[rng.integers(0, 40, 700)] + 0.6 * rng.standard_normal((700, 32)) / np.sqrt(32))
    assigner = Assigner(model, threshold, neighbours, "cpu")
    assert not assigner.flat  # 120 cells: scored through regions only because FLAT_CELLS is patched below
    got = assigner.assign(x)
    homes, visits, capped = reference(model, x, threshold, neighbours, assigner.probe)
    assert (got.home == homes).all()
    assert [set(row[row >= 0].tolist()) for row in got.visits] == visits
    assert got.capped == capped
    if neighbours:  # rows of both kinds: more cells within reach than visited, and fewer
        assert 0 < capped < len(x) and any(len(v) < neighbours for v in visits)


@pytest.fixture(autouse=True)
def regions_always(monkeypatch):
    from curator_cli.dedup import partition

    monkeypatch.setattr(partition, "FLAT_CELLS", 0)
