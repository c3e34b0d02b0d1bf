"""``report/``: a bounded sample of a large output, exact neighbours and the PCA map, thumbnails from
every kind of source (and why one is missing), and a page that escapes what it shows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jpeg, write_parquet, write_tar

from curator_cli.io.manifest import MANIFEST_KEY, Manifest
from curator_cli.io.writer import OutputLayout
from curator_cli.report.analysis import nearest, pca_2d
from curator_cli.report.page import Section, Tile, TileGroup, gallery_html, render_page
from curator_cli.report.sample import MAX_GROUPS, image_refs, read_errors, read_overview, sample_embeddings
from curator_cli.report.thumbnails import ImageRef, Thumbnail, load_thumbnails


def synthetic_output(out, files: int = 3, groups: int = 40, per_group: int = 25, dim: int = 8):
    """Output files in curator's schema, many small row groups; row r of file f has the vector
    (f, r, 1, ...) and every 10th row an error."""
    out.mkdir(parents=True)
    for f in range(files):
        rows = groups * per_group
        vectors = np.ones((rows, dim), np.float32)
        vectors[:, 0], vectors[:, 1] = f, np.arange(rows)
        errors = [f"unreadable image: row {r}" if r % 10 == 0 else None for r in range(rows)]
        vectors[[r for r in range(rows) if errors[r]]] = 0
        manifest = Manifest(f"s{f}.tar", {}, {"stages": []}, rows, sum(map(bool, errors)))
        schema = OutputLayout(dim=dim, score_columns=()).schema([]).with_metadata({MANIFEST_KEY: manifest.to_json()})
        table = pa.table({"image_id": [f"{f}-{r}" for r in range(rows)], "shard": [f"s{f}.tar"] * rows,
                          "image_path": [f"s{f}.tar/{f}-{r}.jpg" for r in range(rows)], "caption": [None] * rows,
                          "metadata": ["{}"] * rows,
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                          "error": pa.array(errors, pa.string())}, schema=schema)
        pq.write_table(table, out / f"s{f}.parquet", row_group_size=per_group)
    return out


def test_the_sample_reads_a_bounded_number_of_row_groups_and_only_embedded_rows(tmp_path):
    overview = read_overview(synthetic_output(tmp_path / "out"))
    assert overview.rows == 3 * 40 * 25 and sum(len(f.group_rows) for f in overview.files) == 120
    sample = sample_embeddings(overview, 500, seed=3)
    assert len(sample.refs) == 500 and sample.groups_read <= MAX_GROUPS
    for ref, vector in zip(sample.refs, sample.vectors):
        f, r = map(int, ref.image_id.split("-"))
        assert r % 10 and ref.row == r and vector[0] == f and vector[1] == r  # the row's own vector, no error row
    assert len({ref.image_id for ref in sample.refs}) == 500
    kinds, failed = read_errors(overview)
    assert failed == 300 and [(k.kind, k.count, len(k.examples)) for k in kinds] == [("unreadable image", 300, 3)]
    assert kinds[0].examples[0].image_id == "0-0"
    refs = image_refs(tmp_path / "out" / "s1.parquet", [620, 3, 7])  # rows of a file, e.g. a duplicate group's
    assert [(r.image_id, r.shard, r.image_path, r.row) for r in refs] == [
        ("1-620", "s1.tar", "s1.tar/1-620.jpg", 620), ("1-3", "s1.tar", "s1.tar/1-3.jpg", 3),
        ("1-7", "s1.tar", "s1.tar/1-7.jpg", 7)]


def test_neighbours_are_exact_and_never_the_query_itself():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors[7] = vectors[3] * 2  # same direction: similarity 1
    found = nearest(vectors, [3, 50], 4)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for row, q in enumerate([3, 50]):
        brute = [i for i in np.argsort(-(unit @ unit[q])) if i != q][:4]
        assert found.indices[row].tolist() == brute
        assert np.allclose(found.similarities[row], (unit @ unit[q])[brute], atol=1e-5)
    assert found.indices[0][0] == 7 and found.similarities[0][0] == pytest.approx(1.0, abs=1e-5)


def test_pca_puts_the_widest_spread_on_the_first_axis():
    rng = np.random.default_rng(1)
    vectors = np.zeros((300, 5), np.float32)
    vectors[:, 2] = rng.normal(0, 10, 300)
    vectors[:, 4] = rng.normal(0, 1, 300)
    projection = pca_2d(vectors)
    assert abs(np.corrcoef(projection.coords[:, 0], vectors[:, 2])[0, 1]) > 0.99
    assert projection.explained[0] > 0.95
    assert projection.explained[0] + projection.explained[1] == pytest.approx(1, abs=1e-6)


def test_thumbnails_from_tar_parquet_and_files_and_why_one_is_missing(tmp_path):
    tar = write_tar(tmp_path / "s.tar", [("a.txt", b"x"), ("a.jpg", jpeg(1, (300, 200))), ("b.png", jpeg(2))])
    parquet = write_parquet(tmp_path / "p.parquet", [{"key": f"k{i}", "jpg": jpeg(i)} for i in range(5)],
                            pa.schema([("key", pa.string()), ("jpg", pa.binary())]))
    hf = write_parquet(tmp_path / "hf.parquet", [{"image": {"bytes": jpeg(9), "path": "x.jpg"}}])
    (tmp_path / "loose.jpg").write_bytes(jpeg(4))
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    refs = {
        "tar": ImageRef("a", str(tar), f"{tar}/a.jpg"),
        "tar png": ImageRef("b", str(tar), f"{tar}/b.png"),
        "parquet": ImageRef("k3", str(parquet), f"{parquet}/k3", row=3),
        "hf": ImageRef("0", str(hf), f"{hf}/x.jpg", row=0),
        "file": ImageRef("loose.jpg", str(tmp_path), str(tmp_path / "loose.jpg")),
        "changed": ImageRef("k9", str(parquet), f"{parquet}/k9", row=2),
        "row gone": ImageRef("k7", str(parquet), f"{parquet}/k7", row=7),
        "key gone": ImageRef("zzz", str(tar), f"{tar}/zzz.jpg"),
        "shard gone": ImageRef("a", str(tmp_path / "gone.tar"), f"{tmp_path}/gone.tar/a.jpg"),
        "undecodable": ImageRef("bad.jpg", str(tmp_path), str(tmp_path / "bad.jpg")),
    }
    got = load_thumbnails(refs.values())
    for name in ("tar", "tar png", "parquet", "hf", "file"):
        assert got[refs[name]].data_uri.startswith("data:image/jpeg;base64,"), (name, got[refs[name]])
    assert max(got[refs["tar"]].width, got[refs["tar"]].height) == 128
    assert got[refs["changed"]].missing == "source changed: row 2 holds k2, not k9"
    assert got[refs["row gone"]].missing == "row 7 not in p.parquet any more"
    assert got[refs["key gone"]].missing == "not in s.tar any more"
    assert got[refs["shard gone"]].missing == f"source missing: {tmp_path / 'gone.tar'}"
    assert got[refs["undecodable"]].missing.startswith("cannot decode")


def test_a_gallery_marks_the_kept_image_of_a_group():
    kept = Tile(Thumbnail(missing="gone"), "a", badge="kept", marked=True)
    html = gallery_html([TileGroup("group 1: 2 images", [kept, Tile(Thumbnail(missing="gone"), "b", similarity=0.97)])])
    assert '<figure class="tile marked" data-image-id="a">' in html and '<span class="badge">kept</span>' in html
    assert 'data-image-id="b" data-similarity="0.9700"' in html and "<b class=\"sim\">0.970</b>" in html


def test_the_page_escapes_what_it_shows():
    tile = Tile(Thumbnail(missing="<b>gone</b>"), '<script>alert(1)</script>', 'a "quoted" caption', similarity=0.5)
    page = render_page("<title>", [Section("Gallery & co", gallery_html([TileGroup("<i>x</i>", [tile])]), "g")])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>gone</b>" not in page and "<i>x</i>" not in page and "Gallery &amp; co" in page
    assert "default-src 'none'" in page  # the browser loads nothing, runs nothing
