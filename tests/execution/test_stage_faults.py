"""A stage's mistake, or a stage that hangs, costs at most one shard (or one row), with one clear line.

Every run here is a real ``curator embed`` process on real shards, with a watchdog: a hang fails the
test instead of hanging CI. The stages are in ``tests/stages_for_tests.py`` (``Misbehaves``,
``ReturnsObjects``, ``Sleepy``).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import jpeg, run_with_watchdog, stage_spec, write_tar


def embed(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m curator_cli.cli embed ...`` under the watchdog (stderr not a terminal)."""
    return run_with_watchdog("embed", *args, env=env)


def shard(path: Path, ids: list[str]) -> Path:
    return write_tar(path, [(f"{image_id}.jpg", jpeg(i, (48, 32))) for i, image_id in enumerate(ids)])


def failure_lines(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(shard file name, reason) of every ``curator: shard SHARD failed: REASON`` line on stderr."""
    lines = [line for line in result.stderr.splitlines() if "failed" in line and "shard(s)" not in line]
    found = [re.fullmatch(r"curator: shard (.+?) failed: (.*)", line) for line in lines]
    assert all(found), result.stderr
    return [(Path(m.group(1)).name, m.group(2)) for m in found]


def rows(path: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(path).to_pylist()}


def assert_embedded(row: dict) -> None:
    assert row["error"] is None and row["embedding"][:2] == [32.0, 48.0], row


def assert_failed(row: dict, error: str) -> None:
    assert row["error"] == error and not any(row["embedding"]), row


# --------------------------------------------------------------------------- 1. invalid values and returns


def test_invalid_output_values_fail_their_row_only(tmp_path):
    ids = ["0-ok", "1-str", "2-score", "3-nsfw", "4-meta", "5-ok"]
    result = embed(shard(tmp_path / "s.tar", ids), "-o", tmp_path / "out", "--stage", stage_spec("Misbehaves"),
                   "--num-workers", "1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = rows(tmp_path / "out" / "s.parquet")
    assert list(out) == ids
    assert_embedded(out["0-ok"])
    assert_embedded(out["5-ok"])
    assert_failed(out["1-str"], "stage set embedding to a str, not a vector")
    assert_failed(out["2-score"], "stage set aesthetic_score to a str, not a number")
    assert_failed(out["3-nsfw"], "stage set nsfw_score to a str, not a number")
    assert_failed(out["4-meta"], "stage set metadata to a str, not a dict")


def test_a_stage_returning_image_objects_fails_its_shard_with_one_line(tmp_path):
    shard(tmp_path / "in" / "a.tar", ["a0", "a1"])
    shard(tmp_path / "in" / "b.tar", ["b0", "b1-bad", "b2"])
    shard(tmp_path / "in" / "c.tar", ["c0"])
    out = tmp_path / "out"
    result = embed(tmp_path / "in", "-o", out, "--stage", stage_spec("ReturnsObjects"), "--num-workers", "1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert failure_lines(result) == [("b.tar", "stage 'returns_objects' returned a list of 3 ImageObject "
                                            "(an ImageBatch, a list of ImageBatch, or None expected)")]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["a.parquet", "c.parquet"]  # the run went on
    assert all(r["error"] is None for r in rows(out / "c.parquet").values())


# --------------------------------------------------------------------------- 2. an empty embedding


def test_an_empty_embedding_is_a_row_error_and_never_fixes_the_dimension(tmp_path):
    ids = ["0-empty", "1-ok", "2-ok", "3-empty"]  # the first vector the run sees is empty
    result = embed(shard(tmp_path / "s.tar", ids), "-o", tmp_path / "out", "--stage", stage_spec("Misbehaves"),
                   "--num-workers", "1", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "out" / "s.parquet"
    assert pq.read_schema(path).field("embedding").type == pa.list_(pa.float32(), 3)
    out = rows(path)
    assert_failed(out["0-empty"], "stage set an empty embedding (0 values)")
    assert_failed(out["3-empty"], "stage set an empty embedding (0 values)")
    assert_embedded(out["1-ok"])
    assert_embedded(out["2-ok"])


# --------------------------------------------------------------------------- 3. float16 overflow


def test_values_beyond_float16_are_a_row_error_not_inf(tmp_path):
    ids = ["0-ok", "1-huge", "2-ok"]
    result = embed(shard(tmp_path / "s.tar", ids), "-o", tmp_path / "out", "--stage", stage_spec("Misbehaves"),
                   "--num-workers", "1", "--embedding-dtype", "float16")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "out" / "s.parquet"
    assert pq.read_schema(path).field("embedding").type == pa.list_(pa.float16(), 3)
    out = rows(path)
    assert_failed(out["1-huge"], "embedding out of float16 range")
    assert all(np.isfinite(r["embedding"]).all() for r in out.values())
    assert_embedded(out["0-ok"])


# --------------------------------------------------------------------------- 6. a stage that hangs


def test_a_stage_past_the_stage_timeout_fails_its_shard_and_stops_the_run(tmp_path):
    shard(tmp_path / "in" / "a.tar", ["a0", "a1"])
    shard(tmp_path / "in" / "b.tar", ["b0", "b1-hang"])
    shard(tmp_path / "in" / "c.tar", ["c0"])
    out = tmp_path / "out"
    started = time.monotonic()
    result = embed(tmp_path / "in", "-o", out, "--stage", stage_spec("Sleepy"), "--stage-arg", "seconds=60",
                   "--stage-arg", "on=hang", "--stage-timeout", "1", "--num-workers", "1")
    assert time.monotonic() - started < 30  # not the 60 s the stage sleeps
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [(name, reason)] = failure_lines(result)
    assert name == "b.tar" and reason.startswith("stage 'sleepy' did not return within 1s (--stage-timeout)")
    assert "rerun to resume" in reason
    assert sorted(p.name for p in out.glob("*.parquet")) == ["a.parquet"]  # c.tar was not started
    assert not (out / "_curator.lock").exists() and not list(out.glob(".*tmp-*"))


def test_stage_timeout_zero_runs_the_stages_in_the_main_thread(tmp_path):
    result = embed(shard(tmp_path / "s.tar", ["0-ok"]), "-o", tmp_path / "out", "--stage", stage_spec("Sleepy"),
                   "--stage-timeout", "0", "--num-workers", "1")
    assert result.returncode == 0, result.stderr
    assert_embedded(rows(tmp_path / "out" / "s.parquet")["0-ok"])


# --------------------------------------------------------------------------- 7. a heartbeat in the log


def test_a_status_line_reaches_the_log_while_a_stage_runs_and_the_bar_is_off(tmp_path):
    log = tmp_path / "run.log"
    result = embed(shard(tmp_path / "s.tar", ["0-ok", "1-ok"]), "-o", tmp_path / "out", "--stage",
                   stage_spec("Sleepy"), "--stage-arg", "seconds=1.5", "--num-workers", "1", "--log-file", log,
                   env={"CURATOR_HEARTBEAT_S": "0.25"})
    assert result.returncode == 0, result.stderr
    status = [line for line in log.read_text().splitlines() if " status: " in line]
    assert len(status) >= 3, log.read_text()
    waiting = [line for line in status if re.search(r"waiting on stage 'sleepy' \(\S*s\.tar batch 0\) for \d+s$", line)]
    assert waiting and "0 of 2 images (0%), shards 0/1, " in waiting[0], status
    assert "status:" not in result.stderr  # the log only: stderr gets the summary, as before
