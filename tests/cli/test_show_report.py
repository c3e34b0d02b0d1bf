"""``curator show OUT --html FILE`` on a real run: the page's numbers, images and neighbours, read from
its DOM as written and as headless Chromium renders it (with a screenshot that is not blank); sources
that are gone are shown as such; the mistakes a user can make are one line and exit status 2."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import encode, run_with_watchdog, synthetic_photo, write_parquet, write_tar
from PIL import Image

ROWS, FAILED, NEIGHBOURS = 16, 2, 3


def photo(seed: int) -> bytes:
    return encode(synthetic_photo(seed, (160, 120)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run over an img2dataset tar (6 images, 1 failed download in its sidecar), a bare tar whose
    first two images are copies of the first tar's, and a parquet shard (4 images, 1 that is no image)."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    members = []
    for i in range(6):
        key = f"{i:09d}"
        members += [(f"{key}.jpg", photo(i)), (f"{key}.txt", f"picture {i}".encode())]
    write_tar(data / "i2d" / "00000.tar", members)
    write_parquet(data / "i2d" / "00000.parquet",
                  [{"key": f"{i:09d}", "status": "success" if i < 6 else "failed_to_download"} for i in range(7)])
    write_tar(data / "bare" / "b.tar", [(f"copy{i}.jpg", photo(i)) for i in range(2)]
              + [(f"other{i}.jpg", photo(20 + i)) for i in range(2)])
    write_parquet(data / "p.parquet", [{"key": f"p{i}", "jpg": photo(10 + i)} for i in range(4)]
                  + [{"key": "broken", "jpg": b"not an image at all"}])
    out, summary = root / "out", root / "summary.json"
    embedded = run_with_watchdog("embed", data, "-o", out, "--summary-json", summary, "--num-workers", "1", "-q")
    assert embedded.returncode == 0, embedded.stderr
    report = root / "report.html"
    shown = run_with_watchdog("show", out, "--html", report, "--summary-json", summary, "--gallery", "100",
                              "--neighbours", str(NEIGHBOURS), "--rows", "0")
    assert shown.returncode == 0, shown.stderr
    return root, data, out, summary, report, shown.stdout


@dataclass
class Page:
    """What a test reads back from a report's DOM."""

    counts: dict[str, str] = field(default_factory=dict)  # stat label -> data-count
    kinds: dict[str, int] = field(default_factory=dict)  # error kind -> rows
    groups: list[list[dict]] = field(default_factory=list)  # per gallery row: its tiles' attributes
    images: list[str] = field(default_factory=list)  # img src values
    points: int | None = None
    time_parts: list[str] = field(default_factory=list)
    scripts: int = 0


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._tile: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.page.scripts += 1
        if "data-label" in a:
            self.page.counts[a["data-label"]] = a["data-count"]
        if "data-kind" in a:
            self.page.kinds[a["data-kind"]] = int(a["data-count"])
        if "data-part" in a:
            self.page.time_parts.append(a["data-part"])
        if tag == "svg" and "data-points" in a:
            self.page.points = int(a["data-points"])
        if tag == "div" and a.get("class") == "group":
            self.page.groups.append([])
        if tag == "figure" and "tile" in a.get("class", ""):
            self._tile = {**a, "img": None, "missing": None}
            self.page.groups[-1].append(self._tile)
        if tag == "img":
            self.page.images.append(a["src"])
            if self._tile is not None:
                self._tile["img"] = a["src"]
        if "data-missing" in a and self._tile is not None:
            self._tile["missing"] = a["data-missing"]

    def handle_endtag(self, tag):
        if tag == "figure":
            self._tile = None


def read_page(html_text: str) -> Page:
    reader = _Reader()
    reader.feed(html_text)
    return reader.page


def check_page(page: Page) -> None:
    """The numbers, images and neighbours the run should give, whoever parsed the page."""
    assert page.counts["rows"] == str(ROWS) and page.counts["not embedded (error set)"] == str(FAILED)
    assert page.counts["embedded"] == str(ROWS - FAILED) and page.counts["dimension"] == "303"
    assert page.kinds["input status failed_to_download"] == 1 and sum(page.kinds.values()) == FAILED
    assert page.points == ROWS - FAILED  # every embedded row on the map
    assert page.time_parts == ["setup", "read", "decode", "wait for input", "stages", "write"]
    assert page.scripts == 0
    assert len(page.groups) == ROWS - FAILED  # --gallery 100: every embedded image is a query
    for tiles in page.groups:
        query, *neighbours = tiles
        assert "query" in query["class"] and len(neighbours) == NEIGHBOURS
        similarities = [float(t["data-similarity"]) for t in neighbours]
        assert similarities == sorted(similarities, reverse=True) and all(-1.001 <= s <= 1.001 for s in similarities)
        assert query["data-image-id"] not in [t["data-image-id"] for t in neighbours]
        assert all(t["img"] and t["img"].startswith("data:image/jpeg;base64,") for t in tiles), tiles
    by_query = {tiles[0]["data-image-id"]: tiles[1:] for tiles in page.groups}
    for copy, original in (("copy0", "000000000"), ("copy1", "000000001")):  # the same picture, twice
        assert by_query[copy][0]["data-image-id"] == original and float(by_query[copy][0]["data-similarity"]) > 0.99
        assert by_query[original][0]["data-image-id"] == copy
    assert {"p0", "p3", "other1", "000000005"} <= set(by_query)  # parquet rows and tar members both found
    sizes = {Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size for src in page.images}
    assert all(max(size) <= 128 for size in sizes)


def test_the_report_has_the_runs_numbers_images_and_neighbours(run):
    root, _, _, _, report, stdout = run
    assert f"wrote {report}: {ROWS - FAILED} images; neighbours among {ROWS - FAILED} sampled rows of {ROWS}" in stdout
    check_page(read_page(report.read_text()))
    links = re.findall(r'(?:src|href)="([^"]*)"', report.read_text())
    assert links and all(link.startswith(("data:", "#")) for link in links)  # loads nothing from anywhere


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian's package chromium; `make test` installs it "
                    "when it runs as root with apt-get)")
    return found


def test_chromium_renders_the_report_not_blank_with_the_same_dom(run, tmp_path):
    _, _, _, _, report, _ = run
    browser = chromium()
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    check_page(read_page(dom.stdout))
    shot = tmp_path / "report.png"
    done = subprocess.run([*base, "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1280) and pixels.std() > 20, pixels.std()  # text, plot and thumbnails, not blank
    bands = [pixels[y:y + 200].std() for y in range(0, 1600, 200)]
    assert sum(b > 10 for b in bands) >= 6, bands  # drawn down the page, not in one corner


def test_sources_that_are_gone_are_shown_as_missing(run, cli, tmp_path):
    _, data, out, _, _, _ = run
    moved = data / "bare" / "b.tar"
    moved.rename(tmp_path / "b.tar")
    try:
        result = cli("show", out, "--html", tmp_path / "r.html", "--gallery", "100", "--neighbours", "1")
    finally:
        (tmp_path / "b.tar").rename(moved)
    assert result.exit_code == 0, result.output
    page = read_page((tmp_path / "r.html").read_text())
    tiles = {t["data-image-id"]: t for group in page.groups for t in group}
    for key in ("copy0", "copy1", "other0", "other1"):
        assert tiles[key]["img"] is None and tiles[key]["missing"] == f"source missing: {moved}"
    assert tiles["p0"]["img"] and tiles["000000000"]["img"]
    assert ", 4 of them with no readable source;" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--summary-json", "{summary}"], "--summary-json is read for the HTML report: add --html FILE"),
    (["--html", "{out}/r.html"], "would be written among the shards or outputs"),
    (["--html", "{tmp}/r.html", "--summary-json", "{tmp}/other.json"], "is not a summary written by curator embed"),
    (["--html", "{tmp}/r.html", "--summary-json", "{tmp}/nothing.json"], "cannot read --summary-json"),
])
def test_mistakes_are_one_line_and_exit_2(run, cli, tmp_path, extra, message):
    _, _, out, summary, _, _ = run
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    args = [a.format(summary=summary, out=out, tmp=tmp_path) for a in extra]
    result = cli("show", out, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.html").exists()
