"""Benchmark of ``curator dedup``: recall and precision against brute force, time and peak memory.

    .venv/bin/python bench/dedup.py synthetic --sizes 100k,1M          # ~5 min on 2 cores, data cached
    .venv/bin/python bench/dedup.py synthetic --sizes 10M:float16:1 --keep-output   # 10M: ~25 min + 12 min of checks, 31 GB of disk
    .venv/bin/python bench/dedup.py synthetic --sizes 10M:float16:1 --check-only    # check a kept output again, no dedup run
    .venv/bin/python bench/dedup.py images                             # the default threshold, measured

``synthetic``: 512-d vectors with planted near-duplicate groups (see :func:`generate`), written once
as parquet shards under ``bench/data/dedup/``; then ``curator dedup --pairs`` runs in its own
process (wall time; peak RSS from its summary, the process's own ``VmHWM``), and its pairs are
checked: **precision** by recomputing every reported pair's cosine in float64 from the stored input
values (``--precision-sample N``: a random N of them instead), **recall** against brute force for a
sample of query rows (half planted copies, half any row): every row whose float32 cosine with a
query is at or above the threshold must be a reported pair. The checks stream the inputs twice, a
batch at a time, and hold only the rows the reported pairs and the queries need (in the input's
dtype): 3.8 GB peak for 10M float16 vectors and 944,704 pairs. ``results.json`` keeps every size
measured: a run replaces the rows of the same size, dtype, neighbours and threshold.

``images``: photos (``tests/photos`` and crops of them) and synthetic photos, with planted edited
copies, through ``curator embed`` (the default ``perceptual`` stage) and ``curator dedup`` at its
default threshold: the similarity of each kind of copy and of the most similar unrelated images,
which is what the default threshold was chosen from.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "dedup"
SPEC_VERSION = 1


# --- synthetic data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a synthetic dataset is; a cached one is reused only when its spec is the same."""

    rows: int
    dim: int = 512
    dtype: str = "float32"
    seed: int = 0
    rows_per_file: int = 50_000
    copy_fraction: float = 0.2  # rows that are edited copies of another row
    copy_similarity: tuple[float, float] = (0.80, 0.999)  # cosine of a copy to its source, uniform
    failed_fraction: float = 0.001  # rows with `error` set and a zero vector, as curator writes them
    version: int = SPEC_VERSION


def generate(spec: Spec, folder: Path) -> None:
    """Write ``spec.rows`` rows as parquet shards (``image_id`` = global row number, ``embedding``,
    ``error``) plus ``copies.npy`` (row, source row) of the planted copies.

    The vectors look like image embeddings more than like noise: a shared direction (random pairs
    score about 0.3), topics (one per ~100 rows) grouped under super-topics, isotropic noise; copies
    move from their source partly at random and partly towards another topic (an edit changes what
    an image looks like), at a cosine drawn from ``copy_similarity``, which straddles any threshold
    in 0.80-0.999. A fifth of the copies are copies of copies (chains, so groups are more than
    pairs). Vectors are scaled by a random factor (dedup must normalise)."""
    spec_file = folder / "spec.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()) == json.loads(json.dumps(asdict(spec))):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(spec.seed)
    d = spec.dim
    n_topics = max(20, spec.rows // 100)
    n_super = max(10, spec.rows // 2000)
    common = _unit(rng.standard_normal(d))
    supers = _unit(rng.standard_normal((n_super, d)))
    topics = _unit(supers[rng.integers(0, n_super, n_topics)] + 0.9 * rng.standard_normal((n_topics, d)) / np.sqrt(d))
    pool_vectors = np.zeros((0, d), np.float32)  # recent rows, which copies may also be drawn from
    pool_rows = np.zeros(0, np.int64)
    copies: list[np.ndarray] = []
    written = 0
    file_number = 0
    while written < spec.rows:
        rows = min(spec.rows_per_file, spec.rows - written)
        n_copy = int(rows * spec.copy_fraction)
        n_orig = rows - n_copy
        t = rng.integers(0, n_topics, n_orig)
        noise = rng.standard_normal((n_orig, d)).astype(np.float32) / np.sqrt(d)
        originals = _unit(0.6 * common + topics[t] + 0.9 * noise)
        # first-generation copies: of this file's originals, or (30 %) of recent rows; then copies of those
        n_second = n_copy // 5
        n_first = n_copy - n_second
        from_pool = (rng.random(n_first) < 0.3) & (len(pool_rows) > 0)
        src_block = rng.integers(0, n_orig, n_first)  # block index (originals come first)
        src_pool = rng.integers(0, max(1, len(pool_rows)), n_first)
        first_src = np.where(from_pool[:, None], pool_vectors[src_pool] if len(pool_rows) else 0, originals[src_block])
        first = _copy_of(first_src, rng.uniform(*spec.copy_similarity, n_first), topics, rng)
        second_of = rng.integers(0, max(1, n_first), n_second)
        second = _copy_of(first[second_of], rng.uniform(*spec.copy_similarity, n_second), topics, rng)
        block = np.concatenate([originals, first, second])
        order = rng.permutation(rows)  # copies land anywhere in the file
        position = np.empty(rows, np.int64)
        position[order] = np.arange(rows)
        global_row = written + position  # of each block item
        first_source_row = np.where(from_pool, pool_rows[src_pool] if len(pool_rows) else 0, global_row[src_block])
        copies.append(np.concatenate([
            np.stack([global_row[n_orig:n_orig + n_first], first_source_row], axis=1),
            np.stack([global_row[n_orig + n_first:], global_row[n_orig + second_of]], axis=1)]))
        vectors = block[order]
        failed = rng.random(rows) < spec.failed_fraction
        vectors[failed] = 0.0
        scaled = vectors * rng.uniform(0.5, 2.0, (rows, 1)).astype(np.float32)
        error = pa.array([("decode failed" if f else None) for f in failed], pa.string())
        values = pa.array(scaled.astype(spec.dtype).ravel())
        table = pa.table({"image_id": pa.array([f"{written + i:09d}" for i in range(rows)]),
                          "embedding": pa.FixedSizeListArray.from_arrays(values, d), "error": error})
        pq.write_table(table, folder / f"part-{file_number:05d}.parquet", compression="zstd", row_group_size=8192)
        pool_vectors = np.concatenate([pool_vectors, vectors])[-100_000:]
        pool_rows = np.concatenate([pool_rows, written + np.arange(rows)])[-100_000:]
        written += rows
        file_number += 1
    np.save(folder / "copies.npy", np.concatenate(copies) if copies else np.zeros((0, 2), np.int64))
    spec_file.write_text(json.dumps(asdict(spec)))


def _copy_of(sources: np.ndarray, similarity: np.ndarray, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at cosine ``similarity`` from ``sources``: moved half at random, half towards a
    random topic (orthogonalised to the source, so the cosine is exact)."""
    n, d = sources.shape
    if n == 0:
        return np.zeros((0, d), np.float32)
    towards = _unit(topics[rng.integers(0, len(topics), n)] - sources)
    direction = _unit(rng.standard_normal((n, d))) + towards
    direction -= np.sum(direction * sources, axis=1, keepdims=True) * sources
    eps = np.sqrt(1.0 / similarity ** 2 - 1.0).astype(np.float32)[:, None]
    return _unit(sources + eps * _unit(direction))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _stream(folder: Path, rows_per_batch: int = 65536):
    """(first global row, raw vectors as stored, unit float32 vectors, valid mask) over the dataset,
    in row order, one batch at a time (memory: a few copies of one batch, whatever the dataset's size)."""
    start = 0
    for path in sorted(folder.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_batch, columns=["embedding", "error"]):
            column = batch.column(0)
            dim = column.type.list_size
            raw = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
            x = raw.astype(np.float32)
            norms = np.linalg.norm(x, axis=1)
            valid = batch.column(1).is_null().to_numpy(zero_copy_only=False) & (norms > 0)
            x[valid] /= norms[valid, None]
            x[~valid] = 0
            yield start, raw, x, valid
            start += batch.num_rows


# --- checks ------------------------------------------------------------------------------------


def _row_numbers(column: pa.ChunkedArray) -> np.ndarray:
    """The synthetic ids (zero-padded global row numbers) as int64."""
    import pyarrow.compute as pc

    return pc.cast(column, pa.int64()).to_numpy()


def check_pairs(folder: Path, out: Path, threshold: float, queries: int, seed: int,
                precision_sample: int = 0) -> dict:
    """Precision of the reported pairs (every one, or ``precision_sample`` of them when that is set
    and smaller: each cosine recomputed in float64 from the stored input values) and recall on
    sampled queries (brute force in float32 against every row).

    Memory is bounded by the pairs, not by the inputs: two streaming passes over the inputs; the
    first keeps only the rows that some checked pair or query needs, in the input's own dtype (so
    float16 inputs are held exactly, at 2 bytes a value), the second compares the queries with one
    batch of rows at a time."""
    import torch

    table = pq.read_table(out / "pairs.parquet", columns=["image_id_a", "image_id_b", "similarity"])
    a = _row_numbers(table.column("image_id_a"))
    b = _row_numbers(table.column("image_id_b"))
    del table
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * (1 << 32) + hi
    reported = np.unique(key)
    rng = np.random.default_rng(seed)
    if precision_sample and len(lo) > precision_sample:
        chosen_pairs = np.sort(rng.choice(len(lo), precision_sample, replace=False))
        lo_checked, hi_checked = lo[chosen_pairs], hi[chosen_pairs]
    else:
        lo_checked, hi_checked = lo, hi
    copies = np.load(folder / "copies.npy")
    spec = json.loads((folder / "spec.json").read_text())
    total, dtype = spec["rows"], np.dtype(spec["dtype"])
    chosen = np.unique(np.concatenate([rng.choice(copies[:, 0], min(len(copies), queries // 2), replace=False),
                                       rng.choice(total, queries - queries // 2, replace=False)]))
    needed = np.union1d(np.unique(np.concatenate([lo_checked, hi_checked])), chosen)  # rows the checks need
    gathered = np.zeros((len(needed), spec["dim"]), dtype)  # exact input values of the needed rows
    needed_valid = np.zeros(len(needed), bool)
    started = time.perf_counter()
    for start, raw, _, valid in _stream(folder):
        lo_i, hi_i = np.searchsorted(needed, [start, start + len(raw)])
        gathered[lo_i:hi_i] = raw[needed[lo_i:hi_i] - start]
        needed_valid[lo_i:hi_i] = valid[needed[lo_i:hi_i] - start]
    gather_seconds = time.perf_counter() - started
    # precision: every checked pair's cosine in float64 from the stored values, a chunk of pairs at a time
    ia, ib = np.searchsorted(needed, lo_checked), np.searchsorted(needed, hi_checked)
    exact = np.empty(len(ia))
    for s in range(0, len(ia), 65536):
        va = gathered[ia[s:s + 65536]].astype(np.float64)
        vb = gathered[ib[s:s + 65536]].astype(np.float64)
        norms = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
        exact[s:s + 65536] = np.einsum("ij,ij->i", va, vb) / np.where(norms > 0, norms, np.inf)
    below = int((exact < threshold - 1e-6).sum())
    borderline = int(((exact < threshold) & (exact >= threshold - 1e-6)).sum())
    # recall: brute force for the (valid) queries against every row
    q_index = np.searchsorted(needed, chosen)
    q_rows, q_index = chosen[needed_valid[q_index]], q_index[needed_valid[q_index]]
    qv = gathered[q_index].astype(np.float32)
    q = torch.from_numpy(qv / np.linalg.norm(qv, axis=1, keepdims=True))
    del gathered
    brute: list[np.ndarray] = []
    started_brute = time.perf_counter()
    for start, _, x, valid in _stream(folder):
        s = q @ torch.from_numpy(x).T
        qi, xi = (s >= threshold).nonzero(as_tuple=True)
        rows = xi.numpy() + start
        queries_hit = q_rows[qi.numpy()]
        keep = rows != queries_hit
        brute.append(np.stack([queries_hit[keep], rows[keep], s[qi, xi].numpy()[keep]], axis=1))
    found_pairs = np.concatenate(brute) if brute else np.zeros((0, 3))
    bl = np.minimum(found_pairs[:, 0], found_pairs[:, 1]).astype(np.int64)
    bh = np.maximum(found_pairs[:, 0], found_pairs[:, 1]).astype(np.int64)
    hit = np.isin(bl * (1 << 32) + bh, reported)
    near = np.abs(found_pairs[:, 2] - threshold) < 1e-6
    return {
        "reported_pairs": int(len(key)), "unique_pairs": int(len(reported)),
        "pairs_checked_for_precision": int(len(lo_checked)),
        "precision": (len(lo_checked) - below) / max(1, len(lo_checked)), "pairs_below_threshold": below,
        "pairs_within_1e-6_below": borderline,
        "min_reported_similarity": float(exact.min()) if len(exact) else None,
        "queries": int(len(q_rows)), "brute_force_pairs": int(len(found_pairs)), "found": int(hit.sum()),
        "recall": float(hit.mean()) if len(hit) else 1.0, "missed_within_1e-6": int((~hit & near).sum()),
        "check_seconds": round(time.perf_counter() - started, 1),
        "check_split_seconds": {"gather_and_precision": round(started_brute - started, 1),
                                "read_for_gather": round(gather_seconds, 1),
                                "brute_force": round(time.perf_counter() - started_brute, 1)},
    }


def run_dedup(folder: Path, out: Path, threshold: float, max_memory: str, neighbours: int | None,
              extra: list[str]) -> tuple[dict, float]:
    """``curator dedup`` in its own process; (its summary, wall seconds)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    summary_file = out.parent / f"{out.name}-summary.json"
    command = [sys.executable, "-m", "curator_cli.cli", "dedup", str(folder), "-o", str(out),
               "--threshold", str(threshold), "--pairs", "--max-memory", max_memory, "--summary-json",
               str(summary_file), *extra]
    if neighbours is not None:
        command += ["--neighbours", str(neighbours)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return json.loads(summary_file.read_text()), time.perf_counter() - started


def parse_count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _result_key(row: dict) -> tuple:
    return row["rows"], row["dtype"], row["neighbours"], row["threshold"]


def synthetic(args: argparse.Namespace) -> None:
    results = []
    for item in args.sizes.split(","):
        size, dtype, neighbours = (item.split(":") + [args.dtype, args.neighbours])[:3]
        neighbours = int(neighbours) if neighbours not in (None, "") else None
        rows = parse_count(size)
        spec = Spec(rows=rows, dtype=dtype)
        folder = DATA / f"synthetic-{size}-{dtype}"
        out = DATA / f"out-{size}-{dtype}"
        summary_file = out.parent / f"{out.name}-summary.json"
        if args.check_only:  # the output of an earlier run, kept with --keep-output: check it, run nothing
            if json.loads((folder / "spec.json").read_text()) != json.loads(json.dumps(asdict(spec))):
                raise SystemExit(f"{folder}: not the data of this spec")
            if not (out / "pairs.parquet").is_file() or not summary_file.is_file():
                raise SystemExit(f"--check-only: no finished run in {out} (run it with --keep-output first)")
            summary = json.loads(summary_file.read_text())
            if neighbours is not None and summary["neighbours"] != neighbours:
                raise SystemExit(f"{out} ran with --neighbours {summary['neighbours']}, not {neighbours}")
            if abs(summary["threshold"] - args.threshold) > 1e-9:
                raise SystemExit(f"{out} ran at threshold {summary['threshold']}, not {args.threshold}")
            wall = None  # not measured again: the summary's own total is the run's time
            print(f"[{size}] checking the earlier run in {out} (its summary: {summary['seconds']['total']:.0f} s)",
                  flush=True)
        else:
            t = time.perf_counter()
            generate(spec, folder)
            print(f"[{size}] data ready in {time.perf_counter() - t:.0f} s: {folder}", flush=True)
            summary, wall = run_dedup(folder, out, args.threshold, args.max_memory, neighbours, args.extra or [])
            print(f"[{size}] dedup {wall:.1f} s wall, peak RSS {summary['peak_rss_mb']:.0f} MB", flush=True)
        check = check_pairs(folder, out, args.threshold, args.queries, seed=1, precision_sample=args.precision_sample)
        row = {"rows": rows, "dtype": dtype, "neighbours": summary["neighbours"], "threshold": args.threshold,
               "max_memory": args.max_memory if wall is not None else None,
               "wall_seconds": round(wall, 1) if wall is not None else None,
               "dedup_seconds": summary["seconds"]["total"], "checked_only": wall is None,
               "peak_rss_mb": summary["peak_rss_mb"], **check, "summary": summary}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "summary"}), flush=True)
        print(f"[{size}] time split: {summary['seconds']}", flush=True)
        if not args.keep_output and not args.check_only:
            import shutil
            shutil.rmtree(out, ignore_errors=True)
    # results.json holds every size measured: this call's rows replace earlier rows of the same setting
    results_file = DATA / "results.json"
    earlier = json.loads(results_file.read_text()) if results_file.is_file() else []
    for r in results:  # a check of an earlier run keeps that run's measured wall time
        before = [e for e in earlier if _result_key(e) == _result_key(r) and e.get("wall_seconds") is not None]
        if r["checked_only"] and before and before[-1]["summary"] == r["summary"]:
            r["wall_seconds"], r["max_memory"] = before[-1]["wall_seconds"], before[-1]["max_memory"]
    fresh = {_result_key(r) for r in results}
    merged = sorted([r for r in earlier if _result_key(r) not in fresh] + results, key=_result_key)
    results_file.write_text(json.dumps(merged, indent=1))
    print("\n| rows | dtype | neighbours | wall s | peak RSS MB | pairs | recall (queries) | precision (pairs checked) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in merged:
        wall = r["wall_seconds"] if r.get("wall_seconds") is not None else f"{r['summary']['seconds']['total']} (in-process)"
        print(f"| {r['rows']:,} | {r['dtype']} | {r['neighbours']} | {wall} | {r['peak_rss_mb']:.0f} | {r['reported_pairs']:,} | "
              f"{r['recall']:.4f} ({r['queries']:,} queries, {r['brute_force_pairs']:,} pairs) | "
              f"{r['precision']:.4f} ({r['pairs_checked_for_precision']:,}) |")


# --- images: the default threshold -------------------------------------------------------------


def _load_synthetic_photo():
    spec = importlib.util.spec_from_file_location("make_sample_data", ROOT / "sample_data" / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_photo


def edits(image):
    """The edits a near-duplicate should survive, by name."""
    from PIL import Image, ImageEnhance

    def jpeg(img, quality):
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    w, h = image.size
    tinted = np.clip(np.asarray(image).astype(int) + [20, -10, 5], 0, 255).astype(np.uint8)
    out = {"resized": image.resize((w // 2, h // 2), Image.Resampling.BILINEAR), "jpeg30": jpeg(image, 30),
           "saturated": ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(1.4)).enhance(1.15),
           "tinted": Image.fromarray(tinted),
           "resized+jpeg+crop2": jpeg(image.crop((int(w * 0.02), 0, w, h)).resize((w * 2 // 3, h * 2 // 3)), 50)}
    for pct in (1, 2, 3, 5):
        out[f"crop{pct}"] = image.crop((int(w * pct / 100), int(h * pct / 100), w, h))
    return out


def images(args: argparse.Namespace) -> None:
    from PIL import Image

    synthetic_photo = _load_synthetic_photo()
    work = Path(tempfile.mkdtemp(prefix="dedup-images-"))
    folder = work / "images"
    folder.mkdir()
    originals = {}
    for path in sorted((ROOT / "tests" / "photos").glob("*.jpg")):
        photo = Image.open(path).convert("RGB")
        originals[path.stem] = photo
        w, h = photo.size
        for i in range(3):
            for j in range(3):
                originals[f"{path.stem}-{i}{j}"] = photo.crop((i * w // 3, j * h // 3, (i + 1) * w // 3, (j + 1) * h // 3)).resize((w // 2, h // 2))
    for seed in range(args.synthetic_photos):
        originals[f"synthetic{seed:04d}"] = synthetic_photo(seed, (320, 240))
    for name, image in originals.items():
        image.save(folder / f"{name}.png")
        for edit, copy in edits(image).items():
            copy.save(folder / f"{name}~{edit}.png")
    emb = work / "embeddings"
    subprocess.run([sys.executable, "-m", "curator_cli.cli", "embed", str(folder), "-o", str(emb), "-q"], check=True)
    table = pq.read_table(emb)
    names = [Path(i).stem for i in table.column("image_id").to_pylist()]
    x = np.array(table.column("embedding").to_pylist(), np.float32)
    row = {n: i for i, n in enumerate(names)}
    per_edit: dict[str, list[float]] = {}
    for name in originals:
        for edit in _EDIT_NAMES:
            per_edit.setdefault(edit, []).append(float(x[row[name]] @ x[row[f"{name}~{edit}"]]))
    base = np.array([row[n] for n in originals])
    sims = x[base] @ x[base].T
    upper = sims[np.triu_indices(len(base), 1)]
    print(f"{len(originals)} originals ({len(upper):,} unrelated pairs), {len(names) - len(originals)} copies")
    print(f"unrelated: max {upper.max():.3f}, 99.99th pct {np.percentile(upper, 99.99):.3f}, 99.9th {np.percentile(upper, 99.9):.3f}")
    print("| edit | min | 1st pct | median |")
    print("|---|---|---|---|")
    for edit, values in per_edit.items():
        print(f"| {edit} | {min(values):.3f} | {np.percentile(values, 1):.3f} | {np.median(values):.3f} |")
    out = work / "dedup"
    subprocess.run([sys.executable, "-m", "curator_cli.cli", "dedup", str(emb), "-o", str(out), "--pairs", "-q",
                    "--summary-json", str(work / "s.json")], check=True)
    summary = json.loads((work / "s.json").read_text())
    pairs = pq.read_table(out / "pairs.parquet")
    unrelated = 0
    for a, b in zip(pairs.column("image_id_a").to_pylist(), pairs.column("image_id_b").to_pylist()):
        if Path(a).stem.split("~")[0] != Path(b).stem.split("~")[0]:
            unrelated += 1
    duplicates = pq.read_table(out / "duplicates.parquet").to_pandas()
    grouped = set(Path(i).stem for i in duplicates["image_id"])
    print(f"dedup at the default threshold {summary['threshold']}: {summary['pairs']} pairs, {unrelated} between "
          f"different originals; copies found per edit:")
    for edit in _EDIT_NAMES:
        found = sum(f"{n}~{edit}" in grouped for n in originals)
        print(f"  {edit}: {found}/{len(originals)}")
    print(f"(work files in {work})")


_EDIT_NAMES = ("resized", "jpeg30", "saturated", "tinted", "resized+jpeg+crop2", "crop1", "crop2", "crop3", "crop5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synthetic", help="recall, precision, time and memory on synthetic 512-d vectors")
    s.add_argument("--sizes", default="100k,1M", help="comma-separated SIZE[:DTYPE[:NEIGHBOURS]], e.g. 100k,1M,10M:float16:1")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    s.add_argument("--threshold", type=float, default=0.9)
    s.add_argument("--max-memory", default="4G")
    s.add_argument("--neighbours", type=int, default=None)
    s.add_argument("--queries", type=int, default=2000)
    s.add_argument("--keep-output", action="store_true", help="keep OUT (for a later --check-only)")
    s.add_argument("--check-only", action="store_true",
                   help="run no dedup: check the output an earlier run left (with --keep-output) in bench/data/dedup/out-SIZE-DTYPE")
    s.add_argument("--precision-sample", type=int, default=0,
                   help="recompute this many random reported pairs for precision (default 0: every pair)")
    s.add_argument("extra", nargs="*", help="more curator dedup options (after --)")
    i = sub.add_parser("images", help="the perceptual stage's similarities for planted copies; the default threshold")
    i.add_argument("--synthetic-photos", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    {"synthetic": synthetic, "images": images}[args.command](args)


if __name__ == "__main__":
    main()
