"""Shared helpers: real tar and parquet shards written to tmp dirs, a CLI runner, the test stages
(``stages_for_tests.py``) named as ``--stage`` takes them, and what several test folders check with."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
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

TEST_STAGES = Path(__file__).resolve().parent / "stages_for_tests.py"


def stage_spec(class_name: str) -> str:
    """``--stage`` for a stage of ``tests/stages_for_tests.py``, named by file path as a user's own file is."""
    return f"{TEST_STAGES}:{class_name}"


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


def embeddings(table) -> np.ndarray:
    return np.array(table.column("embedding").to_pylist(), dtype=np.float32)


def decoded_images(shard) -> list[np.ndarray]:
    with tarfile.open(shard) as archive:
        return [np.array(Image.open(io.BytesIO(archive.extractfile(m).read())).convert("RGB"))
                for m in archive.getmembers() if m.name.endswith(".jpg")]


def assert_same_vectors(ours: np.ndarray, reference: np.ndarray) -> None:
    """Each row of ``ours`` is much closer to its own reference row than the rows are to each other."""
    errors = np.linalg.norm(ours - reference, axis=1)
    spread = min(np.linalg.norm(reference[i] - reference[j])
                 for i in range(len(reference)) for j in range(len(reference)) if i != j)
    assert errors.max() < 0.1 * spread, (errors, spread)


WATCHDOG_S = 60


def run_with_watchdog(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``curator ARGS...`` (stderr not a terminal) in its own process group, killed whole if it
    outlives the watchdog: a hang fails the test instead of hanging CI. ``env`` adds variables."""
    process = subprocess.Popen([sys.executable, "-m", "curator_cli.cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, **(env or {})})
    try:
        out, err = process.communicate(timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"curator {' '.join(map(str, args))} still running after {WATCHDOG_S} s (a hang)")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
