"""Nothing lost: resume, crash safety, the output lock, bad images and shards, stage failures, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import encode, img2dataset_tar, jpeg, stage_spec, synthetic_photo, write_parquet, write_tar


def curator(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "curator_cli.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def outputs(out: Path) -> dict[str, list]:
    """Final parquet files under ``out`` -> their rows (image_id, embedding, error)."""
    result = {}
    for path in sorted(out.rglob("*.parquet")):
        if path.name.startswith((".", "_")):
            continue
        table = pq.read_table(path)
        result[path.relative_to(out).as_posix()] = list(zip(*(table.column(c).to_pylist()
                                                               for c in ("image_id", "embedding", "error"))))
    return result


def make_shards(root: Path, count: int = 4, per_shard: int = 6) -> Path:
    for s in range(count):
        img2dataset_tar(root / f"{s:05d}.tar", per_shard, first_seed=10 * s, size=(40, 30))
    return root


# --------------------------------------------------------------------------- 1. resume


def test_rerun_skips_done_shards_and_redoes_the_rest(cli, tmp_path):
    inputs = make_shards(tmp_path / "in", 3, 3)
    out = tmp_path / "out"
    args = ["embed", inputs, "-o", out, "--stage", stage_spec("ShapesOrFail"), "--summary-json", tmp_path / "s.json"]
    assert cli(*args).exit_code == 0
    assert (out / "_SUCCESS").exists() and not list(out.glob("_*.manifest.json"))
    manifest = json.loads(pq.read_metadata(out / "00001.parquet").metadata[b"curator.manifest"])
    assert manifest["rows"] == 3 and manifest["config"]["stages"][0]["args"]["delay"] == 0.0
    first = outputs(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}

    assert cli(*args).exit_code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["shards_skipped"], summary["shards_written"]) == (3, 0)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == mtimes

    (out / "00001.parquet").unlink()
    os.utime(inputs / "00002.tar", ns=(1, 1))  # an input that changed since
    assert cli(*args).exit_code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["shards_skipped"], summary["shards_written"]) == (1, 2)
    assert outputs(out) == first

    changed = cli(*args, "--stage-arg", "fail_on=zzz")
    assert changed.exit_code == 2
    assert "3 shard(s)" in changed.output and "--overwrite" in changed.output and "00000.tar" in changed.output
    assert cli(*args, "--stage-arg", "fail_on=zzz", "--overwrite").exit_code == 0


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_output(tmp_path):
    inputs = make_shards(tmp_path / "in", 4, 6)
    common = ["--stage", stage_spec("ShapesOrFail"), "--stage-arg", "delay=0.15", "--batch-size", "2", "--num-workers", "1"]
    reference = curator("embed", inputs, "-o", tmp_path / "ref", *common)
    assert reference.wait(timeout=120) == 0, reference.stderr.read()

    out = tmp_path / "out"
    victim = curator("embed", inputs, "-o", out, *common)
    wait_for(lambda: (out / "00000.parquet").exists())
    time.sleep(0.2)  # mid-way through the next shard
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    for name, rows in outputs(out).items():  # whatever has a final name is whole and readable
        assert len(rows) == 6, name
    assert not (out / "_SUCCESS").exists()

    again = curator("embed", inputs, "-o", out, *common)
    assert again.wait(timeout=120) == 0, again.stderr.read()
    final, expected = outputs(out), outputs(tmp_path / "ref")
    assert final.keys() == expected.keys() and len(final) == 4
    for name in final:
        assert [r[0] for r in final[name]] == [r[0] for r in expected[name]]
        np.testing.assert_allclose([r[1] for r in final[name]], [r[1] for r in expected[name]], rtol=1e-6)
    assert not list(out.rglob(".*tmp-*")) and not (out / "_curator.lock").exists()
    assert (out / "_SUCCESS").exists()


# --------------------------------------------------------------------------- 3 and 7. lock and signals


@pytest.mark.slow
def test_second_run_on_same_output_fails_at_once_and_sigterm_stops_cleanly(tmp_path):
    inputs = make_shards(tmp_path / "in", 24, 6)  # ~30 s of work: still running when SIGTERM comes
    out = tmp_path / "out"
    common = ["--stage", stage_spec("ShapesOrFail"), "--stage-arg", "delay=0.4", "--batch-size", "2"]
    first = curator("embed", inputs, "-o", out, *common)
    wait_for(lambda: (out / "00000.parquet").exists())

    started = time.monotonic()
    second = curator("embed", inputs, "-o", out, *common)
    assert second.wait(timeout=60) == 2
    err = second.stderr.read()
    assert f"is in use by curator (pid {first.pid}" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 30

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143
    assert "finished shards are kept" in first.stderr.read()
    assert not (out / "_curator.lock").exists() and not list(out.rglob(".*tmp-*"))
    assert not (out / "_SUCCESS").exists()
    assert all(len(rows) == 6 for rows in outputs(out).values()) and "00000.parquet" in outputs(out)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_a_stale_lock_is_taken_over(tmp_path):
    inputs = make_shards(tmp_path / "in", 6, 6)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (out / "_curator.lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    run = curator("embed", inputs, "-o", out, "--stage", stage_spec("ShapesOrFail"), "--stage-arg", "delay=0.2",
                  "--batch-size", "2")
    wait_for(lambda: (out / "00000.parquet").exists())
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    assert not (out / "_curator.lock").exists() and not list(out.rglob(".*tmp-*"))


# --------------------------------------------------------------------------- 4. bad images


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return encode(synthetic_photo(7, (60, 30)), "JPEG", exif=exif)


def _sixteen_bit() -> bytes:
    ramp = (np.arange(40 * 20, dtype=np.uint16).reshape(20, 40) * 80).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def _transparent() -> bytes:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent black: white once composited
    return encode(image, "PNG")


def bad_image_members() -> dict[str, tuple[bytes, str]]:
    """member key -> (bytes, expected: "ok" or the start of the error)"""
    good = jpeg(1, (40, 30))
    return {
        "good": (good, "ok"),
        "truncated": (good[: len(good) // 2], "truncated image"),
        "empty": (b"", "empty image data"),
        "text": (b"this is not an image at all", "not an image"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
        "cmyk": (encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"), "ok"),
        "grey": (encode(Image.new("L", (30, 20), 90), "JPEG"), "ok"),
        "palette": (encode(synthetic_photo(2, (30, 20)).convert("P"), "PNG"), "ok"),
        "alpha": (_transparent(), "ok"),
        "deep": (_sixteen_bit(), "ok"),
        "rotated": (_exif_rotated(), "ok"),
        "bomb": (encode(Image.new("L", (3000, 3000), 1), "PNG"), "too many pixels"),
    }


def test_every_bad_image_is_kept_with_a_reason(cli, tmp_path):
    members = bad_image_members()
    shard = write_tar(tmp_path / "salted.tar", [(f"{key}.png", data) for key, (data, _) in members.items()])
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", stage_spec("ShapesOrFail"), "--max-pixels", "4000000",
                 "--image-ext", "png")
    assert result.exit_code == 0, result.output
    rows = {r[0]: r for r in outputs(tmp_path / "out")["salted.parquet"]}
    assert list(rows) == list(members)
    for key, (_, expected) in members.items():
        _, embedding, error = rows[key]
        if expected == "ok":
            assert error is None and embedding is not None, (key, error)
        else:
            assert embedding == [0.0, 0.0, 0.0] and error.startswith(expected), (key, error)
    assert rows["rotated"][1][:2] == [60.0, 30.0]  # EXIF orientation applied: 60 high, 30 wide
    assert rows["alpha"][1][2] == pytest.approx(255.0)  # transparency composited on white
    assert 0 < rows["deep"][1][2] < 255


# --------------------------------------------------------------------------- 5. bad shards


def test_bad_shards_fail_alone_with_a_reason(cli, tmp_path):
    root = tmp_path / "in"
    img2dataset_tar(root / "good.tar", 3)
    whole = img2dataset_tar(tmp_path / "whole.tar", 6).read_bytes()
    (root / "truncated.tar").write_bytes(whole[: len(whole) // 2 + 100])
    (root / "garbage.tar").write_bytes(os.urandom(3000))
    (root / "notparquet.parquet").write_bytes(b"PAR1 but not really")
    write_parquet(root / "noimages.parquet", [{"key": "a", "caption": "no image column here"}])
    write_tar(root / "empty.tar", [])
    (root / "gone.tar").symlink_to(root / "missing-target.tar")
    result = cli("embed", root, "-o", tmp_path / "out", "--stage", stage_spec("ShapesOrFail"),
                 "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    reasons = {Path(f["shard"]).name: f["reason"] for f in summary["shards_failed"]}
    assert reasons.keys() == {"truncated.tar", "garbage.tar", "notparquet.parquet", "noimages.parquet",
                              "empty.tar", "gone.tar"}
    assert reasons["truncated.tar"].startswith("corrupt or truncated tar")
    assert reasons["notparquet.parquet"].startswith("not a readable parquet file")
    assert reasons["noimages.parquet"].startswith("no image column")
    assert reasons["empty.tar"] == "empty shard: no samples"
    assert summary["shards_written"] == 1 and outputs(tmp_path / "out").keys() == {"good.parquet"}
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert "Traceback" not in result.output
    failed = cli("embed", root, "-o", tmp_path / "out2", "--stage", stage_spec("ShapesOrFail"), "--on-error", "fail")
    assert failed.exit_code == 1 and failed.output.count("failed:") == 1


# --------------------------------------------------------------------------- 6. stage failures


def test_setup_failure_names_the_stage(cli, tmp_path):
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out",
                 "--stage", stage_spec("BrokenSetup"))
    assert result.exit_code == 1
    assert "setup of stage 'broken_setup' failed: RuntimeError: weights file is corrupt" in result.output
    assert "Traceback" not in result.output


def test_process_failure_fails_its_shard_with_traceback_in_log(cli, tmp_path):
    img2dataset_tar(tmp_path / "in" / "a.tar", 3)
    write_tar(tmp_path / "in" / "b.tar", [("ok.jpg", jpeg(1)), ("poison.jpg", jpeg(2))])
    log = tmp_path / "run.log"
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", "--stage", stage_spec("ShapesOrFail"),
                 "--stage-arg", "fail_on=poison", "--log-file", log)
    assert result.exit_code == 1
    assert "shard" in result.output and "stage 'shapes' failed: ValueError: cannot handle poison" in result.output
    assert "Traceback" not in result.output
    assert "Traceback" in log.read_text() and "cannot handle poison" in log.read_text()
    assert outputs(tmp_path / "out").keys() == {"a.parquet"}


def test_cuda_out_of_memory_halves_the_batch(cli, tmp_path):
    img2dataset_tar(tmp_path / "s.tar", 9)
    result = cli("embed", tmp_path / "s.tar", "-o", tmp_path / "out", "--stage", stage_spec("SmallGpu"),
                 "--batch-size", "8", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    rows = outputs(tmp_path / "out")["s.parquet"]
    assert [r[0] for r in rows] == [f"{i:09d}" for i in range(9)] and all(r[2] is None for r in rows)
    assert json.loads((tmp_path / "s.json").read_text())["stage_batch_size"] == 2


def test_out_of_memory_at_one_image_fails_the_shard(cli, tmp_path):
    img2dataset_tar(tmp_path / "s.tar", 2)
    result = cli("embed", tmp_path / "s.tar", "-o", tmp_path / "out", "--stage", stage_spec("SmallGpu"),
                 "--stage-arg", "limit=0")
    assert result.exit_code == 1 and "out of memory" in result.output.lower()


# --------------------------------------------------------------------------- 8. nothing escapes


def test_member_names_are_data_and_specs_run_nothing_else(cli, tmp_path):
    shard = write_tar(tmp_path / "in" / "s.tar", [("../../escape.jpg", jpeg(1)), ("/abs/evil.jpg", jpeg(2))])
    before = set(tmp_path.rglob("*"))
    result = cli("embed", shard, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = outputs(tmp_path / "out")["s.parquet"]
    assert [r[0] for r in rows] == ["../../escape", "/abs/evil"]
    created = set(tmp_path.rglob("*")) - before
    assert created and all(p == tmp_path / "out" or tmp_path / "out" in p.parents for p in created)
    result = cli("embed", shard, "-o", tmp_path / "out2", "--stage", "os:system")
    assert result.exit_code == 2 and "not a ProcessingStage subclass" in result.output
