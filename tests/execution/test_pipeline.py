"""The streaming pipeline: order, bounded memory, decode size, tensor fast path, precision, the summary.

The decoders themselves (pool, timeouts, priority, the GPU decoder) are in ``tests/decode/test_decoders.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import curator_cli.io.readers as readers
from curator_cli.decode.pillow import DecodeOptions

from conftest import encode, img2dataset_tar, jpeg, read_output, stage_spec, synthetic_photo, write_tar


@pytest.fixture
def read(monkeypatch) -> list[int]:
    """One entry per sample the feeder has taken from a shard so far: its read-ahead, observed. (The
    tar reader's process reads at most one message, ``CHUNK`` small samples, beyond that: image
    bytes stay in the shard.)"""
    samples: list[int] = []
    original = readers.OpenShard.__iter__

    def counting_iter(self):
        for sample in original(self):
            samples.append(1)
            yield sample

    monkeypatch.setattr(readers.OpenShard, "__iter__", counting_iter)
    return samples


def test_rows_keep_input_order_across_workers_and_batches(cli, tmp_path):
    for s in range(3):
        img2dataset_tar(tmp_path / "in" / f"{s:05d}.tar", 23, first_seed=100 * s, size=(48 + s, 40))
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", "--stage", stage_spec("Shapes"),
                 "--batch-size", "5", "--num-workers", "3")
    assert result.exit_code == 0, result.output
    for s in range(3):
        table = read_output(tmp_path / "out" / f"{s:05d}.parquet")
        assert table.column("image_id").to_pylist() == [f"{i:09d}" for i in range(23)]
        embeddings = np.array(table.column("embedding").to_pylist())
        assert (embeddings[:, 1] == 48 + s).all()  # each row got its own image
        assert embeddings[:, 2].max() <= 5


def test_large_images_through_reused_shared_memory_buffers_stay_distinct(cli, tmp_path):
    """Pixels of large images travel through per-worker buffers reused from job to job: each row
    must still get its own image (widths differ per image, so a mix-up would show)."""
    members = [(f"{i:03d}.jpg", jpeg(i, (400 + 8 * i, 300))) for i in range(30)]
    shard = write_tar(tmp_path / "big.tar", members)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", stage_spec("Shapes"), "--batch-size", "16",
                 "--num-workers", "2")
    assert result.exit_code == 0, result.output
    embeddings = read_output(tmp_path / "out" / "big.parquet").column("embedding").to_pylist()
    assert [e[1] for e in embeddings] == [400.0 + 8 * i for i in range(30)]
    assert all(e[0] == 300.0 for e in embeddings)


def test_a_slow_stage_does_not_let_reading_run_ahead(cli, tmp_path, monkeypatch, read):
    """Memory stays bounded: reading never gets more than a few batches ahead of the stages."""
    img2dataset_tar(tmp_path / "in" / "00000.tar", 60, size=(32, 32))
    ahead = []
    from curator_cli.execution import stage_runner as pipeline

    original_run = pipeline.run_stages

    def observing_run_stages(stages, decoded, *args, **kwargs):
        ahead.append(len(read))
        return original_run(stages, decoded, *args, **kwargs)

    monkeypatch.setattr("curator_cli.execution.processor.run_stages", observing_run_stages)
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", "--stage", stage_spec("Shapes"),
                 "--stage-arg", "delay=0.05", "--batch-size", "4", "--num-workers", "1")
    assert result.exit_code == 0, result.output
    processed = [4 * i for i in range(len(ahead))]
    lead = max(r - p for r, p in zip(ahead, processed))
    assert 0 < lead <= 4 * 5, f"reading ran {lead} samples ahead of the stages"


def test_read_ahead_counts_batches_not_shards(tmp_path, read):
    """Shards smaller than a batch: the feeder still reads ``prefetch`` whole batches ahead of the
    one the stages hold (shard boundaries do not use up the read-ahead), and no more."""
    from curator_cli.execution.feeder import BatchReady, Feeder
    from curator_cli.decode.jobs import InlineDecoder
    from curator_cli.io.readers import ReadOptions
    from curator_cli.io.shards import find_shards

    for s in range(6):
        img2dataset_tar(tmp_path / f"{s:05d}.tar", 3, first_seed=10 * s, size=(24, 24))
    feeder = Feeder(find_shards([str(tmp_path)]), ReadOptions(), InlineDecoder(DecodeOptions()), batch_size=8,
                    chunk_size=2, prefetch=2)
    events = iter(feeder)
    try:
        assert isinstance(next(e for e in events if isinstance(e, BatchReady)), BatchReady)  # held by "the stages"
        deadline = time.monotonic() + 10
        while len(read) < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # room to overrun the bound, if it were not kept
        assert len(read) == 9, f"{len(read)} samples read: expected 3 one-batch shards (held + 2 ahead)"
    finally:
        feeder.stop()


def test_stage_setup_overlaps_the_first_reads_and_decodes(tmp_path, read):
    """A slow model load is not followed by a wait for the first batch: reading and decoding start
    before the stages' setup and go on while it runs."""
    from curator_cli.execution.local import run_local
    from curator_cli.execution.plan import plan_run
    from curator_cli.options import EmbedOptions
    from curator_cli.io.shards import find_shards
    from curator_cli.stages.base import ProcessingStage
    from curator_cli.tasks import ImageBatch

    img2dataset_tar(tmp_path / "in" / "00000.tar", 6, size=(32, 32))

    class SlowSetup(ProcessingStage[ImageBatch, ImageBatch]):
        name = "slow_setup"

        def setup(self, worker_metadata=None):
            deadline = time.monotonic() + 10  # a model load that lasts until the reader has been busy
            while len(read) < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.read_during_setup = len(read)

        def process(self, task):
            for obj in task.data:
                obj.embedding = np.ones(2, np.float32)
            return task

    stage = SlowSetup()
    summary = run_local(plan_run(find_shards([str(tmp_path / "in")]), [stage],
                                 EmbedOptions(output_dir=tmp_path / "out", num_workers=1)))
    assert stage.read_during_setup == 6
    assert summary.images == 6 and summary.seconds_setup > 0


def test_decode_size_declared_overridden_and_full(cli, tmp_path):
    members = [("big.jpg", jpeg(1, (640, 480))), ("png.png", encode(synthetic_photo(2, (400, 300)), "PNG"))]
    shard = write_tar(tmp_path / "s.tar", members)

    def shapes(*extra):
        out = tmp_path / f"out{len(extra)}{extra[-1] if extra else ''}"
        result = cli("embed", shard, "-o", out, *extra)
        assert result.exit_code == 0, result.output
        return [tuple(e[:2]) for e in read_output(out / "s.parquet").column("embedding").to_pylist()]

    sized = shapes("--stage", stage_spec("Sized"))
    assert 64 <= min(sized[0]) < 480 and sized[1] == (300, 400)  # JPEG scaled by DCT, PNG full size
    assert shapes("--stage", stage_spec("Shapes")) == [(480, 640), (300, 400)]  # nothing declared: full size
    assert shapes("--stage", stage_spec("Sized"), "--decode-size", "full") == [(480, 640), (300, 400)]
    assert 240 <= min(shapes("--stage", stage_spec("Shapes"), "--decode-size", "240")[0]) < 480


def test_tensor_fast_path(cli, tmp_path):
    half = Image.new("RGB", (120, 40), (255, 0, 0))
    half.paste((0, 0, 255), (60, 0, 120, 40))  # left red, right blue: the centre square is half and half
    shard = write_tar(tmp_path / "s.tar", [("a.png", encode(half, "PNG")), ("b.jpg", jpeg(3, (50, 70)))])
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", stage_spec("Tensors"))
    assert result.exit_code == 0, result.output
    first = read_output(tmp_path / "out" / "s.parquet").column("embedding").to_pylist()[0]
    assert first == pytest.approx([127.5, 0.0, 127.5], abs=8)


def test_precision_autocast_for_stages_that_opt_in(cli, tmp_path):
    shard = img2dataset_tar(tmp_path / "s.tar", 2, size=(16, 16))
    for precision, enabled in (("bf16", 1.0), ("fp32", 0.0)):
        out = tmp_path / precision
        result = cli("embed", shard, "-o", out, "--stage", stage_spec("Autocast"), "--precision", precision)
        assert result.exit_code == 0, result.output
        table = read_output(out / "s.parquet")
        assert str(table.schema.field("embedding").type.value_type) == "float"  # written as float32
        assert table.column("embedding").to_pylist()[0] == [4.0, 4.0, enabled]


def test_summary_reports_throughput_and_time_split(cli, tmp_path):
    img2dataset_tar(tmp_path / "s.tar", 4)
    result = cli("embed", tmp_path / "s.tar", "-o", tmp_path / "out", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    for key in ("images_per_second", "seconds_setup", "seconds_read", "seconds_decode", "seconds_wait_input",
                "seconds_stages", "seconds_write"):
        assert summary[key] >= 0
    assert summary["seconds_setup"] > 0  # the default stage builds its filters in setup
    assert summary["decode_min_side"] == 64  # the default stage declares 64
    assert "Time: setup" in result.output and "stages" in result.output


def test_summary_reports_main_process_cpu_per_image_and_the_whole_process(tmp_path):
    """What bounds a run on a machine with many cores: the CPU the pipeline's own process spends per
    image, the stages' calls aside; and the whole process's time, start-up included, as cron sees it."""
    img2dataset_tar(tmp_path / "s.tar", 6)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "curator_cli.cli", "embed", str(tmp_path / "s.tar"), "-o",
                           str(tmp_path / "out"), "--stage", stage_spec("BusyCpu"), "--stage-arg", "seconds=0.5",
                           "--summary-json", str(tmp_path / "s.json"), "--num-workers", "1"],
                          capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["main_cpu_us_per_image"] > 0
    # the stage's half second of busy CPU per batch is its own, not counted as curator's
    assert summary["main_cpu_seconds"] < summary["seconds"] - 0.4
    assert summary["seconds"] < summary["process_seconds"] <= wall + 0.5
    assert "us/image" in done.stderr and "Whole process" in done.stderr
