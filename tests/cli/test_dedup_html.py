"""``curator dedup --html``: a page of duplicate groups with thumbnails read back from the source
shards (a tar and a folder here), the kept image of each group framed, every image with its
similarity to its nearest duplicate."""

from __future__ import annotations

import re

from conftest import encode, run_with_watchdog, synthetic_photo, write_tar


def test_dedup_html_shows_each_group_with_its_kept_image_and_thumbnails_from_the_sources(cli, tmp_path):
    pictures = {f"p{seed}": synthetic_photo(seed, (320, 240)) for seed in range(6)}
    # a tar shard: four pictures, two of them with a half-size copy beside them
    members = []
    for name in ("p0", "p1", "p2", "p3"):
        members.append((f"{name}.jpg", encode(pictures[name], quality=92)))
    for name in ("p0", "p1"):
        members.append((f"{name}-small.jpg", encode(pictures[name].resize((160, 120)), quality=92)))
    write_tar(tmp_path / "shards" / "00000.tar", members)
    # a folder: two more pictures and a copy of p4
    folder = tmp_path / "folder"
    folder.mkdir()
    pictures["p4"].save(folder / "p4.png")
    pictures["p5"].save(folder / "p5.png")
    pictures["p4"].resize((200, 150)).save(folder / "p4-small.png")

    for source, out in ((tmp_path / "shards" / "00000.tar", "emb-tar"), (folder, "emb-folder")):
        result = cli("embed", source, "-o", tmp_path / out, "-q")
        assert result.exit_code == 0, result.output
    page_path = tmp_path / "report" / "dedup.html"
    done = run_with_watchdog("dedup", tmp_path / "emb-tar", tmp_path / "emb-folder", "-o", tmp_path / "dedup",
                             "--html", page_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote {page_path} (3 groups, 6 images)" in done.stderr
    page = page_path.read_text()

    groups = re.findall(r'<div class="group"><h3>group (\d+): (\d+) images', page)
    assert sorted(int(size) for _, size in groups) == [2, 2, 2]
    tiles = re.findall(r'<figure class="([^"]*)" data-image-id="([^"]*)" data-similarity="([0-9.]+)"', page)
    assert len(tiles) == 6
    assert sorted(tile_id.rsplit("/", 1)[-1] for _, tile_id, _ in tiles) == sorted(
        ["p0", "p0-small", "p1", "p1-small", "p4.png", "p4-small.png"])
    assert sum("marked" in classes for classes, _, _ in tiles) == 3  # one kept image per group
    assert all(float(similarity) >= 0.85 for _, _, similarity in tiles)
    assert page.count('src="data:image/jpeg;base64,') == 6  # every thumbnail read from its tar or folder
    assert 'class="missing"' not in page


def test_dedup_html_inside_the_output_is_refused(cli, tmp_path):
    write_tar(tmp_path / "s.tar", [(f"{i}.jpg", encode(synthetic_photo(i, (96, 64)))) for i in range(3)])
    assert cli("embed", tmp_path / "s.tar", "-o", tmp_path / "emb", "-q").exit_code == 0
    done = run_with_watchdog("dedup", tmp_path / "emb", "-o", tmp_path / "dedup", "--html",
                             tmp_path / "dedup" / "page.html")
    assert done.returncode == 2
    assert "--html" in done.stderr and "Traceback" not in done.stderr


def test_dedup_html_over_other_parquet_with_integer_ids_says_where_no_picture_is(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = [[1.0, 0.0, 0.0], [0.99, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    pq.write_table(pa.table({"id": pa.array([10, 11, 12, 13], pa.int64()),
                             "vector": pa.array(vectors, pa.list_(pa.float32()))}), tmp_path / "vectors.parquet")
    done = run_with_watchdog("dedup", tmp_path / "vectors.parquet", "-o", tmp_path / "dedup", "--threshold", "0.95",
                             "--id-column", "id", "--embedding-column", "vector", "--html", tmp_path / "page.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "page.html").read_text()
    assert sorted(re.findall(r'data-image-id="(\d+)"', page)) == ["10", "11"]
    assert "source unknown" in page  # no shard or image_path column: nothing to read a picture from
