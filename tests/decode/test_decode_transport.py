"""The decode transport never deadlocks, whatever the image size, worker count or input format.

img2dataset's default output is 256-px JPEGs of 10-30 KB: small members travel inline to the
workers, 32 to a job, and their decoded pixels come back through the pipe. Both directions then
exceed a socket buffer, which once deadlocked the run with four workers or fewer. Each run here is
a real ``curator embed`` process with a watchdog: a hang fails the test after 60 s (the whole
process group is killed) instead of hanging CI.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_with_watchdog

COUNT = 96  # three jobs of 32 per worker and more: every worker gets both of its job slots filled


def noisy_jpeg(seed: int, side: int) -> bytes:
    """A photo-like JPEG, small enough to travel inline (about 7 KB at 256 px)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, side)[None, :, None] + rng.integers(0, 55, 3)
    pixels = (ramp + rng.normal(0, 12, (side, side, 3))).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def write_shard(root: Path, fmt: str, side: int) -> Path:
    images = [noisy_jpeg(i, side) for i in range(COUNT)]
    if fmt == "tar":
        path = root / "00000.tar"
        with tarfile.open(path, "w") as archive:
            for i, data in enumerate(images):
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    else:
        path = root / "00000.parquet"
        pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(COUNT)], "jpg": images}), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("side", [256, 64])
@pytest.mark.parametrize("fmt", ["tar", "parquet"])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_small_images_never_deadlock_the_decode_workers(tmp_path, fmt, side, workers):
    """The default stage: 32 inline images (7 KB each) per job out, 32 x 12 KB of squares back, both
    past a socket buffer."""
    (tmp_path / "in").mkdir()
    shard = write_shard(tmp_path / "in", fmt, side)
    out = tmp_path / "out"
    result = run_with_watchdog("embed", str(shard), "-o", str(out), "--num-workers", str(workers),
                               "--batch-size", "256", "-q")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out / "00000.parquet")
    assert table.num_rows == COUNT
    assert table.column("image_id").to_pylist() == [f"{i:09d}" for i in range(COUNT)]
    assert table.column("error").null_count == COUNT  # every image embedded
