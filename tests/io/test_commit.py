"""``io/commit.py``: the one place that names temporaries and moves finished files into place."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.io.commit import clean_stale_temporaries, is_hidden, temp_path, write_atomic
from curator_cli.io.manifest import SUCCESS_FILE, write_success
from curator_cli.io.writer import OutputLayout, OutputRow, ShardWriter


def test_temporaries_are_hidden_beside_their_target_and_cleaned_whoever_made_them(tmp_path):
    target = tmp_path / "sub" / "00000.parquet"
    temp = temp_path(target)
    assert temp.parent == target.parent and is_hidden(temp.name) and str(os.getpid()) in temp.name
    target.parent.mkdir()
    stale = [temp, target.parent / ".00001.parquet.tmp-1", tmp_path / "._SUCCESS.tmp-99"]
    kept = [target, tmp_path / "00001.parquet", tmp_path / SUCCESS_FILE, tmp_path / "notes.tmp-1"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert clean_stale_temporaries(tmp_path) == len(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert clean_stale_temporaries(tmp_path / "missing") == 0


def test_write_atomic_leaves_only_the_final_file(tmp_path):
    write_atomic(tmp_path / "a.txt", "one")
    write_atomic(tmp_path / "a.txt", "two", sync_dir=True)
    write_success(tmp_path)
    assert (tmp_path / "a.txt").read_text() == "two" and (tmp_path / SUCCESS_FILE).read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUCCESS_FILE, "a.txt"]


def test_the_shard_writer_writes_under_the_temporary_name_the_cleanup_removes(tmp_path):
    target = tmp_path / "s.parquet"
    writer = ShardWriter(target, [], OutputLayout(dim=2))
    writer.write([OutputRow(image_id="0", shard="s", image_path="s/0", embedding=[1.0, 0.0])])
    writer._flush()  # the parquet file is open under its temporary name
    assert writer.temp_path == temp_path(target) and writer.temp_path.exists() and not target.exists()
    assert writer.commit() == 1
    assert not writer.temp_path.exists() and pq.read_table(target).num_rows == 1

    crashed = ShardWriter(tmp_path / "t.parquet", [pa.field("x", pa.int64())], OutputLayout(dim=2))
    crashed.write([OutputRow(image_id="0", shard="t", image_path="t/0", passthrough={"x": 1})])
    crashed._flush()  # killed here: only the temporary exists
    assert clean_stale_temporaries(tmp_path) == 1 and not crashed.temp_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]
    crashed.abort()
