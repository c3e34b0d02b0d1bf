"""Every input sample accounted for exactly once (issue 12): tar hard links and symlinks, members that
cannot hold an image, repeated keys, clashing passthrough column names, non-UTF-8 member names, and
parquet input read a batch at a time. Real files through the real CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT, encode, jpeg, write_parquet

EMBED = ("--num-workers", "0", "-q")


def noisy_jpeg(seed: int) -> bytes:
    """A JPEG larger than the tar reader's inline limit (16 KB), so its reader defers the read."""
    pixels = np.random.RandomState(seed).randint(0, 255, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), quality=95)
    assert len(data) > 16 << 10
    return data


def tar_of(path: Path, entries: list[tuple], fmt: int = tarfile.PAX_FORMAT) -> Path:
    """A tar with exactly these entries, in order: ``(name, bytes)`` a file; ``("link", name, target)``
    a hard link; ``("sym", name, target)`` a symlink; ``("chr"|"fifo"|"dir", name)`` those types.
    ``.tar.gz`` in the name compresses it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode, format=fmt, encoding="utf-8", errors="surrogateescape") as archive:
        for entry in entries:
            if isinstance(entry[1], bytes):
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                archive.addfile(info, io.BytesIO(entry[1]))
                continue
            kind, name = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            info.type = {"link": tarfile.LNKTYPE, "sym": tarfile.SYMTYPE, "chr": tarfile.CHRTYPE,
                         "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE}[kind]
            if kind in ("link", "sym"):
                info.linkname = entry[2]
            if kind == "chr":
                info.devmajor, info.devminor = 1, 3
            archive.addfile(info)
    return path


def rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def by_id(table_rows: list[dict]) -> dict[str, dict]:
    return {r["image_id"]: r for r in table_rows}


def no_temporaries(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.startswith(".")]


# --------------------------------------------------------------------------- 1. hard links


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tar_hard_links_are_read_as_their_target(cli, tmp_path, suffix):
    big, small = noisy_jpeg(1), jpeg(2)
    shard = tar_of(tmp_path / "in" / f"00000{suffix}", [
        ("k1.jpg", big), ("k1.txt", b"one"),
        ("link", "k2.jpg", "k1.jpg"), ("k2.txt", b"two"),  # the image a hard link, the caption a file
        ("link", "k3.jpg", "k1.jpg"),                        # a sample that is only a hard link
        ("s1.jpg", small),
        ("link", "s2.jpg", "s1.jpg"),                        # a link to a member read inline
        ("link", "s3.jpg", "s2.jpg"),                        # a link to a link
        ("link", "m.jpg", "missing.jpg"),                    # a link to nothing in the tar
    ])
    result = cli("embed", shard, "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "out", "00000.parquet")
    assert [r["image_id"] for r in got] == ["k1", "k2", "k3", "s1", "s2", "s3", "m"]
    r = by_id(got)
    assert all(r[k]["error"] is None for k in ("k1", "k2", "k3", "s1", "s2", "s3")), got
    assert r["k2"]["embedding"] == r["k1"]["embedding"] == r["k3"]["embedding"]
    assert r["s2"]["embedding"] == r["s1"]["embedding"] == r["s3"]["embedding"]
    assert r["k1"]["embedding"] != r["s1"]["embedding"]
    assert r["k2"]["caption"] == "two"
    assert r["m"]["error"].startswith("tar member is a hard link to no earlier member: m.jpg -> missing.jpg")


# --------------------------------------------------------------------------- 2. members that are not files


def test_tar_members_that_cannot_hold_an_image_are_error_rows(cli, tmp_path):
    shard = tar_of(tmp_path / "in" / "00000.tar", [
        ("dir", "sub"),                              # a folder entry: not a sample
        ("a.jpg", jpeg(1)),
        ("sym", "b.jpg", "a.jpg"),                   # symlink to an earlier member: read as it
        ("sym", "sub/c.jpg", "../a.jpg"),            # the same, from a folder
        ("sym", "d.jpg", "../outside.jpg"),          # out of the tar
        ("sym", "e.jpg", "/etc/hostname"),           # absolute
        ("sym", "f.jpg", "z.jpg"),                   # to a later member
        ("chr", "g.jpg"),
        ("fifo", "h.jpg"),
        ("dir", "i.jpg"),
        ("sym", "j.jpg", "nowhere.jpg"), ("j.txt", b"caption of j"),
        ("sym", "k.jpg", "nowhere.jpg"), ("k.png", encode(Image.new("RGB", (32, 32), "red"), "PNG")),
        ("z.jpg", jpeg(2)),
    ])
    result = cli("embed", shard, "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "out", "00000.parquet")
    assert [r["image_id"] for r in got] == ["a", "b", "sub/c", "d", "e", "f", "g", "h", "i", "j", "k", "z"]
    r = by_id(got)
    for key in ("a", "b", "sub/c", "k", "z"):
        assert r[key]["error"] is None, r[key]
    assert r["b"]["embedding"] == r["a"]["embedding"] == r["sub/c"]["embedding"]
    assert r["k"]["image_path"].endswith("/k.png")  # the usable image of the sample
    expected = {
        "d": "tar member is a symlink, not a file: d.jpg -> ../outside.jpg",
        "e": "tar member is a symlink, not a file: e.jpg -> /etc/hostname",
        "f": "tar member is a symlink, not a file: f.jpg -> z.jpg",
        "g": "tar member is a character device, not a file: g.jpg",
        "h": "tar member is a FIFO, not a file: h.jpg",
        "i": "tar member is a directory, not a file: i.jpg",
        "j": "tar member is a symlink, not a file: j.jpg -> nowhere.jpg",
    }
    for key, error in expected.items():
        assert r[key]["error"].startswith(error), r[key]["error"]
        assert not any(r[key]["embedding"])
    assert r["j"]["caption"] == "caption of j"
    show = cli("show", tmp_path / "out")
    assert "tar member is a symlink, not a file" in show.output


# --------------------------------------------------------------------------- 3. repeated keys


def test_a_repeated_tar_key_is_an_error_row_not_an_overwrite(cli, tmp_path):
    shard = tar_of(tmp_path / "in" / "00000.tar", [
        ("a.jpg", jpeg(1)), ("a.txt", b"first"),
        ("a.jpg", jpeg(2)), ("a.txt", b"second"),  # same key and extension again: a second sample
        ("b.jpg", jpeg(3)), ("b.png", encode(Image.new("RGB", (8, 8)), "PNG")), ("b.txt", b"bee"),  # one sample
        ("a.jpg", jpeg(4)),                         # the key again after another key
    ])
    reference = tar_of(tmp_path / "in" / "ref.tar", [("x.jpg", jpeg(1))])
    result = cli("embed", shard, reference, "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "out", "00000.parquet")
    assert [(r["image_id"], r["caption"]) for r in got] == [("a", "first"), ("a", "second"), ("b", "bee"), ("a", None)]
    assert [r["error"] for r in got] == [None, "duplicate key in shard: a (an earlier sample has this key)", None,
                                        "duplicate key in shard: a (an earlier sample has this key)"]
    assert got[0]["embedding"] == rows(tmp_path / "out", "ref.parquet")[0]["embedding"]  # the first image, kept
    embedded = [r["image_id"] for r in got if r["error"] is None]
    assert len(embedded) == len(set(embedded))


def test_a_repeated_key_in_an_img2dataset_files_folder_is_an_error_row(cli, tmp_path):
    folder = tmp_path / "in" / "00000"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "a.JPG").write_bytes(jpeg(2))
    if len(list(folder.iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    (tmp_path / "in" / "00000_stats.json").write_text("{}")
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "out", "00000.parquet")
    assert [(r["image_id"], r["error"]) for r in got] == [
        ("a", None), ("a", "duplicate key in shard: a (an earlier sample has this key)")]


def test_a_repeated_parquet_id_keeps_both_rows(cli, tmp_path):
    """Parquet rows are distinct records: a repeated id is not a duplicate sample (README, Input formats)."""
    shard = write_parquet(tmp_path / "in" / "p.parquet", [
        {"key": "a", "jpg": jpeg(1)}, {"key": "a", "jpg": jpeg(2)}, {"key": "b", "jpg": jpeg(3)}])
    result = cli("embed", shard, "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "out", "p.parquet")
    assert [(r["image_id"], r["error"]) for r in got] == [("a", None), ("a", None), ("b", None)]
    assert got[0]["embedding"] != got[1]["embedding"]


# --------------------------------------------------------------------------- 4. passthrough column names


def test_input_columns_error_and_input_error_both_pass_through(cli, tmp_path):
    table = pa.Table.from_arrays(
        [pa.array(["a", "b"]), pa.array([jpeg(1), jpeg(2)]), pa.array(["e-a", None]), pa.array(["ie-a", "ie-b"]),
         pa.array([1, 2]), pa.array([3, 4])],
        names=["key", "jpg", "error", "input_error", "x", "x"],  # parquet allows a repeated column name
    )
    shard = tmp_path / "in" / "p.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(table, shard)
    result = cli("embed", shard, "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "p.parquet"
    read = pq.read_table(out)
    assert len(read.schema.names) == len(set(read.schema.names))
    assert read.column("input_error").to_pylist() == ["ie-a", "ie-b"]  # the input's own name, kept
    assert read.column("input_error_2").to_pylist() == ["e-a", None]  # the input's `error`
    assert read.column("x").to_pylist() == [1, 2] and read.column("x_2").to_pylist() == [3, 4]
    assert read.column("error").to_pylist() == [None, None]
    frame = pd.read_parquet(out)
    assert list(frame["input_error"]) == ["ie-a", "ie-b"]
    assert frame["input_error_2"][0] == "e-a" and pd.isna(frame["input_error_2"][1])


# --------------------------------------------------------------------------- 5. non-UTF-8 member names


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_a_non_utf8_member_name_is_embedded(cli, tmp_path, fmt):
    latin1 = "caf\udce9"  # b"caf\xe9": Latin-1 "café", not UTF-8
    shard = tar_of(tmp_path / "in" / "00000.tar", [
        (f"{latin1}.jpg", jpeg(1)), (f"{latin1}.txt", b"latin-1 name"),
        ("ok.jpg", jpeg(2)),
        ("sym", f"{latin1}2.jpg", "gone\udcff.jpg"),  # its error text names both
    ], fmt)
    out = tmp_path / "out"
    for _ in range(2):  # and a rerun finds it done
        result = cli("embed", shard, "-o", out, *EMBED)
        assert result.exit_code == 0, result.output
        assert no_temporaries(out)
    got = rows(out, "00000.parquet")
    assert [r["image_id"] for r in got] == ["caf%E9", "ok", "caf%E92"]
    assert got[0]["error"] is None and got[0]["caption"] == "latin-1 name" and any(got[0]["embedding"])
    assert got[0]["image_path"] == f"{shard}/caf%E9.jpg"
    assert got[2]["error"] == ("tar member is a symlink, not a file: caf%E92.jpg -> gone%FF.jpg "
                               "(not an earlier member of this tar)")
    assert len(pd.read_parquet(out / "00000.parquet")) == 3


# --------------------------------------------------------------------------- 6. parquet memory


PEAK_RSS = textwrap.dedent("""
    import resource, subprocess, sys
    run = subprocess.run([sys.executable, "-m", "curator_cli.cli", *sys.argv[1:]], capture_output=True, text=True)
    if run.returncode:
        sys.exit(run.stdout + run.stderr)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
""")


def peak_rss(*args) -> int:
    """Peak RSS in bytes of ``curator ARGS`` in a fresh process. Measured from a small launcher: a
    child's ru_maxrss starts from its parent's peak (fork), which here would be pytest's."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_parquet_input_memory_follows_the_batch_size(tmp_path):
    rows_, size = 200, 1 << 20
    rng = np.random.default_rng(0)
    big = pa.table({"key": [f"{i:04d}" for i in range(rows_)],
                    "jpg": [rng.bytes(size) for _ in range(rows_)]})  # incompressible; not images: error rows
    big_path = tmp_path / "in" / "big.parquet"
    big_path.parent.mkdir()
    # One row group of 200 MB, in pages of 8 values. (pyarrow's writer, by default, puts up to 1024
    # values in a page, and in a dictionary page; a page is read whole: see io/readers/parquet.py.)
    pq.write_table(big, big_path, row_group_size=rows_, use_dictionary=False, write_batch_size=8)
    assert pq.ParquetFile(big_path).metadata.num_row_groups == 1
    small_path = tmp_path / "in2" / "small.parquet"
    small_path.parent.mkdir()
    pq.write_table(big.slice(0, 8), small_path, use_dictionary=False)
    del big
    common = ("--batch-size", "8", "--num-workers", "0", "-q", "--device", "cpu")
    baseline = peak_rss("embed", small_path, "-o", tmp_path / "out-small", *common)
    peak = peak_rss("embed", big_path, "-o", tmp_path / "out-big", *common)
    file_size = os.path.getsize(big_path)
    assert len(pq.read_table(tmp_path / "out-big" / "big.parquet")) == rows_
    # the whole row group read at once (the old reader) holds the file two to four times over
    assert peak - baseline < file_size / 4, (peak >> 20, baseline >> 20, file_size >> 20)


def test_parquet_text_that_is_not_utf8_is_read(cli, tmp_path):
    """pyarrow does not check that a string column is UTF-8 when it reads one: such a value must
    not crash the run. Ids get the tar names' ``%XX``, other text U+FFFD."""
    latin1 = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
    shard = tmp_path / "in" / "p.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.table({"key": latin1, "jpg": [jpeg(1), jpeg(2)], "note": latin1}), shard)
    result = cli("embed", shard, "-o", tmp_path / "out", *EMBED)
    assert result.exit_code == 0, result.output
    got = rows(tmp_path / "out", "p.parquet")
    assert [(r["image_id"], r["note"], r["error"]) for r in got] == [("ok", "ok", None), ("caf%E9", "caf\ufffd", None)]
