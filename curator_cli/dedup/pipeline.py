"""``curator dedup`` from inputs to outputs: the steps in order, what is reused, the memory bound.

**Memory.** ``--max-memory`` bounds what the run holds, not the number of images: vectors are read
a batch at a time (sized from the bound), the k-means sample is capped, vectors are spilled to disk
by cell (``spill``), and the pairs step holds one cell, or one block of a large cell, at a time.
What grows with the dataset is small: one byte per input row (which rows were compared) and about
40 bytes per image that has a duplicate (the pairs reduced to a spanning forest and each image's
best pair). Torch, faiss and pyarrow take about 0.6 GB of the bound before any work.

**Passes over the inputs.** 1) read: every vector once, to sample the k-means training set (only
when the centroids are not reused); 2) assign: again, to give each vector its cells and spill it;
3) pairs, per partition, from the spill; 4) the outputs read the id (and shard) columns only.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curator_cli import __version__
from curator_cli.dedup.components import PairSummary, build_groups
from curator_cli.dedup.inputs import InputSet, read_vectors
from curator_cli.dedup.keep import choose_keep, member_values
from curator_cli.dedup.pairs import CellStats, Edges, PairFinder
from curator_cli.dedup.partition import (SAMPLE_PER_CELL, SINGLE_CELL_BELOW, Assigner, CellModel, choose_cells,
                                         train_cells)
from curator_cli.dedup.settings import PERCEPTUAL_DEFAULT_THRESHOLD, DedupError, DedupSettings
from curator_cli.dedup.spill import SpillLayout, SpillWriter, cell_runs
from curator_cli.dedup.summary import DedupSummary
from curator_cli.dedup.workdir import PartResult, WorkDir
from curator_cli.dedup.write import (DUPLICATES_FILE, KEEP_FILE, PAIR_RECORD, PAIRS_FILE, commit_outputs,
                                     duplicates_table, read_members, write_keep, write_pairs, write_table)
from curator_cli.io.commit import commit, temp_path, write_atomic
from curator_cli.io.manifest import SUCCESS_FILE

BASELINE_BYTES = 700 << 20  # the interpreter, torch, faiss and pyarrow, before any work
PARTITION_SPILL_BYTES = 256 << 20  # spilled vectors per partition (the unit of resume)
MAX_PARTITIONS = 1024
MIN_PARTITIONS = 8  # even a small run resumes in steps (never more partitions than cells)

Progress = Callable[[str], None]


def resolve_threshold(threshold: float | None, inputs: InputSet) -> float:
    """The threshold given, or the measured default when every input was made by the ``perceptual``
    stage; any other embedding has no default (a wrong one would silently drop good images)."""
    if threshold is not None:
        return threshold
    if inputs.made_by_perceptual():
        return PERCEPTUAL_DEFAULT_THRESHOLD
    stages = sorted({"/".join(f.stages) if f.stages else "not curator embed" for f in inputs.files})
    raise DedupError(f"name a --threshold: the default ({PERCEPTUAL_DEFAULT_THRESHOLD}) was measured for the "
                     f"perceptual stage, and these embeddings come from {', '.join(stages[:3])} "
                     "(for CLIP, near-duplicates score about 0.95 and above)")


@dataclass
class _Budget:
    """``--max-memory`` split between the steps."""

    work: int
    dim: int

    @property
    def read_rows(self) -> int:
        """Rows per batch read: a parquet row group's worth (pyarrow buffers several times a batch's
        size while decoding it, and its allocator keeps what it took), fewer for very wide vectors."""
        return int(max(256, min(8192, self.work // 64 // max(1, self.dim * 4))))

    @property
    def sample_rows(self) -> int:
        return int(self.work // 4 // max(1, self.dim * 4))

    @property
    def block_rows(self) -> int:
        """Vectors per block of the pairs step: a block's copies and one block x block tile in a quarter."""
        rows = 8192
        while rows > 512 and rows * self.dim * 16 + rows * rows * 8 > self.work // 4:
            rows //= 2
        return rows

    @property
    def edges_per_flush(self) -> int:
        return int(max(1 << 16, self.work // 8 // 40))


def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (Linux resets it at exec, where ``ru_maxrss``
    carries over the parent's peak when the parent was larger), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _choose_device(device: str) -> tuple[str, str]:
    from curator_cli.stages.runtime import default_precision

    return device, ("bf16" if default_precision(device) == "bf16" else "fp32")


class _PartitionPairs:
    """One partition's pairs as they come, folded into a :class:`PairSummary` whenever they pile up
    (so a flood of identical images costs a bounded amount of memory); with a pair file, every pair
    is also appended to it."""

    def __init__(self, flush_at: int, pairs_file: Path | None) -> None:
        self.flush_at = flush_at
        self.pending: list[Edges] = []
        self.pending_count = 0
        self.summary = PairSummary.empty()
        self.count = 0
        self.pairs_file = pairs_file
        self.handle = open(pairs_file, "wb") if pairs_file else None

    def add(self, edges: Edges) -> None:
        if not len(edges):
            return
        self.count += len(edges)
        if self.handle:
            records = np.empty(len(edges), PAIR_RECORD)
            records["a"], records["b"], records["sim"] = edges.a, edges.b, edges.sim
            records.tofile(self.handle)
        self.pending.append(edges)
        self.pending_count += len(edges)
        if self.pending_count >= self.flush_at:
            self._fold()

    def _fold(self) -> None:
        if self.pending:
            a = np.concatenate([e.a for e in self.pending])
            b = np.concatenate([e.b for e in self.pending])
            sim = np.concatenate([e.sim for e in self.pending])
            self.summary = PairSummary.of([self.summary], a, b, sim)
            self.pending, self.pending_count = [], 0

    def finish(self) -> PairSummary:
        self._fold()
        if self.handle:
            self.handle.close()
        return self.summary

    def abandon(self) -> None:
        if self.handle:
            self.handle.close()
            self.pairs_file.unlink(missing_ok=True)


def _sample_pass(inputs: InputSet, settings: DedupSettings, budget: _Budget, progress: Progress
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Read every vector once: (k-means sample of unit vectors, compared-rows mask, counts)."""
    target = settings.cells or choose_cells(inputs.rows)
    wanted = min(budget.sample_rows, max(SAMPLE_PER_CELL * target * 5 // 4, 1))
    probability = min(1.0, wanted / max(1, inputs.rows))
    rng = np.random.default_rng(settings.seed)
    ok = np.zeros(inputs.rows, bool)
    counts = {"failed_rows": 0, "invalid_vectors": 0}
    sample: list[np.ndarray] = []
    progress(f"reading {inputs.rows:,} row(s) of {len(inputs.files):,} file(s) to sample the k-means training set")
    for chunk in read_vectors(inputs, budget.read_rows):
        rows = len(chunk.ok)
        ok[chunk.start:chunk.start + rows] = chunk.ok
        counts["failed_rows"] += chunk.failed
        counts["invalid_vectors"] += chunk.invalid
        pick = chunk.ok & (rng.random(rows) < probability)
        if pick.any():
            sample.append(chunk.vectors[pick].astype(np.float32) * chunk.inv_norm[pick, None])
    counts["vectors"] = int(ok.sum())
    dim = inputs.dim or 0
    return (np.concatenate(sample) if sample else np.zeros((0, dim), np.float32)), ok, counts


def _spill_pass(inputs: InputSet, layout: SpillLayout, assigner: Assigner, skip: set[int], budget: _Budget,
                progress: Progress) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Read every vector again, assign it to its cells and spill it: (run index, records per
    partition, compared-rows mask, counts)."""
    writer = SpillWriter(layout, skip, flush_bytes=min(256 << 20, budget.work // 10))
    ok = np.zeros(inputs.rows, bool)
    counts = {"failed_rows": 0, "invalid_vectors": 0, "vectors_capped": 0, "visits": 0}
    rows_per_batch = min(budget.read_rows, assigner.rows_per_batch(budget.work // 4))
    progress(f"assigning vectors to {layout.cells:,} cell(s) and spilling them to {layout.directory}")
    for chunk in read_vectors(inputs, rows_per_batch):
        rows = len(chunk.ok)
        ok[chunk.start:chunk.start + rows] = chunk.ok
        counts["failed_rows"] += chunk.failed
        counts["invalid_vectors"] += chunk.invalid
        chosen = np.flatnonzero(chunk.ok)
        if not len(chosen):
            continue
        raw, inv = chunk.vectors[chosen], chunk.inv_norm[chosen]
        assignment = assigner.assign(raw.astype(np.float32) * inv[:, None])
        counts["vectors_capped"] += assignment.capped
        counts["visits"] += int((assignment.visits >= 0).sum())
        writer.add(chunk.start + chosen, raw.astype(layout.value_type, copy=False), inv, assignment.home,
                   assignment.visits)
    counts["vectors"] = int(ok.sum())
    index = writer.index()  # flushes the last records
    return index, writer.records, ok, counts


def _load_model(work: WorkDir) -> CellModel | None:
    arrays = {name: work.load_array(f"cells-{name}") for name in ("regions", "cells", "offsets")}
    return None if any(a is None for a in arrays.values()) else CellModel(**arrays)


def _run_key(inputs: InputSet, settings: DedupSettings, threshold: float) -> dict[str, Any]:
    return {"inputs": [f.identity() for f in inputs.files], "id_column": inputs.id_column,
            "embedding_column": inputs.embedding_column, "threshold": threshold,
            "neighbours": settings.neighbours, "cells": settings.cells, "seed": settings.seed}


def run_dedup(settings: DedupSettings, inputs: InputSet, progress: Progress) -> DedupSummary:
    """Every step, reusing what an earlier run with the same key finished (``workdir``)."""
    started = time.perf_counter()
    seconds = {name: 0.0 for name in ("read", "cluster", "assign", "pairs", "groups", "write")}
    threshold = resolve_threshold(settings.threshold, inputs)
    device, screen = _choose_device(settings.device)
    dim = inputs.dim or 0
    budget = _Budget(work=max(256 << 20, settings.max_memory - BASELINE_BYTES), dim=max(dim, 1))
    summary = DedupSummary(inputs=len(inputs.files), rows=inputs.rows, dim=inputs.dim, threshold=threshold,
                           keep=str(settings.keep), neighbours=settings.neighbours, device=device, screen=screen)
    output = settings.output
    (output / SUCCESS_FILE).unlink(missing_ok=True)
    work = WorkDir(output)
    reused = work.open(_run_key(inputs, settings, threshold))
    if reused:
        progress(f"reusing the work of an earlier run in {work.root}")

    # --- 1-2: cells -------------------------------------------------------------------------------
    model = _load_model(work) if reused else None
    ok = work.load_array("rows") if reused else None
    if model is None:
        if not settings.cells and inputs.rows < SINGLE_CELL_BELOW or dim == 0:
            model = train_cells(np.zeros((0, max(dim, 1)), np.float32), 1, settings.seed)
        else:
            t = time.perf_counter()
            sample, ok, counts = _sample_pass(inputs, settings, budget, progress)
            seconds["read"] += time.perf_counter() - t
            work.save_array("rows", ok)
            work.remember(**counts)
            cells = max(1, min(settings.cells or choose_cells(counts["vectors"]), len(sample)))
            progress(f"k-means: {cells:,} cell(s) from {len(sample):,} sampled vector(s) (faiss)")
            t = time.perf_counter()
            model = train_cells(sample, cells, settings.seed)
            del sample
            seconds["cluster"] += time.perf_counter() - t
        for name, array in model.arrays().items():
            work.save_array(f"cells-{name}", array)
    cells = model.count
    neighbours = min(settings.neighbours, cells - 1)
    layout_columns = max(1, settings.neighbours)
    record_bytes = 16 + 4 * layout_columns + dim * np.dtype(inputs.spill_dtype).itemsize
    if "partitions" not in work.state:
        vectors = work.state.get("vectors", inputs.rows)
        spill_bytes = vectors * (1 + neighbours) * record_bytes
        wanted = max(math.ceil(spill_bytes / PARTITION_SPILL_BYTES), MIN_PARTITIONS)
        work.remember(partitions=int(max(1, min(cells, MAX_PARTITIONS, wanted))))
    partitions = int(work.state["partitions"])
    layout = SpillLayout(work.spill_dir, cells, partitions, dim, layout_columns, inputs.spill_dtype)

    # --- 3: pairs, partition by partition -------------------------------------------------------
    done = work.done(partitions, settings.write_pairs)
    todo = [p for p in range(partitions) if p not in done]
    summary.partitions, summary.partitions_reused, summary.cells = partitions, len(done), cells
    if todo and dim:
        index = work.spill_ready(todo, layout.dtype.itemsize) if reused else None
        if index is None:
            work.reset_spill()
            assigner = Assigner(model, threshold, settings.neighbours, device)
            t = time.perf_counter()
            index, records, ok, counts = _spill_pass(inputs, layout, assigner, done, budget, progress)
            seconds["assign"] += time.perf_counter() - t
            work.save_array("rows", ok)
            work.mark_spilled(index, records)
            work.remember(**counts)
        finder = PairFinder(threshold, device, screen, budget.block_rows)
        t = time.perf_counter()
        last_report = 0.0
        for number, partition in enumerate(todo, 1):
            if time.perf_counter() - last_report > 5 or number == len(todo):
                progress(f"pairs: partition {number:,} of {len(todo):,} ({partition})")
                last_report = time.perf_counter()
            finder.stats = CellStats()
            pairs_temp = temp_path(work.pairs_path(partition)) if settings.write_pairs else None
            acc = _PartitionPairs(budget.edges_per_flush, pairs_temp)
            try:
                with open(layout.path(partition), "rb") as handle:
                    for cell, (homes, visitors) in sorted(cell_runs(index, partition).items()):
                        acc.add(finder.cell(cell, homes, visitors,
                                            lambda runs, lo, hi: runs.read(handle, layout.dtype, lo, hi)))
                result = PartResult(acc.finish(), finder.stats, acc.count)
            except BaseException:
                acc.abandon()
                raise
            if pairs_temp is not None:
                commit(pairs_temp, work.pairs_path(partition))
            work.save_part(partition, result)
            work.drop_spill(partition)
            summary.partitions_computed += 1
        seconds["pairs"] += time.perf_counter() - t
    work.drop_spill()
    if ok is None:
        ok = work.load_array("rows")
    if ok is None:  # nothing to compare and nothing read yet: one read for the counts
        t = time.perf_counter()
        ok = np.zeros(inputs.rows, bool)
        counts = {"failed_rows": 0, "invalid_vectors": 0}
        for chunk in read_vectors(inputs, budget.read_rows):
            ok[chunk.start:chunk.start + len(chunk.ok)] = chunk.ok
            counts["failed_rows"] += chunk.failed
            counts["invalid_vectors"] += chunk.invalid
        counts["vectors"] = int(ok.sum())
        work.save_array("rows", ok)
        work.remember(**counts)
        seconds["read"] += time.perf_counter() - t
    state = work.state
    summary.failed_rows, summary.invalid_vectors = state.get("failed_rows", 0), state.get("invalid_vectors", 0)
    summary.vectors = int(ok.sum())
    summary.vectors_capped = state.get("vectors_capped", 0)
    summary.visits_per_vector = state.get("visits", 0) / max(1, summary.vectors)

    # --- 4-5: groups and the image kept in each -------------------------------------------------
    t = time.perf_counter()
    totals, pairs, summaries = CellStats(), 0, []
    for p in range(partitions):
        if work.part_path(p).is_file():
            part = work.load_part(p)
            summaries.append(part.summary)
            totals.add(part.stats)
            pairs += part.pairs
    merged = PairSummary.of(summaries, *(getattr(Edges.empty(), n) for n in ("a", "b", "sim")))
    del summaries
    groups = build_groups(merged)
    del merged
    batch_rows = budget.read_rows
    values = member_values(inputs, groups.members, settings.keep, batch_rows)
    keep = choose_keep(groups, values)
    if values is not None and len(groups.members):
        known = ~np.isnan(values)
        with_value = np.bincount(groups.group[known], minlength=groups.count) if known.any() else np.zeros(groups.count)
        summary.groups_without_keep_value = int((with_value == 0).sum())
    dropped = groups.members[~keep]
    seconds["groups"] += time.perf_counter() - t
    summary.pairs, summary.groups, summary.images_in_groups = pairs, groups.count, len(groups.members)
    summary.images_to_drop = len(dropped)
    summary.dot_products, summary.candidates_verified = totals.dot_products, totals.candidates
    summary.largest_cell = totals.largest_cell

    # --- 6: outputs ---------------------------------------------------------------------------
    t = time.perf_counter()
    progress(f"writing {DUPLICATES_FILE} and {KEEP_FILE}")
    manifest = {"tool_version": __version__, "threshold": threshold, "keep": str(settings.keep),
                "id_column": inputs.id_column, "embedding_column": inputs.embedding_column,
                "neighbours": settings.neighbours, "cells": cells, "inputs": [str(f.path) for f in inputs.files]}
    members = read_members(inputs, groups.members, batch_rows)
    temporaries = [(write_table(duplicates_table(groups, keep, members), output / DUPLICATES_FILE, manifest),
                    output / DUPLICATES_FILE)]
    keep_temp, summary.images_kept = write_keep(inputs, ok, dropped, output / KEEP_FILE, manifest, batch_rows)
    temporaries.append((keep_temp, output / KEEP_FILE))
    if settings.write_pairs:
        pair_files = [work.pairs_path(p) for p in range(partitions) if work.pairs_path(p).is_file()]
        temporaries.append((write_pairs(pair_files, groups, members, output / PAIRS_FILE, manifest),
                            output / PAIRS_FILE))
    commit_outputs(temporaries)
    write_atomic(output / SUCCESS_FILE, "", sync_dir=True)
    seconds["write"] += time.perf_counter() - t
    summary.outputs = [str(final) for _, final in temporaries]
    seconds["total"] = time.perf_counter() - started
    summary.seconds = {k: round(v, 3) for k, v in seconds.items()}
    summary.peak_rss_mb = round(_peak_rss_mb(), 1)
    return summary
