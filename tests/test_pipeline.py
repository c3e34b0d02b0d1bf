"""The streaming pipeline: order, bounded memory, decode size, tensor fast path, precision, decoders."""

from __future__ import annotations

import io
import json
import os
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

import curator_cli.io.readers as readers
from curator_cli.decode.pillow import DecodeOptions
from curator_cli.decode.pool import DecodePool, cpu_wait_seconds

from conftest import encode, img2dataset_tar, jpeg, read_output, synthetic_photo, write_tar

PROBES = textwrap.dedent('''
    from dataclasses import dataclass
    import json, os, time
    import numpy as np
    import torch
    from curator_cli.stages.base import ProcessingStage
    from curator_cli.tasks import ImageBatch

    def record(path, entry):
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\\n")

    @dataclass
    class Shapes(ProcessingStage[ImageBatch, ImageBatch]):
        """Embeds (height, width, batch length); records what it saw."""
        log: str = ""
        delay: float = 0.0
        def process(self, task):
            time.sleep(self.delay)
            for obj in task.data:
                h, w, _ = obj.image_data.shape
                obj.embedding = [float(h), float(w), float(len(task.data))]
            return task

    @dataclass
    class Sized(Shapes):
        decode_size: int = 64

    @dataclass
    class Tensors(ProcessingStage[ImageBatch, ImageBatch]):
        decode_size: int = 32
        def process(self, task):
            raise AssertionError("the tensor fast path must be used")
        def process_tensors(self, pixels, task):
            assert pixels.dtype == torch.uint8 and tuple(pixels.shape[1:]) == (3, 32, 32)
            assert len(pixels) == len(task.data)
            means = pixels.float().mean(dim=(2, 3))
            for obj, mean in zip(task.data, means):
                obj.embedding = mean
            return task

    @dataclass
    class Autocast(ProcessingStage[ImageBatch, ImageBatch]):
        use_autocast = True
        def process(self, task):
            enabled = torch.is_autocast_enabled("cpu")
            x = torch.ones(len(task.data), 4) @ torch.ones(4, 2)
            for obj, row in zip(task.data, x):
                obj.embedding = torch.cat([row, torch.tensor([float(enabled)], dtype=row.dtype)])
            return task
''')


@pytest.fixture
def read(monkeypatch) -> list[int]:
    """One entry per sample the tar reader has yielded so far: the feeder's read-ahead, observed."""
    samples: list[int] = []
    original = readers.read_tar

    def counting_read_tar(path, options):
        for sample in original(path, options):
            samples.append(1)
            yield sample

    monkeypatch.setattr(readers, "read_tar", counting_read_tar)
    return samples


@pytest.fixture
def probes(tmp_path):
    path = tmp_path / "probes.py"
    path.write_text(PROBES)
    return path


def test_rows_keep_input_order_across_workers_and_batches(cli, tmp_path, probes):
    for s in range(3):
        img2dataset_tar(tmp_path / "in" / f"{s:05d}.tar", 23, first_seed=100 * s, size=(48 + s, 40))
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", "--stage", f"{probes}:Shapes",
                 "--batch-size", "5", "--num-workers", "3")
    assert result.exit_code == 0, result.output
    for s in range(3):
        table = read_output(tmp_path / "out" / f"{s:05d}.parquet")
        assert table.column("image_id").to_pylist() == [f"{i:09d}" for i in range(23)]
        embeddings = np.array(table.column("embedding").to_pylist())
        assert (embeddings[:, 1] == 48 + s).all()  # each row got its own image
        assert embeddings[:, 2].max() <= 5


def test_large_images_through_reused_shared_memory_buffers_stay_distinct(cli, tmp_path, probes):
    """Pixels of large images travel through per-worker buffers reused from job to job: each row
    must still get its own image (widths differ per image, so a mix-up would show)."""
    members = [(f"{i:03d}.jpg", jpeg(i, (400 + 8 * i, 300))) for i in range(30)]
    shard = write_tar(tmp_path / "big.tar", members)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", f"{probes}:Shapes", "--batch-size", "16",
                 "--num-workers", "2")
    assert result.exit_code == 0, result.output
    embeddings = read_output(tmp_path / "out" / "big.parquet").column("embedding").to_pylist()
    assert [e[1] for e in embeddings] == [400.0 + 8 * i for i in range(30)]
    assert all(e[0] == 300.0 for e in embeddings)


def test_a_slow_stage_does_not_let_reading_run_ahead(cli, tmp_path, probes, monkeypatch, read):
    """Memory stays bounded: reading never gets more than a few batches ahead of the stages."""
    img2dataset_tar(tmp_path / "in" / "00000.tar", 60, size=(32, 32))
    ahead = []
    from curator_cli.execution import stage_runner as pipeline

    original_run = pipeline.run_stages

    def observing_run_stages(stages, decoded, *args, **kwargs):
        ahead.append(len(read))
        return original_run(stages, decoded, *args, **kwargs)

    monkeypatch.setattr("curator_cli.execution.processor.run_stages", observing_run_stages)
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", "--stage", f"{probes}:Shapes",
                 "--stage-arg", "delay=0.05", "--batch-size", "4", "--num-workers", "1")
    assert result.exit_code == 0, result.output
    processed = [4 * i for i in range(len(ahead))]
    lead = max(r - p for r, p in zip(ahead, processed))
    assert 0 < lead <= 4 * 5, f"reading ran {lead} samples ahead of the stages"


def test_read_ahead_counts_batches_not_shards(tmp_path, read):
    """Shards smaller than a batch: the feeder still reads ``prefetch`` whole batches ahead of the
    one the stages hold (shard boundaries do not use up the read-ahead), and no more."""
    from curator_cli.execution.feeder import BatchReady, Feeder
    from curator_cli.decode.pool import InlineDecoder
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
    from curator_cli.execution.processor import EmbedOptions, run_local
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
    summary = run_local(find_shards([str(tmp_path / "in")]), [stage],
                        EmbedOptions(output_dir=tmp_path / "out", num_workers=1))
    assert stage.read_during_setup == 6
    assert summary.images == 6 and summary.seconds_setup > 0


def test_decode_size_declared_overridden_and_full(cli, tmp_path, probes):
    members = [("big.jpg", jpeg(1, (640, 480))), ("png.png", encode(synthetic_photo(2, (400, 300)), "PNG"))]
    shard = write_tar(tmp_path / "s.tar", members)

    def shapes(*extra):
        out = tmp_path / f"out{len(extra)}{extra[-1] if extra else ''}"
        result = cli("embed", shard, "-o", out, *extra)
        assert result.exit_code == 0, result.output
        return [tuple(e[:2]) for e in read_output(out / "s.parquet").column("embedding").to_pylist()]

    sized = shapes("--stage", f"{probes}:Sized")
    assert 64 <= min(sized[0]) < 480 and sized[1] == (300, 400)  # JPEG scaled by DCT, PNG full size
    assert shapes("--stage", f"{probes}:Shapes") == [(480, 640), (300, 400)]  # nothing declared: full size
    assert shapes("--stage", f"{probes}:Sized", "--decode-size", "full") == [(480, 640), (300, 400)]
    assert 240 <= min(shapes("--stage", f"{probes}:Shapes", "--decode-size", "240")[0]) < 480


def test_tensor_fast_path(cli, tmp_path, probes):
    half = Image.new("RGB", (120, 40), (255, 0, 0))
    half.paste((0, 0, 255), (60, 0, 120, 40))  # left red, right blue: the centre square is half and half
    shard = write_tar(tmp_path / "s.tar", [("a.png", encode(half, "PNG")), ("b.jpg", jpeg(3, (50, 70)))])
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", f"{probes}:Tensors")
    assert result.exit_code == 0, result.output
    first = read_output(tmp_path / "out" / "s.parquet").column("embedding").to_pylist()[0]
    assert first == pytest.approx([127.5, 0.0, 127.5], abs=8)


def test_precision_autocast_for_stages_that_opt_in(cli, tmp_path, probes):
    shard = img2dataset_tar(tmp_path / "s.tar", 2, size=(16, 16))
    for precision, enabled in (("bf16", 1.0), ("fp32", 0.0)):
        out = tmp_path / precision
        result = cli("embed", shard, "-o", out, "--stage", f"{probes}:Autocast", "--precision", precision)
        assert result.exit_code == 0, result.output
        table = read_output(out / "s.parquet")
        assert str(table.schema.field("embedding").type.value_type) == "float"  # written as float32
        assert table.column("embedding").to_pylist()[0] == [4.0, 4.0, enabled]


def test_gpu_decode_without_cuda_is_a_clear_error(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out", "--decode", "gpu")
    assert result.exit_code == 2 and "--decode gpu needs a CUDA device" in result.output


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
def test_gpu_decoder_logic_with_the_cpu_standing_in_for_nvjpeg():
    """What ``--decode gpu`` does around nvJPEG, run here with torchvision's CPU JPEG decoder in its
    place (no GPU in CI): batched JPEGs become exact squares close to the CPU path's, everything
    else (and EXIF-rotated JPEGs) falls back per image to the CPU decoder, and the pixel limit holds."""
    import torch

    from curator_cli.decode.pillow import decode_with
    from curator_cli.decode.gpu import GpuDecoder

    options = DecodeOptions(min_side=64, crop=True, max_pixels=200 * 200)
    decoder = GpuDecoder.__new__(GpuDecoder)  # skips the CUDA check only
    decoder.options, decoder.device = options, torch.device("cpu")
    photo = jpeg(1, (160, 96))
    png = encode(synthetic_photo(2, (80, 120)), "PNG")
    broken = photo[: len(photo) // 3]  # a JPEG header, then nothing decodable
    huge = jpeg(3, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": torchvision's CUDA decoder would ignore it
    rotated = encode(synthetic_photo(5, (120, 80)), exif=exif.tobytes())
    results = decoder.submit([photo, png, broken, None, huge, jpeg(4, (40, 30)), rotated]).wait()
    square = results[0]
    assert isinstance(square, torch.Tensor) and tuple(square.shape) == (64, 64, 3) and square.dtype == torch.uint8
    reference = decode_with(photo, options).astype(np.float32)
    assert np.abs(square.numpy().astype(np.float32) - reference).mean() < 2  # same picture, same framing
    assert isinstance(results[1], np.ndarray) and results[1].shape == (64, 64, 3)  # PNG: CPU fallback
    assert isinstance(results[2], str) and results[2]  # truncated: a reason, from the CPU fallback
    assert results[3] == "no image data"
    assert results[4].startswith("too many pixels")
    assert tuple(results[5].shape) == (64, 64, 3)  # smaller than the square: scaled up to it
    assert isinstance(results[6], np.ndarray)  # EXIF-rotated: decoded (and turned upright) on the CPU
    assert np.array_equal(results[6], decode_with(rotated, options))
    # images of one size are resized together: the same pixels as one at a time
    alone = decoder.submit([photo]).wait()[0]
    together = decoder.submit([jpeg(7, (160, 96)), photo, jpeg(8, (160, 96))]).wait()
    assert torch.equal(together[1], alone) and torch.equal(alone, square)
    decoder.options = DecodeOptions(max_pixels=200 * 200)  # full size: H x W x 3 arrays, as decoded
    assert decoder.submit([photo]).wait()[0].shape == (96, 160, 3)


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


def _slow_png() -> bytes:
    """A legitimately slow image: 8000 x 8000 pixels (under Pillow's limit), tiny when compressed."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000), 128).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_pool_times_out_one_image_and_survives_a_crash():
    slow = _slow_png()
    with DecodePool(2, DecodeOptions(), timeout_s=0.3) as pool:  # the slow image takes about 1 s here
        job = pool.submit([jpeg(1), slow, jpeg(2)])
        results = job.wait()
        assert isinstance(results[0], np.ndarray) and isinstance(results[2], np.ndarray)
        assert results[1] == "decode timed out after 0.3s"
        assert pool.replaced_workers == 1
    with DecodePool(1, DecodeOptions(), timeout_s=60) as pool:
        job = pool.submit([slow, jpeg(3)])
        deadline = time.monotonic() + 10
        while pool._workers[0].progress.value != 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # until the worker is decoding the slow image
        pool._workers[0].process.kill()  # as a segfault in a native decoder would
        results = job.wait()
        assert results[0].startswith("decoder crashed") and isinstance(results[1], np.ndarray)


@pytest.mark.skipif(cpu_wait_seconds(os.getpid()) is None, reason="no /proc/PID/schedstat here")
def test_decode_timeout_clock_stops_while_a_worker_waits_for_a_cpu():
    """Workers beside a CPU model run at low priority and may wait long for a CPU: that wait must
    not count as a hung decode. A niced busy process beside one busy process per core barely
    runs, and the kernel accounts nearly all of its time as waiting."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    hogs = [ctx.Process(target=_spin, args=(0, 3.0), daemon=True) for _ in range(os.cpu_count() or 1)]
    starved = ctx.Process(target=_spin, args=(19, 3.0), daemon=True)
    for p in [*hogs, starved]:
        p.start()
    try:
        time.sleep(0.3)
        wait0, t0 = cpu_wait_seconds(starved.pid), time.monotonic()
        time.sleep(1.0)
        waited, elapsed = cpu_wait_seconds(starved.pid) - wait0, time.monotonic() - t0
        assert waited > 0.5 * elapsed, (waited, elapsed)  # so its timeout clock advanced < half the wall time
    finally:
        for p in [*hogs, starved]:
            p.kill()
            p.join()


def _spin(nice: int, seconds: float) -> None:
    os.nice(nice)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_decode_workers_beside_cpu_stages_run_at_low_priority():
    with DecodePool(1, DecodeOptions(), nice=19) as pool:
        assert isinstance(pool.submit([jpeg(1)]).wait()[0], np.ndarray)  # the worker is up
        assert os.getpriority(os.PRIO_PROCESS, pool._workers[0].process.pid) == min(19, os.nice(0) + 19)
