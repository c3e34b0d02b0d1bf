"""The decoders: the worker pool's per-image timeout, crash recovery and priority, and ``--decode gpu``
(its logic around nvJPEG, run with the CPU standing in, and its error without CUDA)."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from curator_cli.decode.pillow import DecodeOptions
from curator_cli.decode.pool import DecodePool, cpu_wait_seconds

from conftest import encode, img2dataset_tar, jpeg, synthetic_photo


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
    import contextlib

    import torch

    from curator_cli.decode.pillow import decode_with
    from curator_cli.decode.gpu import GpuDecoder

    options = DecodeOptions(min_side=64, crop=True, max_pixels=200 * 200)
    decoder = GpuDecoder(options, "cpu", stream=contextlib.nullcontext)  # torchvision's CPU decoder, no stream
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
    # a job whose every image became a square hands them over as one batch tensor: its rows are the
    # images, and the stages' tensor is that batch (no per-image stacking); otherwise there is none
    from curator_cli.execution.stage_runner import pixel_tensor

    job = decoder.submit([jpeg(7, (160, 96)), photo, jpeg(9, (50, 70))])
    images = job.wait()
    assert job.squares is not None and tuple(job.squares.shape) == (3, 64, 64, 3)
    assert all(torch.equal(job.squares[k], image) for k, image in enumerate(images))
    tensor = pixel_tensor(images, 64, "cpu", ready=(images, job.squares))
    assert tensor.shape == (3, 3, 64, 64) and tensor.data_ptr() == job.squares.data_ptr()
    mixed = decoder.submit([photo, png])
    mixed.wait()
    assert mixed.squares is None  # one image decoded on the CPU
    # decoding runs in the decoder's thread: submit returns before the job is done, jobs finish in order
    jobs = [decoder.submit([jpeg(10 + k, (160, 96))] * 4) for k in range(3)]
    assert [len(job.wait()) for job in jobs] == [4, 4, 4]
    decoder.options = DecodeOptions(max_pixels=200 * 200)  # full size: H x W x 3 arrays, as decoded
    assert decoder.submit([photo]).wait()[0].shape == (96, 160, 3)
    decoder.close()


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
def test_gpu_decoder_reads_byte_ranges_into_one_reused_buffer(tmp_path, monkeypatch):
    """The tar reader hands ``--decode gpu`` byte ranges in the shard: its thread reads them into one
    buffer it reuses from job to job, and nvJPEG gets tensors over that buffer. Every job sees its own
    images' bytes (mixed with bytes from a parquet reader), a range that cannot be read or that the file
    cuts short gets a reason, and a plain ``process()`` stage's pictures (no crop) are the same as
    decoded one by one."""
    import contextlib

    import torch

    from curator_cli.decode.gpu import GpuDecoder
    from curator_cli.io.readers.base import ByteRange

    photos = [jpeg(20 + k, (160, 96) if k % 2 else (120, 90)) for k in range(6)]
    shard = tmp_path / "images.bin"
    shard.write_bytes(b"".join(photos))
    ranges, at = [], 0
    for data in photos:
        ranges.append(ByteRange(str(shard), at, len(data)))
        at += len(data)
    options = DecodeOptions(min_side=64, crop=True, max_pixels=10**6)
    decoder = GpuDecoder(options, "cpu", stream=contextlib.nullcontext)
    from_bytes = decoder.submit(photos).wait()
    first = decoder.submit(ranges[:2]).wait()  # a small job, then a larger one: the buffer grows
    second = decoder.submit([ranges[5], photos[4], *ranges[:4]]).wait()
    third = decoder.submit(ranges[:2]).wait()  # the buffer reused: this job's bytes, not the last one's
    assert all(torch.equal(a, b) for a, b in zip(first, from_bytes[:2]))
    assert all(torch.equal(a, b) for a, b in zip(second, [from_bytes[5], from_bytes[4], *from_bytes[:4]]))
    assert all(torch.equal(a, b) for a, b in zip(third, from_bytes[:2]))
    missing = ByteRange(str(tmp_path / "gone.tar"), 0, 100)
    cut = ByteRange(str(shard), at - len(photos[5]) // 2, len(photos[5]))  # runs past the file's end
    results = decoder.submit([missing, ranges[1], cut]).wait()
    assert results[0].startswith("unreadable: No such file")
    assert torch.equal(results[1], from_bytes[1])
    assert isinstance(results[2], str) and results[2]

    # a job needing a quarter of the buffer or less gives the rest back (past BITSTREAMS_KEEP, here 0)
    monkeypatch.setattr("curator_cli.decode.gpu.BITSTREAMS_KEEP", 0)
    grown = len(decoder._bitstreams._buffer)
    assert torch.equal(decoder.submit([photos[0]]).wait()[0], from_bytes[0])
    assert len(decoder._bitstreams._buffer) == len(photos[0]) < grown / 4
    decoder.close()

    plain = GpuDecoder(DecodeOptions(min_side=64, max_pixels=10**6), "cpu", stream=contextlib.nullcontext)
    together = plain.submit(ranges).wait()
    for data, image in zip(photos, together):
        alone = plain.submit([data]).wait()[0]
        assert isinstance(image, np.ndarray) and min(image.shape[:2]) == 64 and np.array_equal(image, alone)
    plain.close()


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
        pool._workers[0].process.kill()  # as the OOM killer would (issue 12: retried once in a fresh worker)
        results = job.wait()
        assert isinstance(results[0], np.ndarray) and isinstance(results[1], np.ndarray)
        assert pool.replaced_workers == 1


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


def test_gpu_decoders_jpeg_header_agrees_with_pillow():
    """``--decode gpu`` reads a JPEG's size and orientation from its header itself (Pillow only when
    an EXIF or XMP segment may hold an orientation): the same answers as Pillow's, never an error."""
    from curator_cli.decode.gpu import _jpeg_header

    def pillow(data: bytes):
        with Image.open(io.BytesIO(data)) as image:
            return (*image.size, int(image.getexif().get(0x0112, 1)))

    exif = Image.Exif()
    exif[0x0112] = 6
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    picture = synthetic_photo(3, (120, 80))
    for kwargs in ({}, {"progressive": True}, {"exif": exif.tobytes()}, {"xmp": xmp}, {"quality": 30}):
        data = encode(picture, **kwargs)
        assert _jpeg_header(data) == pillow(data), kwargs
        assert _jpeg_header(memoryview(bytearray(data))) == pillow(data), kwargs  # as the decode thread reads it
    assert _jpeg_header(encode(picture, xmp=xmp))[2] == 8  # XMP alone rotates too
    data = encode(picture)
    for cut in (3, 10, 20, len(data) // 50):
        assert _jpeg_header(data[:cut]) is None  # no frame header yet: the CPU decoder decides
    assert _jpeg_header(b"\xff\xd8" + b"\xff" * 5000) is None


def test_decode_jobs_are_as_large_as_keeps_every_worker_busy():
    # every job costs the main process about the same whatever its size, so jobs are about as large
    # as they can be while the two batches decoding ahead still give every worker its JOBS_PER_WORKER jobs
    from math import ceil

    from curator_cli.decode.pool import JOBS_PER_WORKER
    from curator_cli.execution.processor import MAX_CHUNK, decode_chunk

    def busy(batch: int, workers: int, chunk: int) -> bool:
        return 2 * ceil(batch / chunk) >= JOBS_PER_WORKER * workers

    for workers in (1, 2, 4, 8, 16, 64):
        for batch in (1, 7, 32, 256, 1024):
            chunk = decode_chunk(batch, workers)
            assert 1 <= chunk <= MAX_CHUNK
            assert chunk == 1 or busy(batch, workers, chunk), (batch, workers, chunk)
            largest = max([c for c in range(1, min(MAX_CHUNK, batch) + 1) if busy(batch, workers, c)] or [1])
            assert chunk >= largest / 2, (batch, workers, chunk, largest)  # never needlessly small
    assert decode_chunk(256, 16) == 16 and decode_chunk(256, 2) == MAX_CHUNK


def test_read_ahead_grows_with_the_workers_within_a_memory_bound():
    # two batches ahead, until the workers are so many that their jobs would shrink below MIN_CHUNK
    # images (each job costs the main process the same): then more batches, at most READ_AHEAD_BYTES
    from math import ceil

    from curator_cli.decode.pool import JOBS_PER_WORKER
    from curator_cli.execution.processor import (MIN_CHUNK, READ_AHEAD_BATCHES, READ_AHEAD_BYTES, decode_chunk,
                                                 read_ahead)

    squares = DecodeOptions(min_side=224, crop=True)
    assert [read_ahead(256, w, squares) for w in (1, 2, 16)] == [READ_AHEAD_BATCHES] * 3
    for workers in (32, 64, 128):
        ahead = read_ahead(256, workers, squares)
        chunk = decode_chunk(256, workers, ahead)
        assert chunk >= MIN_CHUNK and ahead * ceil(256 / chunk) >= JOBS_PER_WORKER * workers
        assert ahead * 256 * 224 * 224 * 3 <= READ_AHEAD_BYTES
    assert read_ahead(4, 8, squares) == JOBS_PER_WORKER * 8  # batches smaller than a job: one job each
    full_size = DecodeOptions()  # pictures of unknown size: the bound guesses a megabyte each
    assert read_ahead(256, 128, full_size) * 256 * (1 << 20) <= READ_AHEAD_BYTES
    assert read_ahead(1024, 128, DecodeOptions(min_side=512)) == READ_AHEAD_BATCHES  # never fewer than two
