"""Finding and reading shards: tar grouping rules, parquet image columns, folders, globs and braces."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from curator_cli.io.readers import ReadOptions, open_shard
from curator_cli.io.readers.tar import split_member_name
from curator_cli.io.shards import Shard, ShardError, expand_braces, find_shards, output_paths

from conftest import encode, img2dataset_tar, jpeg, synthetic_photo, write_parquet, write_tar


def samples(shard, **options):
    return list(open_shard(shard, ReadOptions(**options)))


def test_member_name_split():
    assert split_member_name("a/b.seg.JPG") == ("a/b", "seg.jpg")
    assert split_member_name("000000001.json") == ("000000001", "json")


def test_tar_groups_consecutive_members_by_key(tmp_path):
    png = encode(synthetic_photo(3, (40, 30)), "PNG")
    path = write_tar(tmp_path / "s.tar", [
        ("__meta__.json", b"{}"),
        ("dir/k1.jpg", jpeg(1)), ("dir/k1.txt", b"first caption\n"), ("dir/k1.json", b'{"url": "u1"}'),
        ("k2.png", png), ("k2.jpg", jpeg(2)),
        ("k3.txt", b"no image here"),
        ("k4.seg.jpg", jpeg(4)),
    ])
    got = samples(Shard(path, "tar"))
    assert [s.image_id for s in got] == ["dir/k1", "k2", "k3", "k4"]
    assert got[0].caption == "first caption" and got[0].metadata == {"url": "u1"}
    assert got[0].image_path == f"{path}/dir/k1.jpg"
    assert got[1].data == jpeg(2)  # jpg preferred over png by default order
    assert got[2].error.startswith("no image member") and got[2].caption == "no image here"
    assert got[3].data is None and got[3].error  # extension "seg.jpg" is not an image extension


def test_image_ext_preference(tmp_path):
    png = encode(synthetic_photo(3, (40, 30)), "PNG")
    path = write_tar(tmp_path / "s.tar", [("k.jpg", jpeg(1)), ("k.png", png)])
    [sample] = samples(Shard(path, "tar"), image_exts=("png", "jpg"))
    assert sample.data == png and sample.image_path.endswith("k.png")


def test_parquet_binary_column_status_and_passthrough(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [
        {"key": "a", "caption": "cap a", "status": "success", "jpg": jpeg(1), "width": 96, "error": "x"},
        {"key": "b", "caption": None, "status": "failed_to_download", "jpg": None, "width": None, "error": None},
        {"key": "c", "caption": "cap c", "status": "success", "jpg": None, "width": 5, "error": None},
    ])
    opened = open_shard(Shard(path, "parquet"), ReadOptions())
    got = list(opened)
    assert [s.image_id for s in got] == ["a", "b", "c"]
    assert got[0].data == jpeg(1) and got[0].caption == "cap a" and got[0].error is None
    assert got[1].error.startswith("input status failed_to_download")
    assert got[2].error == "no image in column 'jpg'"
    names = [f.name for f in opened.passthrough_fields]
    assert names == ["status", "width", "input_error"]  # a clash with an output column is renamed
    assert got[0].passthrough["width"] == 96


def test_parquet_hf_image_struct_and_row_number_ids(tmp_path):
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())])
    path = write_parquet(tmp_path / "hf.parquet", [
        {"image": {"bytes": jpeg(1), "path": "cat.jpg"}, "label": 3},
        {"image": {"bytes": jpeg(2), "path": None}, "label": 4},
    ], schema)
    got = samples(Shard(path, "parquet"))
    assert [s.image_id for s in got] == ["0", "1"]
    assert got[0].data == jpeg(1) and got[0].image_path.endswith("cat.jpg")
    assert got[1].passthrough == {"label": 4}


def test_parquet_column_overrides(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"name": "n1", "a": jpeg(1), "b": jpeg(2)}])
    [s] = samples(Shard(path, "parquet"), image_column="b", id_column="name")
    assert s.data == jpeg(2) and s.image_id == "n1"


def test_folder_shard(tmp_path):
    folder = tmp_path / "imgs" / "cats"
    folder.mkdir(parents=True)
    (folder / "b.jpg").write_bytes(jpeg(1))
    (folder / "a.png").write_bytes(encode(synthetic_photo(2, (30, 30)), "PNG"))
    (folder / "a.txt").write_text("a cat")
    (folder / "a.json").write_text(json.dumps({"source": "test"}))
    shards = find_shards([str(tmp_path / "imgs")])
    assert shards == [Shard(folder, "folder")]
    got = samples(shards[0])
    assert [s.image_id for s in got] == ["cats/a.png", "cats/b.jpg"]
    assert got[0].caption == "a cat" and got[0].metadata == {"source": "test"}


def test_brace_expansion():
    assert expand_braces("s/{00008..00011}.tar") == [f"s/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


def test_find_shards_mixes_files_dirs_globs_braces(tmp_path):
    for i in range(4):
        img2dataset_tar(tmp_path / "d" / f"{i:05d}.tar", 1)
    (tmp_path / "d" / "00000.parquet").write_bytes(b"img2dataset sidecar, skipped")
    write_parquet(tmp_path / "e" / "x.parquet", [{"jpg": jpeg(1)}])
    found = find_shards([str(tmp_path / "d" / "{00000..00001}.tar"), str(tmp_path / "d" / "0000[23].tar"),
                         str(tmp_path / "e"), str(tmp_path / "d" / "00000.tar")])
    assert [(s.path.name, s.format) for s in found] == [
        ("00000.tar", "tar"), ("00001.tar", "tar"), ("00002.tar", "tar"), ("00003.tar", "tar"), ("x.parquet", "parquet")]
    with pytest.raises(ShardError, match="does not exist"):
        find_shards([str(tmp_path / "nope.tar")])
    with pytest.raises(ShardError, match="matches no files"):
        find_shards([str(tmp_path / "*.zip")])


def test_output_paths_mirror_the_input_tree(tmp_path):
    a = img2dataset_tar(tmp_path / "in" / "a" / "00001.tar", 1)
    b = img2dataset_tar(tmp_path / "in" / "b" / "00001.tar", 1)
    shards = find_shards([str(tmp_path / "in")])
    out = output_paths(shards, tmp_path / "out")
    assert out[Shard(a, "tar")] == (tmp_path / "out" / "a" / "00001.parquet").resolve()
    assert out[Shard(b, "tar")] == (tmp_path / "out" / "b" / "00001.parquet").resolve()
    write_parquet(tmp_path / "in" / "a" / "00001.parquet", [{"jpg": jpeg(1)}])
    with pytest.raises(ShardError, match="would both be written"):
        output_paths([Shard(a, "tar"), Shard(tmp_path / "in" / "a" / "00001.parquet", "parquet")], tmp_path / "out")


def test_output_dir_inside_input_is_not_read(tmp_path):
    img2dataset_tar(tmp_path / "00000.tar", 1)
    write_parquet(tmp_path / "out" / "00000.parquet", [{"embedding": [1.0]}])
    assert [s.path.name for s in find_shards([str(tmp_path)], exclude=tmp_path / "out")] == ["00000.tar"]
