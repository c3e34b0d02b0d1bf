"""``io/totals.py``: how many rows a run will write, counted before decoding, on real shards of every
layout; the same numbers ``curator inspect`` prints."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import img2dataset_tar, jpeg, write_parquet

from curator_cli.cli.inspection import describe_shard
from curator_cli.io.readers import ReadOptions
from curator_cli.io.shards import find_shards
from curator_cli.io.totals import ESTIMATED, count_samples


def with_sidecars(tar: Path, count: int, failed: int, stats: bool = True, parquet: bool = True) -> Path:
    """img2dataset's sidecars beside ``tar`` (holding ``count`` samples): ``failed`` more samples listed
    as failed downloads in ``NNNNN.parquet`` only, ``successes`` in ``NNNNN_stats.json``."""
    rows = [{"key": f"{i:09d}", "status": "success" if i < count else "failed_to_download"}
            for i in range(count + failed)]
    if parquet:
        write_parquet(tar.with_suffix(".parquet"), rows)
    if stats:
        tar.with_name(tar.stem + "_stats.json").write_text(json.dumps(
            {"count": count + failed, "successes": count, "failed_to_download": failed, "failed_to_resize": 0}))
    return tar


def counted(*inputs: Path):
    return count_samples(find_shards([str(p) for p in inputs]))


def rows_embed_writes(path: Path) -> int:
    """What ``inspect`` counts by reading the shard through (embed writes one row per sample)."""
    [shard] = find_shards([str(path)])
    return describe_shard(shard, 0, ReadOptions()).samples


def test_parquet_rows_come_from_the_footer(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"key": str(i), "jpg": jpeg(i)} for i in range(7)])
    [count] = counted(path).counts
    assert (count.samples, count.source, count.exact) == (7, "parquet footer", True)


@pytest.mark.parametrize("stats", [True, False])
def test_tar_with_sidecar_counts_the_failed_downloads_embed_writes_as_rows(tmp_path, stats):
    tar = with_sidecars(img2dataset_tar(tmp_path / "00000.tar", 4), count=4, failed=2, stats=stats)
    [count] = counted(tar).counts
    source = "img2dataset stats" if stats else "img2dataset sidecar"  # the stats' count: a smaller read
    assert (count.samples, count.source, count.exact) == (6, source, True)
    assert count.samples == rows_embed_writes(tar)


def test_tar_with_stats_only_counts_successes(tmp_path):
    tar = with_sidecars(img2dataset_tar(tmp_path / "00000.tar", 5), count=5, failed=3, parquet=False)
    [count] = counted(tar).counts
    assert (count.samples, count.source, count.exact) == (5, "img2dataset stats", True)
    assert count.samples == rows_embed_writes(tar)


def test_small_bare_tar_is_counted_from_its_headers(tmp_path):
    tar = img2dataset_tar(tmp_path / "bare.tar", 6)
    [count] = counted(tar).counts
    assert (count.samples, count.source, count.exact) == (6, "tar headers", True)


def test_bare_tars_past_the_header_walk_are_estimated_from_their_size(tmp_path):
    sizes = [40, 60, 80, 100]
    for i, n in enumerate(sizes):
        img2dataset_tar(tmp_path / "bare" / f"{i:05d}.tar", n, first_seed=i * 1000, size=(16, 12))
    counts = count_samples(find_shards([str(tmp_path / "bare")]), sampled_tars=2, prefix_members=30)
    assert [c.source for c in counts.counts] == [ESTIMATED] * 4 and not counts.exact
    for count, n in zip(counts.counts, sizes):
        assert abs(count.samples - n) <= 0.1 * n, (count, n)  # same layout: bytes per sample carry over
    assert counts.text().startswith(f"about {counts.samples} images (4 of 4 shard(s) estimated")


def test_compressed_bare_tar_is_counted_from_its_stream(tmp_path):
    tar = img2dataset_tar(tmp_path / "x.tar", 9)
    gz = tmp_path / "gz" / "x.tar.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(tar.read_bytes()))
    [count] = counted(gz).counts
    assert (count.samples, count.exact) == (9, True)


def test_folders_are_counted_from_their_listing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(i))
    (folder / "notes.txt").write_text("not an image")
    [count] = counted(folder).counts
    assert (count.samples, count.source) == (3, "listing")


def test_mixed_inputs_add_up_and_an_unreadable_shard_counts_nothing(tmp_path):
    data = tmp_path / "data"
    with_sidecars(img2dataset_tar(data / "00000.tar", 3), count=3, failed=1)
    write_parquet(data / "p.parquet", [{"key": str(i), "jpg": jpeg(i)} for i in range(4)],
                  pa.schema([("key", pa.string()), ("jpg", pa.binary())]))
    (data / "broken.parquet").write_bytes(b"PAR1 not really")
    counts = counted(data)
    assert counts.samples == 4 + 4 and counts.exact
    assert sorted(c.source for c in counts.counts) == ["img2dataset stats", "parquet footer", "unreadable"]


def test_inspect_prints_the_progress_total(cli, tmp_path):
    with_sidecars(img2dataset_tar(tmp_path / "d" / "00000.tar", 3), count=3, failed=1)
    img2dataset_tar(tmp_path / "d" / "bare.tar", 2)
    result = cli("inspect", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert ("embed's progress total (counted without reading the images): 6 images (exact: "
            "1 img2dataset stats, 1 tar headers)") in result.output
    assert "2 shard(s), 6 sample(s)" in result.output  # what reading every shard through finds
