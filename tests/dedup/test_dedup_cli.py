"""``curator dedup`` end to end on real parquet files: pairs against brute force, groups, keep rules,
inputs of other shapes, one-line errors, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_with_watchdog

DIM = 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(n_singles: int, n_groups: int, per_group: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Random unit vectors (unrelated: cosines far below 0.9 in 64 dimensions) plus groups of copies
    at cosine 0.88-0.99 to their source, shuffled."""
    rng = np.random.default_rng(seed)
    singles = unit(rng.standard_normal((n_singles, dim)))
    sources = unit(rng.standard_normal((n_groups, dim)))
    copies = []
    for source in sources:
        for _ in range(per_group):
            target = rng.uniform(0.88, 0.99)
            noise = rng.standard_normal(dim)
            noise -= (noise @ source) * source
            copies.append(unit(source + np.sqrt(1 / target**2 - 1) * unit(noise)))
    vectors = np.concatenate([singles, sources, np.array(copies).reshape(-1, dim)])
    return vectors[rng.permutation(len(vectors))]


def write_embeddings(path: Path, vectors: np.ndarray, errors: list | None = None, first_id: int = 0,
                     extra: dict | None = None, dtype=pa.float32()) -> Path:
    """A file shaped like ``curator embed``'s output: image_id, shard, embedding, error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, dim = vectors.shape
    values = pa.array(vectors.astype(dtype.to_pandas_dtype()).ravel(), dtype)
    table = pa.table({"image_id": [f"{first_id + i:06d}" for i in range(n)], "shard": [path.stem] * n,
                      "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
                      "error": pa.array(errors or [None] * n, pa.string()), **(extra or {})})
    pq.write_table(table, path)
    return path


def brute_force(vectors: np.ndarray, ok: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    unit_vectors = np.where(ok[:, None], vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30), 0)
    sims = unit_vectors.astype(np.float32) @ unit_vectors.astype(np.float32).T
    a, b = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(a.tolist(), b.tolist()))


def dedup(cli, *args):
    return cli("dedup", *args)


def summary_of(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def dataset(tmp_path):
    """Three files, 2,400 rows: planted groups, two failed rows (zeros, error set), one zero vector without an error."""
    vectors = planted(1800, 120, 4)
    vectors[7] = 0.0
    vectors[1500] = 0.0
    vectors[2000] = 0.0
    errors = [None] * len(vectors)
    errors[7] = "decode failed"
    errors[1500] = "filtered by x"
    folder = tmp_path / "embeddings"
    for f, start in enumerate(range(0, len(vectors), 800)):
        write_embeddings(folder / f"part-{f}.parquet", vectors[start:start + 800], errors[start:start + 800], start)
    ok = np.ones(len(vectors), bool)
    ok[[7, 1500, 2000]] = False
    return folder, vectors, ok


@pytest.mark.parametrize("scoring", ["every cell", "regions"])
def test_pairs_match_brute_force_across_cells(cli, tmp_path, dataset, scoring, monkeypatch):
    """With every cell within reach visited (--neighbours 11 of 12 cells) the partitioned search is
    exact: the same pairs as brute force, each once, though the cells cut through the groups. Both
    ways of finding a vector's cells: scoring every cell, and (above 4,096 cells) through regions."""
    from curator_cli.dedup import partition

    if scoring == "regions":
        monkeypatch.setattr(partition, "FLAT_CELLS", 0)
    folder, vectors, ok = dataset
    out = tmp_path / "dedup"
    result = dedup(cli, folder, "-o", out, "--threshold", "0.9", "--cells", "12", "--neighbours", "11", "--pairs",
                   "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    summary = summary_of(tmp_path / "s.json")
    assert (summary["rows"], summary["failed_rows"], summary["invalid_vectors"], summary["vectors"]) == (2400, 2, 1, 2397)
    assert (summary["cells"], summary["partitions"], summary["partitions_computed"]) == (12, 8, 8)
    assert summary["vectors_capped"] == 0 and summary["visits_per_vector"] > 1  # pairs do cross cells

    expected = brute_force(vectors, ok, 0.9)
    pairs = pq.read_table(out / "pairs.parquet").to_pandas()
    found = {(min(int(a), int(b)), max(int(a), int(b))) for a, b in zip(pairs.image_id_a, pairs.image_id_b)}
    assert len(pairs) == len(found) == summary["pairs"]  # each pair once
    assert found == expected
    assert (pairs.similarity >= 0.9).all()

    duplicates = pq.read_table(out / "duplicates.parquet").to_pandas()
    members = {int(i) for i in duplicates.image_id}
    assert members == {i for pair in expected for i in pair}
    assert not members & {7, 1500, 2000}
    assert (duplicates.groupby("group_id").keep.sum() == 1).all()
    first = duplicates.groupby("group_id").image_id.min()
    assert set(duplicates[duplicates.keep].image_id) == set(first)  # --keep first: input order
    unit_vectors = unit(np.where(ok[:, None], vectors, 1))
    for row in duplicates.head(50).itertuples():
        i, j = int(row.image_id), int(row.nearest_id)
        sims = unit_vectors[i] @ unit_vectors[ok].T
        assert row.similarity == pytest.approx(float(unit_vectors[i] @ unit_vectors[j]), abs=1e-5)
        assert row.similarity == pytest.approx(np.sort(sims)[-2], abs=1e-5)  # its most similar other image
        assert row.shard == f"part-{i // 800}"
    kept = pq.read_table(out / "keep.parquet").to_pandas()
    dropped = set(duplicates[~duplicates.keep].image_id)
    assert len(kept) == 2397 - len(dropped) == summary["images_kept"]
    assert set(kept.image_id).isdisjoint(dropped | {"000007", "001500", "002000"})
    assert (out / "_SUCCESS").exists()
    assert b"curator.dedup" in pq.read_metadata(out / "keep.parquet").metadata


def test_groups_are_connected_components_and_nearest_is_the_most_similar(cli, tmp_path):
    rng = np.random.default_rng(3)
    a = unit(rng.standard_normal(DIM))
    side = rng.standard_normal(DIM)
    side = unit(side - (side @ a) * a)
    # a chain: b is 0.95 from a and from c, but a and c are below 0.9 from each other
    b = unit(a * np.cos(0.3) + side * np.sin(0.3))
    c = unit(a * np.cos(0.6) + side * np.sin(0.6))
    d = unit(rng.standard_normal(DIM))
    e = unit(d + 0.05 * unit(rng.standard_normal(DIM)))
    others = unit(rng.standard_normal((40, DIM)))
    vectors = np.concatenate([others[:10], [c], others[10:20], [a, d], others[20:], [b, e]])
    write_embeddings(tmp_path / "in" / "x.parquet", vectors)
    result = dedup(cli, tmp_path / "in", "-o", tmp_path / "out", "--threshold", "0.9")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "out" / "duplicates.parquet").to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    ids = {"a": "000021", "b": "000043", "c": "000010", "d": "000022", "e": "000044"}
    assert set(by_id) == set(ids.values())
    assert by_id[ids["a"]]["group_id"] == by_id[ids["b"]]["group_id"] == by_id[ids["c"]]["group_id"] == 0
    assert by_id[ids["d"]]["group_id"] == by_id[ids["e"]]["group_id"] == 1
    assert [r["image_id"] for r in rows if r["keep"]] == [ids["c"], ids["d"]]  # first in input order
    assert by_id[ids["a"]]["nearest_id"] == ids["b"] and by_id[ids["c"]]["nearest_id"] == ids["b"]
    assert by_id[ids["b"]]["similarity"] == pytest.approx(float(np.cos(0.3)), abs=1e-5)


def test_keep_highest_column_and_largest(cli, tmp_path):
    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal((3, DIM)))
    group = np.concatenate([base[:1]] * 4)  # four copies of one picture, two unrelated ones
    vectors = np.concatenate([group, base[1:]])
    scores = pa.array([0.5, None, 0.9, 0.9, 1.0, 2.0], pa.float32())
    width = pa.array([100, 400, 200, None, 5, 5], pa.int64())
    height = pa.array([100, 300, 200, 100, 5, 5], pa.int64())
    metadata = pa.array([json.dumps({"original_width": w, "original_height": h}) for w, h in
                         [(10, 10), (20, 10), (30, 30), (5, 5), (1, 1), (1, 1)]])
    write_embeddings(tmp_path / "in" / "a.parquet", vectors,
                     extra={"aesthetic_score": scores, "width": width, "height": height})
    write_embeddings(tmp_path / "meta" / "a.parquet", vectors, extra={"metadata": metadata})

    def kept(folder, *keep):
        result = dedup(cli, tmp_path / folder, "-o", tmp_path / f"out-{folder}", "--threshold", "0.99", *keep)
        assert result.exit_code == 0, result.output
        rows = pq.read_table(tmp_path / f"out-{folder}" / "duplicates.parquet").to_pylist()
        return [r["image_id"] for r in rows if r["keep"]]

    assert kept("in") == ["000000"]
    assert kept("in", "--keep", "highest:aesthetic_score") == ["000002"]  # 0.9 twice: the first; null lowest
    assert kept("in", "--keep", "largest") == ["000001"]  # 400 x 300
    assert kept("meta", "--keep", "largest") == ["000002"]  # original_width x original_height from metadata


def test_other_parquet_named_columns_float16_and_plain_lists(cli, tmp_path):
    vectors = planted(300, 20, 2, seed=9)
    lists = pa.array([list(map(float, v)) for v in vectors], pa.list_(pa.float32()))
    lists = pa.array([None if i == 4 else v for i, v in enumerate(lists.to_pylist())], pa.list_(pa.float32()))
    pq.write_table(pa.table({"key": np.arange(len(vectors), dtype=np.int64) * 10, "vec": lists}), tmp_path / "mine.parquet")
    result = dedup(cli, tmp_path / "mine.parquet", "-o", tmp_path / "out", "--threshold", "0.9",
                   "--id-column", "key", "--embedding-column", "vec", "--pairs", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert summary_of(tmp_path / "s.json")["failed_rows"] == 1
    ok = np.ones(len(vectors), bool)
    ok[4] = False
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet")
    assert pairs.schema.field("image_id_a").type == pa.int64()  # the id column's own type
    found = {(min(a, b) // 10, max(a, b) // 10) for a, b in zip(pairs.column("image_id_a").to_pylist(),
                                                               pairs.column("image_id_b").to_pylist())}
    assert found == brute_force(vectors, ok, 0.9)
    keep = pq.read_table(tmp_path / "out" / "keep.parquet")
    assert set(keep.column("shard").to_pylist()) == {str(tmp_path / "mine.parquet")}  # no shard column: the file

    write_embeddings(tmp_path / "half" / "h.parquet", vectors, dtype=pa.float16())
    result = dedup(cli, tmp_path / "half", "-o", tmp_path / "out16", "--threshold", "0.9", "--pairs")
    assert result.exit_code == 0, result.output
    half = vectors.astype(np.float16).astype(np.float32)
    pairs = pq.read_table(tmp_path / "out16" / "pairs.parquet").to_pydict()
    found = {(min(int(a), int(b)), max(int(a), int(b))) for a, b in zip(pairs["image_id_a"], pairs["image_id_b"])}
    assert found == brute_force(half, np.ones(len(vectors), bool), 0.9)


def test_a_flood_of_identical_images_is_one_group_in_bounded_memory(cli, tmp_path):
    """1,500 copies of one picture: 1.1 million pairs, folded as they come; blocks smaller than the cell."""
    rng = np.random.default_rng(11)
    flood = np.repeat(unit(rng.standard_normal((1, DIM))), 1500, axis=0)
    vectors = np.concatenate([flood, unit(rng.standard_normal((1500, DIM)))])[rng.permutation(3000)]
    write_embeddings(tmp_path / "in" / "f.parquet", vectors)
    result = dedup(cli, tmp_path / "in", "-o", tmp_path / "out", "--threshold", "0.9", "--max-memory", "1G",
                   "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    summary = summary_of(tmp_path / "s.json")
    assert (summary["pairs"], summary["groups"], summary["images_to_drop"]) == (1500 * 1499 // 2, 1, 1499)
    assert summary["largest_cell"] == 3000  # one cell below 4,096 rows, read in blocks at this bound


def test_all_rows_failed_writes_empty_outputs(cli, tmp_path):
    write_embeddings(tmp_path / "in" / "x.parquet", np.zeros((3, DIM), np.float32), ["decode failed"] * 3)
    result = dedup(cli, tmp_path / "in", "-o", tmp_path / "out", "--threshold", "0.9", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert summary_of(tmp_path / "s.json")["vectors"] == 0
    assert pq.read_table(tmp_path / "out" / "duplicates.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "out" / "keep.parquet").num_rows == 0


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    vectors = planted(20, 2, 2)
    write_embeddings(tmp_path / "good" / "a.parquet", vectors)
    write_embeddings(tmp_path / "mixed" / "a.parquet", vectors)
    write_embeddings(tmp_path / "mixed" / "b.parquet", unit(np.ones((3, 32))))
    pq.write_table(pa.table({"id": ["x"], "embedding": pa.array([[1.0, 0.0]])}), tmp_path / "noid.parquet")
    pq.write_table(pa.table({"image_id": ["x"], "embedding": ["not a vector"]}), tmp_path / "text.parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notparquet.parquet").write_text("hello")
    good = [str(tmp_path / "good"), "-o", str(tmp_path / "out")]
    return {
        "no inputs": ([str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--threshold", "0.9"], "no parquet files found"),
        "missing path": ([str(tmp_path / "nope"), "-o", str(tmp_path / "out"), "--threshold", "0.9"], "no such file"),
        "mixed dimensions": ([str(tmp_path / "mixed"), "-o", str(tmp_path / "out"), "--threshold", "0.9"], "mixed embedding dimensions"),
        "missing column": ([str(tmp_path / "noid.parquet"), "-o", str(tmp_path / "out"), "--threshold", "0.9"], "no column 'image_id'"),
        "not an embedding": ([str(tmp_path / "text.parquet"), "-o", str(tmp_path / "out"), "--threshold", "0.9"], "not a list of floats"),
        "not parquet": ([str(tmp_path / "notparquet.parquet"), "-o", str(tmp_path / "out"), "--threshold", "0.9"], "cannot read"),
        "bad keep": (good + ["--threshold", "0.9", "--keep", "biggest"], "is not one of first"),
        "keep without column": (good + ["--threshold", "0.9", "--keep", "highest:"], "name the column"),
        "keep missing column": (good + ["--threshold", "0.9", "--keep", "highest:aesthetic_score"], "has no column 'aesthetic_score'"),
        "keep text column": (good + ["--threshold", "0.9", "--keep", "highest:shard"], "not a number"),
        "no threshold for another stage": (good, "name a --threshold"),
        "threshold out of range": (good + ["--threshold", "1.5"], "1.5"),
        "bad memory": (good + ["--threshold", "0.9", "--max-memory", "lots"], "--max-memory"),
    }


@pytest.mark.parametrize("case", ["no inputs", "missing path", "mixed dimensions", "missing column", "not an embedding",
                                  "not parquet", "bad keep", "keep without column", "keep missing column",
                                  "keep text column", "no threshold for another stage", "threshold out of range",
                                  "bad memory"])
def test_user_errors_are_one_line_and_exit_2(cli, tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    result = dedup(cli, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    if case != "threshold out of range":  # click's own usage errors print the usage line too
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_rerun_reuses_partitions_and_redoes_only_what_is_missing(cli, tmp_path, dataset):
    folder, vectors, ok = dataset
    out = tmp_path / "dedup"
    args = [folder, "-o", out, "--threshold", "0.9", "--cells", "12", "--summary-json", tmp_path / "s.json"]
    assert dedup(cli, *args).exit_code == 0
    first = pq.read_table(out / "duplicates.parquet")
    (out / "_dedup" / "parts" / "part-00003.npz").unlink()
    (out / "duplicates.parquet").unlink()
    result = dedup(cli, *args)
    assert result.exit_code == 0, result.output
    summary = summary_of(tmp_path / "s.json")
    assert (summary["partitions_reused"], summary["partitions_computed"]) == (7, 1)
    assert pq.read_table(out / "duplicates.parquet").equals(first)
    assert not (out / "_dedup" / "spill").exists()  # spilled vectors go once their partitions are done

    # another --keep reuses every partition; another threshold starts over
    assert dedup(cli, *args, "--keep", "largest").exit_code == 0
    assert summary_of(tmp_path / "s.json")["partitions_reused"] == 8
    assert dedup(cli, *[a if a != "0.9" else "0.95" for a in args]).exit_code == 0
    assert summary_of(tmp_path / "s.json")["partitions_reused"] == 0


def test_interrupted_run_keeps_finished_partitions(cli, tmp_path, dataset, monkeypatch):
    from curator_cli.dedup import workdir

    folder, vectors, ok = dataset
    out = tmp_path / "dedup"
    args = [folder, "-o", out, "--threshold", "0.9", "--cells", "12", "--summary-json", tmp_path / "s.json"]
    save = workdir.WorkDir.save_part
    saved = []

    def save_then_stop(self, partition, result):
        save(self, partition, result)
        saved.append(partition)
        if len(saved) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(workdir.WorkDir, "save_part", save_then_stop)
    result = dedup(cli, *args)
    assert result.exit_code == 130
    assert "rerun the same command to resume" in result.output
    assert not (out / "duplicates.parquet").exists() and not (out / "_curator.lock").exists()
    monkeypatch.setattr(workdir.WorkDir, "save_part", save)
    assert dedup(cli, *args).exit_code == 0
    summary = summary_of(tmp_path / "s.json")
    assert (summary["partitions_reused"], summary["partitions_computed"]) == (3, 5)


def test_real_process_and_output_inside_the_embeddings_folder(tmp_path, dataset):
    folder, vectors, ok = dataset
    for _ in range(2):  # the second run must not take the first run's outputs for inputs
        done = run_with_watchdog("dedup", folder, "-o", folder / "dedup", "--threshold", "0.9", "-q")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    assert pq.read_table(folder / "dedup" / "duplicates.parquet").num_rows > 0
