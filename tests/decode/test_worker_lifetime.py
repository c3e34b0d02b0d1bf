"""Decode workers live no longer than their run, and a worker's death costs no good image.

- ``kill -9`` of ``curator embed`` takes its decode workers with it (``PR_SET_PDEATHSIG``): nothing
  of the run stays behind holding memory or the run's stdout, and the next run removes the
  shared-memory buffers the dead one left.
- A forked worker holds no parent-side pipe end (its own or another worker's), so no pipe is kept
  open by the wrong process.
- An image whose worker is killed under it (as by the OOM killer) is decoded again in a fresh
  worker; only an image that kills a second worker is a "decoder crashed" row.
"""

from __future__ import annotations

import glob
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import curator_cli.decode.pool as pool_module
from curator_cli.decode.pool import DecodePool
from curator_cli.options import DecodeOptions

from conftest import jpeg, stage_spec, write_tar

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")


def _slow_png() -> bytes:
    """About a second to decode (8000 x 8000 pixels, under Pillow's limit), tiny when compressed."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process: pid -> (state, parent pid, session id), from /proc/PID/stat."""
    found = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        found[int(stat.split("/")[2])] = (fields[0], int(fields[1]), int(fields[3]))
    return found


def _alive_in_session(session: int) -> list[int]:
    """Processes of ``session`` that still run (zombies, dead but not yet reaped, do not count)."""
    return [pid for pid, (state, _, sid) in _processes().items() if sid == session and state != "Z"]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _at_eof(stream) -> bool:
    """True once every holder of the pipe's write end has closed it."""
    try:
        return os.read(stream.fileno(), 65536) == b""
    except BlockingIOError:
        return False


@linux_only
@pytest.mark.slow
def test_kill_9_of_a_run_takes_its_decode_workers_and_the_next_run_removes_its_shared_memory(tmp_path):
    # 640 x 480 pixels decode to 900 KB, above the size that travels through shared memory
    members = [(f"{i:09d}.jpg", jpeg(i, (640, 480))) for i in range(12)]
    shard = write_tar(tmp_path / "in" / "s.tar", members)
    victim = subprocess.Popen(
        [sys.executable, "-m", "curator_cli.cli", "embed", str(shard), "-o", str(tmp_path / "out"),
         "--stage", stage_spec("ShapesOrFail"), "--stage-arg", "delay=30", "--batch-size", "2", "--num-workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # as `curator embed ... | cat`
    os.set_blocking(victim.stdout.fileno(), False)
    segments = f"/dev/shm/curator-{victim.pid}-*"
    try:
        _wait_for(lambda: len([p for p, (_, ppid, _) in _processes().items() if ppid == victim.pid]) >= 2,
                  30, "two decode workers")
        _wait_for(lambda: glob.glob(segments), 30, "decoded pixels in shared memory")
        workers = [p for p, (_, ppid, _) in _processes().items() if ppid == victim.pid]

        victim.kill()
        victim.wait(timeout=10)
        _wait_for(lambda: not _alive_in_session(victim.pid), 5, f"the run's processes to end (workers {workers})")
        _wait_for(lambda: _at_eof(victim.stdout), 5, "nothing to hold the run's stdout open")
    finally:
        try:
            os.killpg(victim.pid, signal.SIGKILL)  # whatever is left of the run, so a failure leaves nothing behind
        except ProcessLookupError:
            pass
        victim.wait(timeout=10)
    assert glob.glob(segments)  # SIGKILL left them: removing them is the next run's job

    next_run = subprocess.run(
        [sys.executable, "-m", "curator_cli.cli", "embed", str(write_tar(tmp_path / "in2" / "t.tar", members[:1])),
         "-o", str(tmp_path / "out2"), "--stage", stage_spec("ShapesOrFail"), "--num-workers", "1"],
        capture_output=True, text=True, timeout=60)
    assert next_run.returncode == 0, next_run.stderr
    assert glob.glob(segments) == []


def _socket_inodes(pid: int | str) -> set[str]:
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


@linux_only
def test_forked_workers_hold_no_parent_side_pipe_end():
    with DecodePool(3, DecodeOptions(), start_method="fork") as pool:
        for _ in range(3):
            assert isinstance(pool.submit([jpeg(1)]).wait()[0], np.ndarray)
        pool._workers[0].process.kill()  # a replacement is forked later, by the dispatch thread
        _wait_for(lambda: pool.replaced_workers == 1, 10, "the replacement")
        assert isinstance(pool.submit([jpeg(2)]).wait()[0], np.ndarray)
        parent_ends = {os.readlink(f"/proc/self/fd/{w.conn.fileno()}") for w in pool._workers}
        parent_ends |= {os.readlink(f"/proc/self/fd/{s.fileno()}") for s in (pool._wake_r, pool._wake_w)}
        for worker in pool._workers:
            held = _socket_inodes(worker.process.pid) & parent_ends
            assert not held, f"worker {worker.process.pid} holds the parent's {held}"


@pytest.mark.slow
def test_an_image_whose_worker_is_killed_is_decoded_again_in_a_fresh_worker():
    slow = _slow_png()
    with DecodePool(1, DecodeOptions(min_side=64, crop=True), timeout_s=60) as pool:  # 64-px squares back
        job = pool.submit([slow, jpeg(3)])
        _wait_for(lambda: pool._workers[0].progress.value == 0, 10, "the worker to be on the slow image")
        victim = pool._workers[0].process
        victim.kill()  # as the OOM killer would
        results = job.wait()
        assert isinstance(results[0], np.ndarray) and results[0].shape == (64, 64, 3)
        assert isinstance(results[1], np.ndarray)
        assert pool.replaced_workers == 1 and pool._workers[0].process.pid != victim.pid


def _decode_or_die(data, options):
    """Stands in for ``picture_one`` in forked workers: ``b"die"`` kills its worker every time,
    ``b"die-once:PATH"`` only while PATH does not exist (it creates it)."""
    if data == b"die":
        os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(data, bytes) and data.startswith(b"die-once:"):
        marker = Path(data.split(b":", 1)[1].decode())
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        data = jpeg(5)
    return original_picture_one(data, options)


original_picture_one = pool_module.picture_one


def test_an_image_that_kills_two_workers_is_a_crash_row_and_costs_no_other(monkeypatch, tmp_path):
    monkeypatch.setattr(pool_module, "picture_one", _decode_or_die)  # forked workers inherit it
    with DecodePool(2, DecodeOptions(), start_method="fork") as pool:
        once = b"die-once:" + str(tmp_path / "died").encode()
        results = pool.submit([jpeg(1), b"die", jpeg(2), once, jpeg(3)]).wait()
        assert results[1].startswith("decoder crashed (worker exit code -9)")
        assert all(isinstance(results[i], np.ndarray) for i in (0, 2, 3, 4))  # "die-once" decoded on its retry
        assert pool.replaced_workers == 3  # two deaths for b"die", one for the other
