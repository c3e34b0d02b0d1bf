"""``curator embed`` end to end: output layout and schema, order, captions, multi-stage runs, summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset  # noqa: F401  (pa.dataset)
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, img2dataset_tar, jpeg, read_output, stage_spec, unit_norms, write_parquet


def test_img2dataset_tar_rows_ids_captions_schema(cli, tmp_path):
    shard = img2dataset_tar(tmp_path / "in" / "00000.tar", 7)
    result = cli("embed", shard, "-o", tmp_path / "out", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "00000.parquet")
    assert table.column("image_id").to_pylist() == [f"{i:09d}" for i in range(7)]
    assert table.column("caption").to_pylist() == [f"caption {i:09d}" for i in range(7)]
    assert table.column("image_path").to_pylist()[0] == f"{shard}/000000000.jpg"
    assert set(table.column("shard").to_pylist()) == {str(shard)}
    assert json.loads(table.column("metadata")[0].as_py())["url"] == "http://x/000000000"
    schema = table.schema
    assert schema.field("embedding").type == pa.list_(pa.float32(), 303)
    for name in ("image_id", "shard", "image_path", "caption", "metadata", "error"):
        assert schema.field(name).type == pa.string()
    assert "aesthetic_score" not in schema.names
    assert table.column("error").null_count == 7
    assert np.allclose(unit_norms(table), 1.0, atol=1e-5)
    frame = pd.read_parquet(tmp_path / "out" / "00000.parquet")  # pandas reads it too
    assert list(frame["image_id"]) == [f"{i:09d}" for i in range(7)] and len(frame["embedding"][0]) == 303


def test_sample_data_nested_layout_and_parquet_passthrough(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("embed", ROOT / "sample_data", "-o", out, "--summary-json", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert files == ["parquet/part-00000.parquet", "webdataset/00000.parquet"]
    table = read_output(out / "parquet" / "part-00000.parquet")
    assert table.num_rows == 6
    assert table.column("status").to_pylist()[-1] == "failed_to_download"
    assert table.column("error").to_pylist()[-1] == "input status failed_to_download: HTTP 404"
    assert table.column("embedding").to_pylist()[-1] == [0.0] * 303  # failed rows keep zeros, never null
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["shards_total"], summary["shards_written"], summary["images"], summary["images_failed"]) == (2, 2, 14, 1)
    assert summary["embedding_dim"] == 303 and summary["images_per_second"] > 0
    assert "2 of 2 shard(s) written; 14 image(s), 1 failed" in result.output


def test_multi_stage_filter_scores_and_float16(cli, tmp_path):
    shard = img2dataset_tar(tmp_path / "s.tar", 5)
    result = cli("embed", shard, "-o", tmp_path / "out", "--embedding-dtype", "float16",
                 "--stage", stage_spec("MeanColour"), "--stage", stage_spec("DropOdd"),
                 "--stage", stage_spec("Score"))
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "s.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 3)
    assert table.column("image_id").to_pylist() == [f"{i:09d}" for i in range(5)]
    assert table.column("error").to_pylist() == [None, "filtered by drop_odd", None, "filtered by drop_odd", None]
    scores = table.column("aesthetic_score").to_pylist()
    assert scores[1] is None and scores[0] == pytest.approx(table.column("embedding")[0].as_py()[0], abs=1e-2)
    assert json.loads(table.column("metadata")[0].as_py())["scored"] is True


def test_stage_that_filters_everything(cli, tmp_path):
    shard = img2dataset_tar(tmp_path / "s.tar", 3)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", stage_spec("DropAll"))
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "s.parquet")
    assert table.column("error").to_pylist() == ["filtered by DropAll"] * 3


def test_parquet_with_hf_struct_column(cli, tmp_path):
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())])
    write_parquet(tmp_path / "in" / "train-0.parquet",
                  [{"image": {"bytes": jpeg(i), "path": f"{i}.jpg"}, "label": i} for i in range(4)], schema)
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "train-0.parquet")
    assert table.column("label").to_pylist() == [0, 1, 2, 3]
    assert table.column("image_id").to_pylist() == ["0", "1", "2", "3"]
    assert "image" not in table.column_names  # image bytes are never written


def test_device_cuda_without_cuda_is_a_usage_error(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out", "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_no_shards_is_a_usage_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("embed", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no shards found" in result.output


def test_inspect_and_show(cli, tmp_path):
    inspected = cli("inspect", ROOT / "sample_data")
    assert inspected.exit_code == 0
    assert "00000.tar  [tar]  8 sample(s)" in inspected.output and "first: 000000000, 000000001" in inspected.output
    assert "part-00000.parquet  [parquet]  6 sample(s)" in inspected.output
    assert "2 shard(s), 14 sample(s)" in inspected.output
    cli("embed", ROOT / "sample_data", "-o", tmp_path / "out")
    shown = cli("show", tmp_path / "out")
    assert shown.exit_code == 0
    assert "2 file(s), 14 row(s)" in shown.output and "embedding dimension: 303" in shown.output
    assert "rows not embedded (error set, zero vector): 1" in shown.output
    assert "input status failed_to_download (1)" in shown.output


def test_console_script_quiet_prints_nothing(tmp_path):
    shard = img2dataset_tar(tmp_path / "s.tar", 2)
    curator = [sys.executable, "-m", "curator_cli.cli"]
    done = subprocess.run([*curator, "embed", str(shard), "-o", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert pq.read_metadata(tmp_path / "out" / "s.parquet").num_rows == 2


def test_console_script_exit_keeps_exit_handlers_output_and_status(tmp_path):
    """`curator` ends without tearing the interpreter down (with torch loaded that took ~1 s of every
    run), yet what users rely on at exit still happens: a stage's own threads are waited for, handlers
    registered with atexit run (a stage's own, logging's: the --log-file is whole), stdout and stderr are
    flushed, the status is the documented one, also with stdout closed."""
    shard = img2dataset_tar(tmp_path / "s.tar", 3)
    (tmp_path / "bad.tar").write_bytes(b"not a tar file" * 100)
    curator = [sys.executable, "-m", "curator_cli.cli"]
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout to a pipe: block-buffered
    done = subprocess.run([*curator, "embed", str(shard), str(tmp_path / "bad.tar"), "-o", str(tmp_path / "out"),
                           "--stage", stage_spec("AtExit"), "--stage-arg", f"marker={tmp_path / 'marker'}",
                           "--log-file", str(tmp_path / "run.log")], capture_output=True, text=True, env=buffered)
    assert done.returncode == 1  # one shard failed
    assert (tmp_path / "marker").read_text() == "ran at exit" and done.stdout == "AtExit stage: bye\n"
    assert (tmp_path / "marker.thread").read_text() == "written"  # the stage's own thread was waited for
    assert "1 of 2 shard(s) written, 1 failed" in done.stderr and done.stderr.endswith("\n")  # the summary, whole
    log = (tmp_path / "run.log").read_text()
    assert "bad.tar" in log and log.endswith("\n")
    assert pq.read_metadata(tmp_path / "out" / "s.parquet").num_rows == 3
    shown = subprocess.run([*curator, "show", str(tmp_path / "out")], capture_output=True, text=True)
    assert shown.returncode == 0 and "3 row(s)" in shown.stdout and shown.stdout.endswith("\n")
    usage = subprocess.run([*curator, "embed", str(shard), "-o", str(tmp_path / "out2"), "--batch-size", "0"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "batch-size" in usage.stderr
    closed = subprocess.run([*curator, "embed", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out3")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.close(1))  # run as `curator ... >&-`: sys.stdout is None
    assert closed.returncode == 2 and "Traceback" not in closed.stderr


def test_output_reads_in_polars_and_duckdb_as_dedup_tools_expect(cli, tmp_path):
    """image_id (string) + embedding (list of float32) is what NeMo Curator's semantic dedup and
    embedding-reader consume; polars and duckdb read the files as they are."""
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    for s in range(2):
        img2dataset_tar(tmp_path / "in" / f"{s:05d}.tar", 4, first_seed=10 * s)
    assert cli("embed", tmp_path / "in", "-o", tmp_path / "out").exit_code == 0
    pattern = str(tmp_path / "out" / "*.parquet")
    frame = polars.read_parquet(pattern)
    assert frame.height == 8 and frame.schema["image_id"] == polars.String
    assert frame.schema["embedding"] == polars.Array(polars.Float32, 303)
    dims = duckdb.sql(f"select distinct len(embedding) from read_parquet('{pattern}')").fetchall()
    assert dims == [(303,)]
    dedup_view = pa.dataset.dataset(str(tmp_path / "out"), format="parquet").to_table(columns=["image_id", "embedding"])
    assert dedup_view.num_rows == 8 and pa.types.is_float32(dedup_view.schema.field("embedding").type.value_type)
    # tar and parquet inputs give files with different passthrough columns: read them by column name
    assert cli("embed", ROOT / "sample_data", "-o", tmp_path / "mixed").exit_code == 0
    rows = duckdb.sql(f"select count(*) from read_parquet('{tmp_path / 'mixed'}/**/*.parquet', union_by_name=true)")
    assert rows.fetchall() == [(14,)]
