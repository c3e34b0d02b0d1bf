"""Real dataset layouts through the real CLI: img2dataset's tar, parquet and files output formats
(with their ``NNNNN.parquet`` / ``NNNNN_stats.json`` sidecars and failed downloads) and Hugging Face
parquet whose Image column holds file paths instead of bytes. Images are 256x256 JPEGs, as
img2dataset writes them by default."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import jpeg, read_output, run_with_watchdog, stage_spec, write_parquet, write_tar

SIZE = (256, 256)
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SIDECAR_SCHEMA = pa.schema([
    ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
])
FAILED = "failed_to_download"


def embed(cli, *args):
    return cli("embed", *args, "--num-workers", "0", "-q")


def i2d_rows(shard: int, count: int, failed: set[int]) -> list[dict]:
    """img2dataset's metadata for one shard: every sample, the failed ones with their status."""
    rows = []
    for i in range(count):
        key = f"{shard:05d}{i:04d}"
        ok = i not in failed
        rows.append({
            "url": f"https://example.com/{key}.jpg", "caption": f"caption {key}", "key": key,
            "status": "success" if ok else FAILED, "error_message": None if ok else "HTTP 404",
            "width": 256 if ok else None, "height": 256 if ok else None,
        })
    return rows


def write_sidecars(folder: Path, shard: int, rows: list[dict]) -> None:
    write_parquet(folder / f"{shard:05d}.parquet", rows, SIDECAR_SCHEMA)
    ok = sum(r["status"] == "success" for r in rows)
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps(
        {"count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok, "failed_to_resize": 0}))


def i2d_tar_shard(folder: Path, shard: int, count: int, failed: set[int]) -> Path:
    """``NNNNN.tar`` (the fetched samples only), ``NNNNN.parquet`` and ``NNNNN_stats.json``."""
    rows = i2d_rows(shard, count, failed)
    members = []
    for i, row in enumerate(rows):
        if row["status"] == "success":
            key = row["key"]
            members += [(f"{key}.jpg", jpeg(shard * 100 + i, SIZE)), (f"{key}.txt", row["caption"].encode()),
                        (f"{key}.json", json.dumps(row).encode())]
    tar = write_tar(folder / f"{shard:05d}.tar", members)
    write_sidecars(folder, shard, rows)
    return tar


def i2d_files_shard(folder: Path, shard: int, count: int, failed: set[int]) -> Path:
    """img2dataset's ``files`` format: ``NNNNN/KEY.jpg|txt|json`` plus the same two sidecars."""
    rows = i2d_rows(shard, count, failed)
    shard_dir = folder / f"{shard:05d}"
    shard_dir.mkdir(parents=True)
    for i, row in enumerate(rows):
        if row["status"] == "success":
            (shard_dir / f"{row['key']}.jpg").write_bytes(jpeg(shard * 100 + i, SIZE))
            (shard_dir / f"{row['key']}.txt").write_text(row["caption"])
            (shard_dir / f"{row['key']}.json").write_text(json.dumps(row))
    write_sidecars(folder, shard, rows)
    return shard_dir


def i2d_parquet_shard(path: Path, count: int, failed: set[int]) -> Path:
    """img2dataset's ``parquet`` format: the metadata plus a ``jpg`` column, null for failed rows."""
    rows = i2d_rows(0, count, failed)
    for i, row in enumerate(rows):
        row["jpg"] = None if i in failed else jpeg(i, SIZE)
    return write_parquet(path, rows, SIDECAR_SCHEMA.append(pa.field("jpg", pa.binary())))


def embedded(row: dict) -> bool:
    """Whether a row holds a real embedding (rows without one hold a null or a zero vector)."""
    return row["embedding"] is not None and any(row["embedding"])


def output_names(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))


# ---------------------------------------------------------------- img2dataset files format


def test_files_format_one_shard_per_folder_ids_are_keys_failures_from_sidecar(cli, tmp_path):
    i2d = tmp_path / "i2d"
    i2d_files_shard(i2d, 0, 5, failed={1, 3})
    i2d_files_shard(i2d, 1, 3, failed=set())
    result = embed(cli, i2d, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert output_names(tmp_path / "out") == ["00000.parquet", "00001.parquet"]  # the sidecars are no shards

    table = read_output(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [r["image_id"] for r in table] == ["000000000", "000000002", "000000004", "000000001", "000000003"]
    fetched, failed = table[:3], table[3:]
    assert [r["caption"] for r in fetched] == ["caption 000000000", "caption 000000002", "caption 000000004"]
    assert all(r["error"] is None and embedded(r) for r in fetched)
    assert json.loads(fetched[0]["metadata"])["url"] == "https://example.com/000000000.jpg"
    assert fetched[0]["image_path"] == f"{i2d / '00000'}/000000000.jpg"
    assert [r["error"] for r in failed] == [f"input status {FAILED}: HTTP 404"] * 2
    assert not any(embedded(r) for r in failed)
    assert failed[0]["caption"] == "caption 000000001"
    assert json.loads(failed[0]["metadata"])["url"] == "https://example.com/000000001.jpg"
    assert [r["image_id"] for r in read_output(tmp_path / "out" / "00001.parquet").to_pylist()] == [
        "000010000", "000010001", "000010002"]


def test_files_format_glob_and_single_folder_give_the_same_output(cli, tmp_path):
    i2d = tmp_path / "i2d"
    i2d_files_shard(i2d, 0, 3, failed={2})
    i2d_files_shard(i2d, 1, 2, failed=set())
    assert embed(cli, f"{i2d}/*", "-o", tmp_path / "glob").exit_code == 0
    assert output_names(tmp_path / "glob") == ["00000.parquet", "00001.parquet"]
    assert embed(cli, i2d / "00000", "-o", tmp_path / "one").exit_code == 0
    assert output_names(tmp_path / "one") == ["00000.parquet"]
    glob_ids = read_output(tmp_path / "glob" / "00000.parquet").column("image_id").to_pylist()
    assert glob_ids == read_output(tmp_path / "one" / "00000.parquet").column("image_id").to_pylist()
    assert glob_ids == ["000000000", "000000001", "000000002"]


# ---------------------------------------------------------------- img2dataset tar and parquet formats


def test_tar_format_sidecar_failures_are_rows_like_the_files_format(cli, tmp_path):
    i2d_tar_shard(tmp_path / "tar", 0, 5, failed={1, 3})
    i2d_files_shard(tmp_path / "files", 0, 5, failed={1, 3})
    for layout in ("tar", "files"):
        assert embed(cli, tmp_path / layout, "-o", tmp_path / f"out-{layout}").exit_code == 0
    from_tar = read_output(tmp_path / "out-tar" / "00000.parquet")
    from_files = read_output(tmp_path / "out-files" / "00000.parquet")
    assert from_tar.num_rows == 5  # every sample of the sidecar, fetched or not
    for column in ("image_id", "caption", "error"):
        assert from_tar.column(column).to_pylist() == from_files.column(column).to_pylist()
    assert from_tar.column("error").to_pylist().count(f"input status {FAILED}: HTTP 404") == 2
    assert [embedded(r) for r in from_tar.to_pylist()] == [True, True, True, False, False]


def test_glob_over_an_img2dataset_folder_skips_the_sidecars(cli, tmp_path):
    i2d = tmp_path / "i2d"
    for shard in range(2):
        i2d_tar_shard(i2d, shard, 3, failed={0})
    result = embed(cli, f"{i2d}/*", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert output_names(tmp_path / "out") == ["00000.parquet", "00001.parquet"]
    assert read_output(tmp_path / "out" / "00001.parquet").num_rows == 3


def test_parquet_format_failed_rows_and_no_metadata_copy_of_columns(cli, tmp_path):
    shard = i2d_parquet_shard(tmp_path / "pq" / "00000.parquet", 4, failed={2})
    assert embed(cli, shard, "-o", tmp_path / "out").exit_code == 0
    rows = read_output(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [r["image_id"] for r in rows] == ["000000000", "000000001", "000000002", "000000003"]
    assert [r["error"] for r in rows] == [None, None, f"input status {FAILED}: HTTP 404", None]
    assert rows[0]["caption"] == "caption 000000000" and rows[0]["url"] == "https://example.com/000000000.jpg"
    assert rows[2]["status"] == FAILED and [embedded(r) for r in rows] == [True, True, False, True]
    assert all(json.loads(r["metadata"]) == {} for r in rows)  # url, status, ... are columns already


def test_stages_see_a_parquet_rows_columns_and_only_what_they_add_is_written(cli, tmp_path):
    shard = i2d_parquet_shard(tmp_path / "pq" / "00000.parquet", 3, failed=set())
    result = embed(cli, shard, "-o", tmp_path / "out", "--stage", stage_spec("UrlLength"))
    assert result.exit_code == 0, result.output
    rows = read_output(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [r["embedding"] for r in rows] == [[float(len("https://example.com/000000000.jpg"))]] * 3
    assert [json.loads(r["metadata"]) for r in rows] == [{"seen_status": "success"}] * 3


def test_explicitly_named_sidecars_are_usage_errors(cli, tmp_path):
    i2d = tmp_path / "i2d"
    i2d_files_shard(i2d, 0, 2, failed=set())
    stats = embed(cli, i2d / "00000_stats.json", "-o", tmp_path / "out")
    assert stats.exit_code == 2 and "stats file" in stats.output
    sidecar = embed(cli, i2d / "00000.parquet", "-o", tmp_path / "out")
    assert sidecar.exit_code == 2 and "metadata sidecar" in sidecar.output


# ---------------------------------------------------------------- Hugging Face Image columns holding paths


def hf_path_parquet(path: Path, stored: list[str]) -> Path:
    """What ``Dataset.from_dict({"image": paths, "text": ...}).cast_column("image", Image()).to_parquet()``
    writes: the struct with null bytes and the path as given."""
    rows = [{"image": {"bytes": None, "path": p}, "text": f"text {i}", "label": i} for i, p in enumerate(stored)]
    schema = pa.schema([("image", HF_IMAGE), ("text", pa.string()), ("label", pa.int64())])
    return write_parquet(path, rows, schema)


def test_hf_paths_resolve_against_the_parquet_folder_then_the_working_directory(cli, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "src" / "img").mkdir(parents=True)
    (data / "src" / "img" / "a.jpg").write_bytes(jpeg(1, SIZE))
    (tmp_path / "cwd" / "only-here").mkdir(parents=True)
    (tmp_path / "cwd" / "only-here" / "b.jpg").write_bytes(jpeg(2, SIZE))
    absolute = tmp_path / "abs.jpg"
    absolute.write_bytes(jpeg(3, SIZE))
    shard = hf_path_parquet(data / "train.parquet",
                            ["src/img/a.jpg", "only-here/b.jpg", str(absolute), "src/img/missing.jpg"])
    monkeypatch.chdir(tmp_path / "cwd")
    result = embed(cli, shard, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = read_output(tmp_path / "out" / "train.parquet").to_pylist()
    assert [r["image_path"] for r in rows] == [
        str(data / "src" / "img" / "a.jpg"), str(tmp_path / "cwd" / "only-here" / "b.jpg"), str(absolute),
        str(data / "src" / "img" / "missing.jpg")]
    assert [r["error"] for r in rows[:3]] == [None, None, None]
    assert [embedded(r) for r in rows] == [True, True, True, False]
    assert rows[3]["error"] == f"image file not found: {data / 'src' / 'img' / 'missing.jpg'}"
    assert [r["caption"] for r in rows] == ["text 0", "text 1", "text 2", "text 3"]  # HF's `text` column
    assert [r["label"] for r in rows] == [0, 1, 2, 3] and json.loads(rows[0]["metadata"]) == {}


def test_inspect_says_the_image_column_holds_paths(cli, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg(1, SIZE))
    shard = hf_path_parquet(tmp_path / "train.parquet", ["img/a.jpg", "img/gone.jpg"])
    result = cli("inspect", shard)
    assert result.exit_code == 0, result.output
    assert "image column 'image' holds file paths, not bytes (2 of 2 rows" in result.output
    assert "1 file(s) not found (e.g. img/gone.jpg)" in result.output
    assert "caption column 'text'" in result.output


def test_hf_parquet_beside_its_image_folder_outputs_do_not_collide(cli, tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "a.jpg").write_bytes(jpeg(1, SIZE))
    hf_path_parquet(data / "train.parquet", ["train/a.jpg"])
    result = embed(cli, data, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert output_names(tmp_path / "out") == ["train.images.parquet", "train.parquet"]


# ---------------------------------------------------------------- captions and inspect


def test_caption_column_default_and_option(cli, tmp_path):
    rows = [{"id": "a", "text": "from text", "alt": "from alt", "jpg": jpeg(1, SIZE)}]
    shard = write_parquet(tmp_path / "in" / "p.parquet", rows)
    assert embed(cli, shard, "-o", tmp_path / "default").exit_code == 0
    assert read_output(tmp_path / "default" / "p.parquet").column("caption").to_pylist() == ["from text"]
    assert embed(cli, shard, "-o", tmp_path / "alt", "--caption-column", "alt").exit_code == 0
    table = read_output(tmp_path / "alt" / "p.parquet")
    assert table.column("caption").to_pylist() == ["from alt"] and table.column("text").to_pylist() == ["from text"]
    missing = embed(cli, shard, "-o", tmp_path / "missing", "--caption-column", "nope")
    assert missing.exit_code == 1 and "no caption column 'nope'" in missing.output


def test_inspect_reports_sidecars_statuses_and_exits_1_on_errors(cli, tmp_path):
    i2d = tmp_path / "i2d"
    i2d_tar_shard(i2d, 0, 4, failed={1, 2})
    i2d_files_shard(i2d, 1, 3, failed={0})
    result = cli("inspect", i2d)
    assert result.exit_code == 0, result.output
    assert "skipped 4 img2dataset sidecar file(s) (2 NNNNN.parquet, 2 _stats.json)" in result.output
    assert f"2 with status != success ({FAILED} 2)" in result.output
    assert f"1 with status != success ({FAILED} 1)" in result.output
    assert "2 shard(s), 7 sample(s)" in result.output  # failed downloads are rows too
    assert cli("inspect", f"{i2d}/*").exit_code == 0

    (i2d / "00002.tar").write_bytes(b"not a tar at all" * 100)
    broken = cli("inspect", i2d)
    assert broken.exit_code == 1 and "00002.tar  [tar]  ERROR:" in broken.output
    assert "1 some shard could not be read" in cli("inspect", "--help").output


# ---------------------------------------------------------------- all three formats through the decode workers


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_img2dataset_output_through_1_2_and_4_decode_workers(tmp_path, workers):
    """The three img2dataset formats at 256 px in one input folder, through real decode worker
    processes (a watchdog fails the run if it hangs): every fetched sample once, with its key and
    caption; every failed download kept, with its status as the error."""
    inputs = tmp_path / "i2d"
    i2d_tar_shard(inputs / "tar", 0, 40, failed={3, 17})
    i2d_files_shard(inputs / "files", 1, 40, failed={5})
    i2d_parquet_shard(inputs / "parquet" / "00002.parquet", 40, failed={0, 39})
    out = tmp_path / "out"
    result = run_with_watchdog("embed", str(inputs), "-o", str(out), "--num-workers", str(workers), "-q")
    assert result.returncode == 0, result.stderr
    assert output_names(out) == ["files/00001.parquet", "parquet/00002.parquet", "tar/00000.parquet"]
    for name, shard, failed in (("tar/00000", 0, {3, 17}), ("files/00001", 1, {5}), ("parquet/00002", 0, {0, 39})):
        rows = read_output(out / f"{name}.parquet").to_pylist()
        by_key = {r["image_id"]: r for r in rows}
        assert len(by_key) == len(rows) == 40, name  # every sample exactly once
        for i in range(40):
            row = by_key[f"{shard:05d}{i:04d}"]
            assert row["caption"] == f"caption {shard:05d}{i:04d}", name
            if i in failed:
                assert row["error"] == f"input status {FAILED}: HTTP 404" and not embedded(row), (name, i)
            else:
                assert row["error"] is None and embedded(row), (name, i, row["error"])
