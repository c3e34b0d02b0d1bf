"""The output folder read by the tools people use, failed rows included (issue 10).

One real ``curator embed`` output (a first row that failed, a shard in which every image failed)
read back with pyarrow, pandas, polars (folder reads), duckdb, ``np.stack``, and, in a second
environment with what autofaiss's ``numpy<2`` pin leads to (pyarrow 25.0.1), pyarrow, pandas,
embedding-reader, autofaiss and Hugging Face ``datasets``. Every reader must give back every sample,
with its error, and the right vector for every embedded one.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import ROOT, jpeg, stage_spec, write_tar
from curator_cli.cli import main

DIM = 8
STAGE = stage_spec("IdVector")


def expected_vector(image_id: str) -> np.ndarray:
    v = np.random.default_rng(int(image_id)).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


# shard -> [(key, image bytes, expected error prefix or None)]; the first row of 00000 failed
# (embedding-reader's set-up reads a file's first row), 00002 has no image that decodes
TRUNCATED = jpeg(3)[:300]
SHARDS = {
    "00000": [("100", b"this is not an image", "not an image"), ("101", jpeg(1), None),
              ("102", TRUNCATED, "truncated image"), ("103", jpeg(2), None)],
    "00001": [("200", jpeg(4), None), ("201", jpeg(5), None), ("202", jpeg(6), None)],
    "00002": [("300", b"", "empty image data"), ("301", TRUNCATED, "truncated image")],
}
EXPECTED = {key: (shard, error) for shard, members in SHARDS.items() for key, _, error in members}


def write_shards(folder: Path, names=tuple(SHARDS)) -> Path:
    for name in names:
        write_tar(folder / f"{name}.tar", [(f"{key}.jpg", data) for key, data, _ in SHARDS[name]])
    return folder


def embed(*args) -> str:
    result = CliRunner().invoke(main, ["embed", *map(str, args), "--num-workers", "0", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readers")
    embed(write_shards(root / "in"), "-o", root / "out", "--stage", STAGE)
    return root / "out"


@pytest.fixture(scope="module")
def out16(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readers16")
    embed(write_shards(root / "in"), "-o", root / "out", "--stage", STAGE, "--embedding-dtype", "float16")
    return root / "out"


def check_rows(image_ids, errors, vectors, atol: float = 1e-6) -> None:
    """Every sample once, its error, the right vector when embedded and zeros when not."""
    rows = {str(i): (e, np.asarray(v, dtype=np.float32)) for i, e, v in zip(image_ids, errors, vectors)}
    assert len(rows) == len(list(image_ids)) == len(EXPECTED)
    assert rows.keys() == EXPECTED.keys()
    for image_id, (error, vector) in rows.items():
        expected_error = EXPECTED[image_id][1]
        assert vector.shape == (DIM,), image_id
        if expected_error is None:
            assert error is None, (image_id, error)
            np.testing.assert_allclose(vector, expected_vector(image_id), atol=atol, err_msg=image_id)
        else:
            assert error is not None and error.startswith(expected_error), (image_id, error)
            assert not vector.any(), image_id


# --------------------------------------------------------------------------- the folder itself


def test_folder_holds_parquet_files_and_an_empty_success_only(out):
    """polars reads a folder only when every non-empty file in it is parquet (it skips no name prefix)."""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["00000.parquet", "00001.parquet", "00002.parquet", "_SUCCESS"]
    assert (out / "_SUCCESS").stat().st_size == 0


def test_every_file_has_the_same_schema_and_no_null_embedding(out):
    schemas = {pq.read_schema(p).remove_metadata() for p in out.glob("*.parquet")}
    assert len(schemas) == 1  # 00002, where no image was embedded, too
    assert schemas.pop().field("embedding").type == pa.list_(pa.float32(), DIM)
    for path in out.glob("*.parquet"):
        assert pq.read_table(path).column("embedding").null_count == 0


def test_manifest_is_in_the_footer_and_a_rerun_skips_every_shard(tmp_path):
    write_shards(tmp_path / "in")
    embed(tmp_path / "in", "-o", tmp_path / "out", "--stage", STAGE)
    manifest = json.loads(pq.read_metadata(tmp_path / "out" / "00000.parquet").metadata[b"curator.manifest"])
    assert (manifest["rows"], manifest["failed_rows"], manifest["input"]) == (4, 2, str(tmp_path / "in" / "00000.tar"))
    summary = tmp_path / "summary.json"
    embed(tmp_path / "in", "-o", tmp_path / "out", "--stage", STAGE, "--summary-json", summary)
    assert json.loads(summary.read_text())["shards_skipped"] == 3


# --------------------------------------------------------------------------- readers in this environment


def test_pyarrow_file_folder_and_dataset(out):
    for table in (pq.read_table(out), ds.dataset(out, format="parquet").to_table()):
        check_rows(table.column("image_id").to_pylist(), table.column("error").to_pylist(),
                   table.column("embedding").to_pylist())
    assert pq.read_table(out / "00002.parquet").num_rows == 2


def test_pandas(out):
    import pandas as pd

    frame = pd.read_parquet(out)
    check_rows(frame["image_id"], [None if pd.isna(e) else e for e in frame["error"]], frame["embedding"])


def test_polars_reads_the_folder(out):
    polars = pytest.importorskip("polars")
    for frame in (polars.read_parquet(out), polars.read_parquet(f"{out}/"), polars.scan_parquet(out).collect()):
        assert frame.schema["embedding"] == polars.Array(polars.Float32, DIM)
        check_rows(frame["image_id"].to_list(), frame["error"].to_list(), frame["embedding"].to_list())


def test_duckdb_cosine_similarity_after_the_cast(out):
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"select image_id, error, embedding from read_parquet('{out}/*.parquet')").fetchall()
    check_rows(*zip(*rows))
    assert duckdb.sql(f"select count(*) from read_parquet('{out}')").fetchall() == [(len(EXPECTED),)]
    query = "101"
    found = duckdb.sql(f"""
        with e as (select image_id, embedding::FLOAT[{DIM}] as v from read_parquet('{out}/*.parquet')
                   where error is null)
        select b.image_id, array_cosine_similarity(a.v, b.v) as score
        from e a, e b where a.image_id = '{query}' order by score desc""").fetchall()
    good = [k for k, (_, error) in EXPECTED.items() if error is None]
    assert sorted(image_id for image_id, _ in found) == sorted(good)
    assert found[0][0] == query and found[0][1] == pytest.approx(1.0, abs=1e-6)


def test_np_stack_for_faiss(out):
    table = pq.read_table(out)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.shape == (len(EXPECTED), DIM) and vectors.dtype == np.float32
    check_rows(table.column("image_id").to_pylist(), table.column("error").to_pylist(), vectors)
    good = table.filter(pc.is_null(table.column("error")))
    index_input = np.stack(good.column("embedding").to_numpy(zero_copy_only=False))
    assert index_input.shape == (sum(e is None for _, e in EXPECTED.values()), DIM)
    assert np.allclose(np.linalg.norm(index_input, axis=1), 1.0, atol=1e-6)


def test_float16_reads_back(out16):
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    table = pq.read_table(out16)
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), DIM)
    columns = [table.column(c).to_pylist() for c in ("image_id", "error", "embedding")]
    check_rows(*columns, atol=1e-3)
    frame = polars.read_parquet(out16)
    check_rows(frame["image_id"].to_list(), frame["error"].to_list(), frame["embedding"].to_list(), atol=1e-3)
    check_rows(*zip(*duckdb.sql(f"select image_id, error, embedding from read_parquet('{out16}')").fetchall()),
               atol=1e-3)


# --------------------------------------------------------------------------- pyarrow 25, embedding-reader, autofaiss

READERS_PYTHON = Path(os.environ.get("CURATOR_READERS_PYTHON") or ROOT / ".venv" / "readers" / "bin" / "python")
READERS_PYTHON = READERS_PYTHON.absolute()  # made by `make readers-env`

READERS_SCRIPT = textwrap.dedent('''
    """Read each folder with the readers of this environment; print what each gave back, as JSON."""
    import json, logging, sys, tempfile
    import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq

    def rows(ids, errors, vectors):
        return {"image_id": [str(i) for i in ids], "error": [None if pd.isna(e) else e for e in errors],
                "embedding": np.asarray(np.stack(list(vectors)), dtype=np.float32).tolist()}

    def embedding_reader(folder):
        from embedding_reader import EmbeddingReader
        reader = EmbeddingReader(folder, file_format="parquet", embedding_column="embedding",
                                 meta_columns=["image_id", "error"])
        parts = list(reader(batch_size=1000, start=0, end=reader.count))
        meta = pd.concat([m for _, m in parts])
        return rows(meta["image_id"], meta["error"], np.concatenate([e for e, _ in parts]))

    def datasets_files(folder):
        import datasets
        datasets.disable_progress_bars()
        d = datasets.load_dataset("parquet", data_files=folder + "/**/*.parquet", split="train")
        return rows(d["image_id"], d["error"], d["embedding"])

    def datasets_folder(folder):
        import datasets
        datasets.disable_progress_bars()
        d = datasets.load_dataset(folder, split="train")
        return rows(d["image_id"], d["error"], d["embedding"])

    def autofaiss_index(folder):
        from autofaiss import build_index
        with tempfile.TemporaryDirectory() as tmp:
            index, _ = build_index(embeddings=folder, file_format="parquet", embedding_column_name="embedding",
                                   index_path=tmp + "/i.index", index_infos_path=tmp + "/i.json",
                                   metric_type="ip", max_index_memory_usage="100MB",
                                   current_memory_available="1G", verbose=logging.ERROR)
        table = pq.read_table(folder)
        vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        scores, _ = index.search(vectors, 1)
        return {"ntotal": index.ntotal, "self_score": scores[:, 0].tolist(),
                "errors": table.column("error").to_pylist()}

    def pyarrow_table(folder):
        t = pq.read_table(folder)
        return rows(t.column("image_id").to_pylist(), t.column("error").to_pylist(),
                    t.column("embedding").to_numpy(zero_copy_only=False))

    def pandas_frame(folder):
        d = pd.read_parquet(folder)
        return rows(d["image_id"], d["error"], d["embedding"])

    READERS = {
        "pyarrow read_table": pyarrow_table,
        "pandas": pandas_frame,
        "embedding-reader": embedding_reader,
        "datasets": datasets_files,
        "datasets folder": datasets_folder,
        "autofaiss": autofaiss_index,
    }
    report = {"versions": {"pyarrow": pa.__version__, "numpy": np.__version__}}
    for folder in sys.argv[1:]:
        for name, read in READERS.items():
            try:
                report[f"{folder} {name}"] = read(folder)
            except Exception as exc:
                report[f"{folder} {name}"] = {"failed": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report))
''')


@pytest.fixture(scope="module")
def readers_env_report(out, out16, tmp_path_factory) -> dict:
    if not READERS_PYTHON.exists():
        pytest.skip(f"no readers environment at {READERS_PYTHON} (pyarrow 25.0.1, numpy<2, embedding-reader, "
                    f"autofaiss, datasets): `make readers-env` creates it, and `make test` does")
    tmp = tmp_path_factory.mktemp("readers-env")
    script = tmp / "read_all.py"
    script.write_text(READERS_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(READERS_PYTHON), str(script), str(out), str(out16)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_readers_env_is_what_autofaiss_users_get(readers_env_report):
    versions = readers_env_report["versions"]
    assert versions["pyarrow"] == "25.0.1" and versions["numpy"].startswith("1.")


@pytest.mark.parametrize("reader", ["pyarrow read_table", "pandas", "embedding-reader", "datasets", "datasets folder"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pyarrow_25_readers(readers_env_report, out, out16, reader, dtype):
    folder, atol = (out, 1e-6) if dtype == "float32" else (out16, 1e-3)
    got = readers_env_report[f"{folder} {reader}"]
    assert "failed" not in got, got.get("failed")
    check_rows(got["image_id"], got["error"], got["embedding"], atol=atol)


def test_autofaiss_indexes_every_row(readers_env_report, out):
    """autofaiss over the folder: every row is in the index; an embedded image finds itself (score 1),
    a failed row's zeros score 0 against everything (filter them by ``error`` before indexing)."""
    got = readers_env_report[f"{out} autofaiss"]
    assert "failed" not in got, got.get("failed")
    assert got["ntotal"] == len(EXPECTED)
    for score, error in zip(got["self_score"], got["errors"]):
        assert score == pytest.approx(1.0 if error is None else 0.0, abs=1e-5)


# --------------------------------------------------------------------------- the dimension unknown, older outputs


def test_run_in_which_no_image_is_embedded(tmp_path):
    """No dimension to fill: the column is ``list<float>`` of nulls, every row has its error."""
    polars = pytest.importorskip("polars")
    write_shards(tmp_path / "in", ["00002"])
    embed(tmp_path / "in", "-o", tmp_path / "out", "--stage", STAGE)
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.column("embedding").null_count == 2
    for image_id, error in zip(table.column("image_id").to_pylist(), table.column("error").to_pylist()):
        assert error.startswith(EXPECTED[image_id][1]), (image_id, error)
    assert polars.read_parquet(tmp_path / "out").height == 2


def test_rerun_of_only_failed_shards_takes_the_dimension_from_the_files_beside(tmp_path):
    write_shards(tmp_path / "in", ["00000", "00001"])
    embed(tmp_path / "in", "-o", tmp_path / "out", "--stage", STAGE)
    write_shards(tmp_path / "in", ["00002"])  # a new shard in which no image decodes
    embed(tmp_path / "in", "-o", tmp_path / "out", "--stage", STAGE)
    table = pq.read_table(tmp_path / "out" / "00002.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert not np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).any()
    polars = pytest.importorskip("polars")
    assert polars.read_parquet(tmp_path / "out").height == len(EXPECTED)


def test_output_of_an_older_version_resumes(tmp_path):
    """Manifests in ``_NAME.manifest.json`` sidecars (older versions) still count; a shard redone gets
    its manifest in its footer and loses the sidecar."""
    write_shards(tmp_path / "in", ["00000", "00001"])
    out = tmp_path / "out"
    embed(tmp_path / "in", "-o", out, "--stage", STAGE)
    for name in ("00000", "00001"):  # as an older version left them: the manifest beside the file
        path = out / f"{name}.parquet"
        (out / f"_{name}.manifest.json").write_bytes(pq.read_metadata(path).metadata[b"curator.manifest"])
        pq.write_table(pq.read_table(path), path)
    assert b"curator.manifest" not in (pq.read_metadata(out / "00000.parquet").metadata or {})
    os.utime(tmp_path / "in" / "00001.tar", ns=(1, 1))  # changed since: redone
    summary = tmp_path / "summary.json"
    embed(tmp_path / "in", "-o", out, "--stage", STAGE, "--summary-json", summary)
    done = json.loads(summary.read_text())
    assert (done["shards_skipped"], done["shards_written"]) == (1, 1)
    assert [p.name for p in out.glob("_*.manifest.json")] == ["_00000.manifest.json"]
    assert b"curator.manifest" in pq.read_metadata(out / "00001.parquet").metadata
