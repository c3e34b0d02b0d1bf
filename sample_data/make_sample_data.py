"""Writes the small sample shards in this directory (deterministic; rerun to regenerate).

- ``webdataset/00000.tar``: img2dataset layout, 9-digit keys, ``.jpg``/``.txt``/``.json`` members,
  with img2dataset's metadata sidecar ``00000.parquet`` and ``00000_stats.json`` beside it.
- ``parquet/part-00000.parquet``: img2dataset's parquet output mode (``jpg`` bytes column,
  ``key``, ``caption``, ``status``), including one failed download with no image.

The pictures are synthetic (gradients, shapes, texture) so that nothing here has a licence of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
CAPTIONS = [
    "a red circle over a blue sky", "green hills at dusk", "an orange square on grey",
    "stripes in the afternoon", "a yellow sun above the sea", "purple shapes in the fog",
    "a dark forest clearing", "pastel blocks on a table", "a bright window at night",
    "two moons over sand", "a bridge made of triangles", "rain on a teal wall",
]


def synthetic_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth, textured picture: a two-colour gradient, a few filled shapes, blur and grain."""
    rng = np.random.default_rng(seed)
    w, h = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    base = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, max(1, w * 7 // 8))), int(rng.integers(0, max(1, h * 7 // 8)))
        x1, y1 = x0 + int(rng.integers(w // 10 + 1, w // 2 + 2)), y0 + int(rng.integers(h // 10 + 1, h // 2 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(payload))


def write_webdataset(directory: Path, shard_id: int = 0, count: int = 8) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    with tarfile.open(directory / f"{shard_id:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as archive:
        for index in range(count):
            key = f"{shard_id * 10_000 + index:09d}"
            image = synthetic_photo(1000 * shard_id + index)
            data = jpeg_bytes(image)
            caption = CAPTIONS[index % len(CAPTIONS)]
            meta = {
                "url": f"https://example.com/images/{key}.jpg", "caption": caption, "key": key,
                "status": "success", "error_message": None, "width": image.width, "height": image.height,
                "original_width": image.width * 2, "original_height": image.height * 2, "exif": "{}",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            records.append(meta)
            _add(archive, f"{key}.jpg", data)
            _add(archive, f"{key}.txt", caption.encode())
            _add(archive, f"{key}.json", json.dumps(meta).encode())
    pq.write_table(pa.Table.from_pylist(records), directory / f"{shard_id:05d}.parquet")
    stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0}
    (directory / f"{shard_id:05d}_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def write_parquet(path: Path, count: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        key = f"{100_000 + index:09d}"
        failed = index == count - 1
        rows.append({
            "key": key,
            "url": f"https://example.com/p/{key}.jpg",
            "caption": CAPTIONS[(index + 5) % len(CAPTIONS)],
            "status": "failed_to_download" if failed else "success",
            "error_message": "HTTP 404" if failed else None,
            "width": None if failed else 320,
            "height": None if failed else 240,
            "jpg": None if failed else jpeg_bytes(synthetic_photo(5000 + index)),
        })
    schema = pa.schema([
        ("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("status", pa.string()),
        ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("jpg", pa.binary()),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


if __name__ == "__main__":
    write_webdataset(HERE / "webdataset")
    write_parquet(HERE / "parquet" / "part-00000.parquet")
    print(f"wrote sample shards under {HERE}")
