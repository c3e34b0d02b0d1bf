"""The progress bar's total and time left (``execution/progress.py`` over ``io/totals.py``): on tar
shards with and without img2dataset sidecars and on parquet shards, through the bar itself and through
the real CLI on a pseudo-terminal; and the heartbeat's status line when the bar is off."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import img2dataset_tar, jpeg, stage_spec, write_parquet

from curator_cli.execution.progress import Bar, Heartbeat, RunningTotal, format_seconds
from curator_cli.io.shards import find_shards
from curator_cli.io.totals import SampleCounts, ShardCount, count_samples

ETA = re.compile(r"(\d+)/(~?)(\d+) \[\d\d:\d\d<(\d\d:\d\d)")  # "12/~40 [00:01<00:03": done/total [elapsed<left


def tar_with_sidecar(path: Path, count: int, failed: int) -> Path:
    """An img2dataset tar of ``count`` samples, and its sidecar listing ``failed`` more as failed downloads."""
    img2dataset_tar(path, count, size=(16, 12))
    rows = [{"key": f"{i:09d}", "status": "success" if i < count else "failed_to_download"}
            for i in range(count + failed)]
    write_parquet(path.with_suffix(".parquet"), rows)
    path.with_name(path.stem + "_stats.json").write_text(json.dumps({"count": count + failed, "successes": count}))
    return path


def parquet_shard(path: Path, count: int) -> Path:
    return write_parquet(path, [{"key": f"p{i}", "jpg": jpeg(i, (16, 12))} for i in range(count)])


KINDS = {  # input kind -> (make it under a folder, rows embed writes, whether the total is exact)
    "tar with img2dataset sidecars": (lambda d: tar_with_sidecar(d / "00000.tar", 20, 3), 23, True),
    "tar without sidecars": (lambda d: img2dataset_tar(d / "bare.tar", 700, size=(8, 8)), 700, False),
    "parquet": (lambda d: parquet_shard(d / "p.parquet", 20), 20, True),
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_bar_shows_a_total_a_percentage_and_the_time_left(tmp_path, kind):
    make, rows, exact = KINDS[kind]
    make(tmp_path / "in")
    expected = count_samples(find_shards([str(tmp_path / "in")]))
    assert expected.exact == exact
    assert expected.samples == rows if exact else abs(expected.samples - rows) < 0.1 * rows
    screen = io.StringIO()
    bar = Bar(1, expected, file=screen)
    bar.tqdm.mininterval = 0  # draw every update
    step = max(1, rows // 5)
    for done in range(0, rows, step):
        bar.update(min(step, rows - done))
    bar.shards_done(1, 1)
    bar.close()
    lines = [line for line in re.split(r"[\r\n]", screen.getvalue()) if line.strip()]
    mid = [ETA.search(line) for line in lines[1:] if "shards 0/1" in line]  # drawn while the shard ran
    assert mid and all(mid), lines
    assert all(m.group(2) == ("" if exact else "~") for m in mid), lines  # an estimate is marked as one
    assert any(int(m.group(1)) < int(m.group(3)) for m in mid)  # a time left shown (not "?") before the end
    assert re.search(r"\b100%\|.*\| " + f"{rows}/{rows} ", lines[-1]), lines[-1]  # the end: exact, complete


def test_an_estimated_total_is_refined_as_shards_finish():
    counts = SampleCounts([ShardCount(10, "parquet footer"), ShardCount(50, "size estimate", False, 1000),
                           ShardCount(50, "size estimate", False, 2000), ShardCount(5, "parquet footer")])
    running = RunningTotal(counts)
    assert running.total(0) == (115, False)
    running.shard_finished(10)
    assert running.total(10) == (115, False)
    running.shard_finished(10 + 70)  # 70 rows in 1000 bytes: the next estimated shard (2000 bytes) ~140
    assert running.total(80) == (80 + 140 + 5, False)
    assert running.total(300) == (300, False)  # never below what is done
    running.shard_finished(80 + 150)
    assert running.total(230) == (235, True)  # only exact counts left
    running.shard_finished(235)
    assert running.total(235) == (235, True)


def test_the_heartbeat_line_has_the_total_and_the_time_left():
    counts = SampleCounts([ShardCount(400, "img2dataset sidecar"), ShardCount(600, "size estimate", False, 10)])
    beat = Heartbeat(2, interval=3600, expected=counts)
    try:
        beat._started -= 10  # ten seconds into the run
        beat.update(250)
        assert re.match(r"status: 250 of ~1000 images \(25%\), shards 0/2, 25\.0 images/s over 10s, 30s left$",
                        beat.status()), beat.status()
        beat.update(150)
        beat.shards_done(1, 2)
        assert "400 of ~1000 images (40%), shards 1/2" in beat.status()
    finally:
        beat.close()
    assert [format_seconds(s) for s in (4.6, 65, 7322)] == ["5s", "1m05s", "2h02m"]


def run_on_a_terminal(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """``curator ARGS`` with stderr on a pseudo-terminal 120 columns wide; (exit status, what the terminal got)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "curator_cli.cli", *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=slave, start_new_session=True)
    os.close(slave)
    screen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
        else:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"curator {' '.join(args)} still running after {timeout} s (a hang)")
        return process.wait(timeout=10), screen.decode("utf-8", "replace")
    finally:
        os.close(master)


def test_the_real_cli_on_a_terminal_shows_total_and_eta_for_tar_and_parquet_inputs(tmp_path):
    data = tmp_path / "in"
    for make, _, _ in KINDS.values():
        make(data)
    code, screen = run_on_a_terminal(["embed", str(data), "-o", str(tmp_path / "out"), "--num-workers", "1",
                                      "--batch-size", "50", "--stage", stage_spec("Shapes"),
                                      "--stage-arg", "delay=0.05"])
    assert code == 0, screen
    frames = [m for m in (ETA.search(line) for line in re.split(r"[\r\n]", screen)) if m]
    assert frames, screen
    assert frames[0].group(2) == "~"  # the bare tar is estimated from its size at first
    assert any(int(m.group(1)) < int(m.group(3)) and m.group(4) != "00:00" for m in frames), screen
    total = 23 + 700 + 20
    assert frames[-1].group(1) == frames[-1].group(3) == str(total) and frames[-1].group(2) == "", screen
    assert f"{total} image(s)" in screen
