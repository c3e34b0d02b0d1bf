"""Inputs are never harmed and outputs never lost (issue 12, round two), through the real CLI on real files:
outputs never replace inputs or sidecars, curator's own outputs are never read as inputs, a lock covers
subfolders and its take-over is atomic, output paths do not depend on the set of shards, symlinked folders
are followed, FIFOs are never opened, brace ranges embed what exists, environment errors are one line, and
file names that are not UTF-8 are embedded."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import img2dataset_tar, jpeg, stage_spec, write_parquet

FAST = ["--stage", stage_spec("Shapes"), "--num-workers", "0"]


def embed(cli, *args):
    return cli("embed", *args, *FAST)


def assert_one_line_usage_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[0], lines[0]


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> its sha256."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def finals(out: Path) -> dict[str, int]:
    """Output parquet files under ``out`` (not hidden, not ``_``) -> their rows."""
    return {p.relative_to(out).as_posix(): pq.read_metadata(p).num_rows for p in sorted(out.rglob("*.parquet"))
            if not p.name.startswith((".", "_"))}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name]


def tiny_tar(path: Path, count: int = 2) -> Path:
    return img2dataset_tar(path, count, size=(16, 12))


def curator_process(*args, wrapper: str = "") -> subprocess.Popen:
    """``curator`` in a process of its own; ``wrapper`` is Python run first (to widen a race window)."""
    code = f"{wrapper}\nfrom curator_cli.cli import main\nmain()"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# --------------------------------------------------------------------------- 1. outputs never replace inputs


def test_no_output_replaces_an_input_or_a_sidecar_whatever_the_output_folder(cli, tmp_path):
    data = tmp_path / "data"
    write_parquet(data / "parquet" / "part.parquet", [{"jpg": jpeg(1, (16, 12))}])
    tiny_tar(data / "i2d" / "00000.tar")
    write_parquet(data / "i2d" / "00000.parquet", [{"key": "000000009", "status": "failed_to_download"}])
    (data / "i2d" / "00000_stats.json").write_text("{}")
    tiny_tar(data / "i2d" / "sub" / "00001.tar")
    tiny_tar(data / "other" / "00000.tar")
    write_parquet(data / "notes" / "part.parquet", [{"jpg": jpeg(3, (16, 12))}])  # a dataset of someone's
    before = tree_hashes(data)

    refused = {
        "output = input folder, file named": [data / "parquet" / "part.parquet", "-o", data / "parquet"],
        "output = input folder, glob": [str(data / "parquet" / "*.parquet"), "-o", data / "parquet"],
        "output = input folder, directory": [data / "parquet", "-o", data / "parquet"],
        "sidecar overwritten": [data / "i2d" / "00000.tar", "-o", data / "i2d"],
        "a sidecar made beside a tar": [data / "i2d" / "sub" / "00001.tar", "-o", data / "i2d" / "sub"],
        "output containing the input": [data / "other", "-o", data / "i2d"],
        "a file curator did not write": [data / "parquet", "-o", data / "notes"],
    }
    for what, args in refused.items():
        result = embed(cli, *args)
        assert result.exit_code == 2, (what, result.output)
        assert_one_line_usage_error(result)
        assert tree_hashes(data) == before, what

    # allowed: the output inside the input tree, and containing the input where nothing lands on an input
    assert embed(cli, data, "-o", data / "emb").exit_code == 0
    assert finals(data / "emb") == {"i2d/00000.parquet": 3, "i2d/sub/00001.parquet": 2, "notes/part.parquet": 1,
                                    "other/00000.parquet": 2, "parquet/part.parquet": 1}
    assert embed(cli, data / "i2d" / "sub", "-o", data / "i2d").exit_code == 0
    assert (data / "i2d" / "00001.parquet").is_file()
    changed = {k for k in tree_hashes(data) if k in before and tree_hashes(data)[k] != before[k]}
    assert changed == set() and all(k in tree_hashes(data) for k in before)


# --------------------------------------------------------------------------- 2. outputs are never inputs


def test_an_output_folder_left_inside_the_input_tree_is_skipped_and_said_so(cli, tmp_path):
    root = tmp_path / "in"
    tiny_tar(root / "00000.tar")
    write_parquet(root / "p" / "part.parquet", [{"jpg": jpeg(2, (16, 12))}])
    assert embed(cli, root, "-o", root / "emb1").exit_code == 0
    log = tmp_path / "run.log"
    second = embed(cli, root, "-o", root / "emb2", "--log-file", log, "--summary-json", tmp_path / "s.json")
    assert second.exit_code == 0, second.output
    assert finals(root / "emb2") == {"00000.parquet": 2, "p/part.parquet": 1}
    assert json.loads((tmp_path / "s.json").read_text())["shards_total"] == 2
    assert "curator outputs" in log.read_text() and "emb1" in log.read_text()
    # outputs an earlier run wrote beside inputs (output folder containing the input) are skipped one by one
    assert embed(cli, root / "p", "-o", root).exit_code == 0  # writes in/part.parquet beside in/00000.tar
    third = embed(cli, root, "-o", tmp_path / "out3", "--summary-json", tmp_path / "s3.json")
    assert third.exit_code == 0, third.output
    assert finals(tmp_path / "out3") == {"00000.parquet": 2, "p/part.parquet": 1}


# --------------------------------------------------------------------------- 3. a lock covers subfolders


def test_a_lock_covers_its_subfolders_both_ways(cli, tmp_path):
    tiny_tar(tmp_path / "in" / "00000.tar", 6)
    slow = ["--stage", stage_spec("ShapesOrFail"), "--stage-arg", "delay=0.4", "--batch-size", "1",
            "--num-workers", "0"]
    assert embed(cli, tmp_path / "in", "-o", tmp_path / "warm-up").exit_code == 0  # imports done: checks are quick
    inner = curator_process("embed", tmp_path / "in", "-o", tmp_path / "out" / "x" / "a", *slow)
    outer = curator_process("embed", tmp_path / "in", "-o", tmp_path / "out2" / "x", *slow)
    try:
        wait_for(lambda: (tmp_path / "out" / "x" / "a" / "_curator.lock").exists())
        above = embed(cli, tmp_path / "in", "-o", tmp_path / "out" / "x")  # would clean out/x/a's temporaries
        assert inner.poll() is None, "the run on out/x/a ended before the check"
        assert_one_line_usage_error(above, "out/x/a", f"pid {inner.pid}")
        from curator_cli.io.commit import clean_stale_temporaries  # clean-up never enters a live run's subfolder

        theirs = tmp_path / "out" / "x" / "a" / ".00009.parquet.tmp-1"
        theirs.write_bytes(b"in progress")
        clean_stale_temporaries(tmp_path / "out")
        assert theirs.exists()
        theirs.unlink()

        wait_for(lambda: (tmp_path / "out2" / "x" / "_curator.lock").exists())
        below = embed(cli, tmp_path / "in", "-o", tmp_path / "out2" / "x" / "a")
        assert outer.poll() is None, "the run on out2/x ended before the check"
        assert_one_line_usage_error(below, "out2/x", f"pid {outer.pid}")
        assert not (tmp_path / "out2" / "x" / "a").exists()  # nothing made inside the other run's folder
    finally:
        codes = [p.wait(timeout=60) for p in (inner, outer)]
    assert codes == [0, 0], [p.stderr.read() for p in (inner, outer)]
    assert finals(tmp_path / "out" / "x" / "a") == {"00000.parquet": 6} and finals(tmp_path / "out2") == {
        "x/00000.parquet": 6}
    assert not (tmp_path / "out" / "x" / "00000.parquet").exists()


# --------------------------------------------------------------------------- 4. take-over is atomic


def test_two_runs_finding_the_same_dead_lock_cannot_both_take_it(tmp_path):
    tiny_tar(tmp_path / "in" / "00000.tar", 2)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "_curator.lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    # each run pauses 1 s while it checks the dead owner: the window in which the other one looks too
    slow_check = ("import time, curator_cli.io.lock as lock\n_alive = lock._alive\n"
                  "lock._alive = lambda pid: (time.sleep(1.0), _alive(pid))[1]")
    args = ["embed", tmp_path / "in", "-o", out, "--stage", stage_spec("ShapesOrFail"), "--stage-arg", "delay=0.5",
            "--num-workers", "0"]
    runs = [curator_process(*args, wrapper=slow_check) for _ in range(2)]
    codes = sorted(p.wait(timeout=60) for p in runs)
    errors = [p.stderr.read() for p in runs]
    assert codes == [0, 2], errors
    assert any("is in use by curator" in e for e in errors)
    assert not (out / "_curator.lock").exists() and finals(out) == {"00000.parquet": 2}


# --------------------------------------------------------------------------- 5. output paths


def test_output_paths_do_not_move_when_shards_are_added(cli, tmp_path):
    tiny_tar(tmp_path / "in" / "a" / "00000.tar", 3)
    tiny_tar(tmp_path / "in" / "a" / "00001.tar", 3)
    out, summary = tmp_path / "out", tmp_path / "s.json"
    assert embed(cli, tmp_path / "in", "-o", out).exit_code == 0
    first = finals(out)
    tiny_tar(tmp_path / "in" / "b" / "00002.tar", 3)  # a new subfolder of shards
    assert embed(cli, tmp_path / "in", "-o", out, "--summary-json", summary).exit_code == 0
    done = json.loads(summary.read_text())
    assert (done["shards_skipped"], done["shards_written"]) == (2, 1)  # nothing recomputed
    assert sum(finals(out).values()) == 9 and first.items() <= finals(out).items()  # 9 rows for 9 samples
    assert finals(out) == {"a/00000.parquet": 3, "a/00001.parquet": 3, "b/00002.parquet": 3}  # relative to in/

    # a glob and a brace range name outputs relative to their folder before the first pattern
    assert embed(cli, str(tmp_path / "in" / "*" / "*.tar"), "-o", tmp_path / "glob").exit_code == 0
    assert finals(tmp_path / "glob") == finals(out)
    assert embed(cli, str(tmp_path / "in" / "{a,b}"), "-o", tmp_path / "brace").exit_code == 0
    assert finals(tmp_path / "brace") == finals(out)
    # a file named on its own: its name; two such files of the same name collide, one line
    assert embed(cli, tmp_path / "in" / "a" / "00001.tar", "-o", tmp_path / "file").exit_code == 0
    assert finals(tmp_path / "file") == {"00001.parquet": 3}
    tiny_tar(tmp_path / "in" / "c" / "00001.tar", 1)
    both = embed(cli, tmp_path / "in" / "a" / "00001.tar", tmp_path / "in" / "c" / "00001.tar", "-o", tmp_path / "o2")
    assert_one_line_usage_error(both, "would both be written")


# --------------------------------------------------------------------------- 6. symlinked folders


def test_symlinked_folders_are_followed_once_and_loops_end(cli, tmp_path):
    tiny_tar(tmp_path / "in" / "real" / "00000.tar")
    tiny_tar(tmp_path / "elsewhere" / "00001.tar")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "in" / "alias").symlink_to(tmp_path / "in" / "real", target_is_directory=True)  # walked anyway
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    result = embed(cli, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert finals(tmp_path / "out") == {"linked/00001.parquet": 2, "real/00000.parquet": 2}
    assert (tmp_path / "out" / "_SUCCESS").exists()


# --------------------------------------------------------------------------- 7. FIFOs


def run_unblocked(call, fifos: list[Path], timeout: float = 20.0):
    """``call()`` in a thread; if it is still running after ``timeout`` (blocked opening a FIFO), the FIFOs
    are opened for writing and closed, so that it returns, and the test fails."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", call()), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(10)
        pytest.fail(f"blocked on a FIFO for {timeout} s")
    return box["result"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_named_like_shards_are_never_opened(cli, tmp_path):
    tiny_tar(tmp_path / "in" / "00000.tar")
    fifo = tmp_path / "in" / "x.tar"
    os.mkfifo(fifo)
    log = tmp_path / "run.log"
    result = run_unblocked(lambda: embed(cli, tmp_path / "in", "-o", tmp_path / "out", "--log-file", log), [fifo])
    assert result.exit_code == 0, result.output
    assert finals(tmp_path / "out") == {"00000.parquet": 2} and "FIFO" in log.read_text()
    shown = run_unblocked(lambda: cli("inspect", tmp_path / "in"), [fifo])
    assert shown.exit_code == 0 and "00000.tar" in shown.output and "x.tar" not in shown.output.split("skipped")[0]
    named = run_unblocked(lambda: embed(cli, fifo, "-o", tmp_path / "out2"), [fifo])
    assert_one_line_usage_error(named, "not a regular file")
    assert_one_line_usage_error(run_unblocked(lambda: cli("inspect", fifo), [fifo]), "not a regular file")


# --------------------------------------------------------------------------- 8. brace ranges with gaps


def test_a_brace_range_embeds_what_exists_and_counts_what_is_missing(cli, tmp_path):
    for i in (0, 1, 3):
        tiny_tar(tmp_path / "shards" / f"{i:05d}.tar")
    summary = tmp_path / "s.json"
    result = cli("embed", str(tmp_path / "shards" / "{00000..00009}.tar"), "-o", tmp_path / "out",
                 "--summary-json", summary, *FAST)
    assert result.exit_code == 0, result.output
    done = json.loads(summary.read_text())
    assert (done["shards_written"], done["shards_missing"]) == (3, 7)
    assert "7 missing" in result.output
    assert finals(tmp_path / "out") == {"00000.parquet": 2, "00001.parquet": 2, "00003.parquet": 2}
    assert not (tmp_path / "out" / "_SUCCESS").exists()  # not every shard it names is done
    for i in range(10):
        if not (tmp_path / "shards" / f"{i:05d}.tar").exists():
            tiny_tar(tmp_path / "shards" / f"{i:05d}.tar")
    again = embed(cli, str(tmp_path / "shards" / "{00000..00009}.tar"), "-o", tmp_path / "out",
                  "--summary-json", summary)
    assert again.exit_code == 0 and json.loads(summary.read_text())["shards_missing"] == 0
    assert (tmp_path / "out" / "_SUCCESS").exists()

    assert_one_line_usage_error(embed(cli, str(tmp_path / "shards" / "{00010..00019}.tar"), "-o", tmp_path / "o2"))
    assert_one_line_usage_error(embed(cli, tmp_path / "shards" / "00042.tar", "-o", tmp_path / "o3"), "does not exist")


# --------------------------------------------------------------------------- 9. one line, no traceback, no temporary


def unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder no file can be created in: a read-only one, or (as root) one of the kernel's."""
    candidate = tmp_path / "read-only"
    candidate.mkdir()
    candidate.chmod(0o555)
    for folder in (candidate, Path("/sys/kernel"), Path("/proc/1")):
        try:
            (folder / ".probe").touch()
        except OSError:
            return folder
        (folder / ".probe").unlink()
    return None


def fail_fsync_of(monkeypatch, name_part: str) -> None:
    """``os.fsync`` fails with ENOSPC (the disk is full) for files whose name holds ``name_part``."""
    real = os.fsync

    def fsync(fd):
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_environment_errors_are_one_line_and_leave_no_temporary(cli, tmp_path, monkeypatch):
    tiny_tar(tmp_path / "in" / "00000.tar")
    tiny_tar(tmp_path / "in" / "00001.tar")
    (tmp_path / "afile").write_text("a file, not a folder")
    assert_one_line_usage_error(embed(cli, tmp_path / "in", "-o", tmp_path / "afile" / "sub"), "Not a directory")
    assert_one_line_usage_error(embed(cli, tmp_path / "in", "-o", tmp_path / "o", "--log-file",
                                      tmp_path / "afile" / "x.log"), "log file")
    readonly = unwritable_folder(tmp_path)
    if readonly is not None:
        assert_one_line_usage_error(embed(cli, tmp_path / "in", "-o", readonly), "cannot write")

    if not os.path.isdir("/proc/self/fd"):
        return
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        fail_fsync_of(patch, "._SUCCESS.tmp-")  # every shard written, then the disk is full
        full = embed(cli, tmp_path / "in", "-o", out)
    assert_one_line_usage_error(full, "No space left")
    assert finals(out) == {"00000.parquet": 2, "00001.parquet": 2}
    assert not (out / "_SUCCESS").exists() and temporaries(out) == [] and not (out / "_curator.lock").exists()
    assert embed(cli, tmp_path / "in", "-o", out).exit_code == 0 and (out / "_SUCCESS").exists()

    out = tmp_path / "out-shard"
    with monkeypatch.context() as patch:
        fail_fsync_of(patch, ".00001.parquet.tmp-")  # one shard's commit fails
        failed = embed(cli, tmp_path / "in", "-o", out)
    assert failed.exit_code == 1 and "Traceback" not in failed.output, failed.output
    assert "00001.tar" in failed.output and "No space left" in failed.output
    assert finals(out) == {"00000.parquet": 2} and temporaries(out) == []
    assert embed(cli, tmp_path / "in", "-o", out).exit_code == 0
    assert finals(out) == {"00000.parquet": 2, "00001.parquet": 2}


# --------------------------------------------------------------------------- 10. file names that are not UTF-8


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_shard_whose_name_is_not_utf8_is_embedded_and_resumes(cli, tmp_path):
    root = tmp_path / "in"
    tiny_tar(root / "ok.tar")
    tiny_tar(Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9.tar")))  # a Latin-1 name
    summary, log = tmp_path / "s.json", tmp_path / "run.log"
    first = embed(cli, root, "-o", tmp_path / "out", "--summary-json", summary, "--log-file", log)
    assert first.exit_code == 0, first.output
    assert finals(tmp_path / "out") == {"caf%E9.parquet": 2, "ok.parquet": 2}
    table = pq.read_table(tmp_path / "out" / "caf%E9.parquet")
    assert set(table.column("shard").to_pylist()) == {f"{root}/caf%E9.tar"}
    assert temporaries(tmp_path / "out") == [] and "Logging error" not in first.output
    again = embed(cli, root, "-o", tmp_path / "out", "--summary-json", summary)
    assert again.exit_code == 0 and json.loads(summary.read_text())["shards_skipped"] == 2
