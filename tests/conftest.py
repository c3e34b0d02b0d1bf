"""Shared helpers: real tar and parquet shards written to tmp dirs, and a CLI runner."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from curator_cli.cli import main

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_sample_data", ROOT / "sample_data" / "make_sample_data.py")
sample_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_data)

synthetic_photo = sample_data.synthetic_photo


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    return encode(synthetic_photo(seed, size))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with exactly these members, in this order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def img2dataset_tar(path: Path, count: int = 5, first_seed: int = 0, size=(96, 64)) -> Path:
    """A shard in img2dataset layout: KEY.jpg, KEY.txt, KEY.json per sample."""
    members = []
    for i in range(count):
        key = f"{i:09d}"
        members += [
            (f"{key}.jpg", jpeg(first_seed + i, size)),
            (f"{key}.txt", f"caption {key}".encode()),
            (f"{key}.json", json.dumps({"key": key, "url": f"http://x/{key}", "status": "success"}).encode()),
        ]
    return write_tar(path, members)


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def cli():
    """Invoke ``curator`` in-process; returns click's Result (exit_code, output)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def read_output(path: Path) -> pa.Table:
    return pq.read_table(path)


def unit_norms(table: pa.Table) -> np.ndarray:
    vectors = np.array([v for v in table.column("embedding").to_pylist() if v is not None], dtype=np.float32)
    return np.linalg.norm(vectors, axis=1)
