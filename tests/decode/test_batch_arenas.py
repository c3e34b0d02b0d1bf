"""Decoded pixels reach the stages as views of the batch's shared memory: the main process neither
copies nor allocates per image or per batch, and memory is reused only once nothing writes to it."""

from __future__ import annotations

import faulthandler
import mmap
import os

import numpy as np
import pytest
from conftest import encode, jpeg
from PIL import Image

from curator_cli.decode.pillow import decode_image
from curator_cli.decode.pool import DecodePool
from curator_cli.decode.transport import ARENAS, shared_memory_usable
from curator_cli.execution.feeder import BatchReady, Feeder
from curator_cli.stages.staging import HostStaging
from curator_cli.execution.stage_runner import pixel_tensor
from curator_cli.io.readers.base import ReadOptions
from curator_cli.io.shards import scan_inputs
from curator_cli.options import DecodeOptions

pytestmark = pytest.mark.skipif(not shared_memory_usable(), reason="needs 2 GiB free in /dev/shm")


@pytest.fixture(autouse=True)
def watchdog():
    """These tests run the pool in the test process: a hang ends the process (and fails) after 120 s."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


SIDE = 32


def in_shared_memory(image: np.ndarray) -> bool:
    """Whether ``image`` is a view of a mapping (a batch arena), not an array of its own."""
    base = image.base
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)


def _shard(tmp_path, images: list[bytes]):
    from conftest import write_tar

    members = [(f"{i:06d}.jpg", data) for i, data in enumerate(images)]
    path = write_tar(tmp_path / "shard.tar", members)
    return scan_inputs([str(path)], tmp_path / "out").shards[0]


def _batches(shard, options: DecodeOptions, batch_size: int, workers: int = 2):
    """Every batch of ``shard`` decoded (kept, not released), and the pool's arena files seen."""
    with DecodePool(workers, options, start_method="fork") as pool:
        feeder = Feeder([shard], ReadOptions(), pool, batch_size, chunk_size=4, prefetch=2)
        decoded, names = [], set()
        for event in feeder:
            if isinstance(event, BatchReady):
                batch = event.resolve()
                names.add(batch.pixels.arena.name if batch.pixels else None)
                decoded.append(batch)
                yield batch, names
                batch.release()


def test_tensor_path_batches_are_views_of_one_shared_array_reused_across_batches(tmp_path):
    images = [jpeg(i, size=(48 + i % 7, 40)) for i in range(40)]
    shard = _shard(tmp_path, images)
    options = DecodeOptions(min_side=SIDE, crop=True)
    seen = 0
    for batch, names in _batches(shard, options, batch_size=8):
        assert batch.squares is not None and batch.squares.shape == (8, SIDE, SIDE, 3)
        for position, image in enumerate(batch.images):
            assert np.shares_memory(image, batch.squares)
            assert np.array_equal(image, decode_image(images[seen + position], min_side=SIDE, crop=True))
        tensor = pixel_tensor(batch.images, SIDE, "cpu", ready=(batch.images, batch.squares))
        assert tensor.shape == (8, 3, SIDE, SIDE)
        assert np.shares_memory(tensor.permute(0, 2, 3, 1).numpy(), batch.squares)  # the stage's tensor: no copy
        seen += len(batch.images)
    assert seen == 40
    assert len(names) <= ARENAS  # five batches, never more arenas than batches in flight
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"curator-{os.getpid()}-")]  # gone with the pool


def test_for_cuda_each_batch_is_copied_once_into_a_reused_staging_buffer(tmp_path):
    """The CUDA path: each batch's arena is copied into a staging slot (pinned memory on CUDA); the
    slots are allocated once, not per batch."""
    images = [jpeg(i, size=(40 + i % 5, 56)) for i in range(48)]
    shard = _shard(tmp_path, images)
    staging = HostStaging(allocate=lambda shape: __import__("torch").zeros(shape, dtype=__import__("torch").uint8),
                          fence=None)
    seen = 0
    for batch, _ in _batches(shard, DecodeOptions(min_side=SIDE, crop=True), batch_size=8):
        tensor = pixel_tensor(batch.images, SIDE, "cuda", staging, ready=(batch.images, batch.squares))
        rows = tensor.permute(0, 2, 3, 1).numpy()
        assert not np.shares_memory(rows, batch.squares)
        for position, image in enumerate(batch.images):
            assert np.array_equal(rows[position], decode_image(images[seen + position], min_side=SIDE, crop=True))
        staging.done()
        seen += len(batch.images)
    assert seen == 48
    assert staging.allocations == 3  # one per slot, whatever the number of batches


def test_a_failed_image_leaves_the_others_in_place_and_the_batch_is_stacked_instead(tmp_path):
    images = [jpeg(i, size=(64, 48)) for i in range(6)]
    images[2] = b"not an image"
    shard = _shard(tmp_path, images)
    for batch, _ in _batches(shard, DecodeOptions(min_side=SIDE, crop=True), batch_size=6):
        assert batch.squares is None  # a hole in the rows: the stage gets the good ones stacked
        assert batch.samples[2].error.startswith("not an image")
        good = [image for image in batch.images if image is not None]
        assert len(good) == 5
        tensor = pixel_tensor(good, SIDE, "cpu")
        assert np.array_equal(tensor[2].permute(1, 2, 0).numpy(), decode_image(images[3], min_side=SIDE, crop=True))


def test_pictures_of_any_size_are_packed_and_a_larger_one_than_reserved_still_arrives(tmp_path):
    small = [jpeg(i, size=(40, 30)) for i in range(7)]
    # 4.7 MB of pixels: more than a job of four reserves at first (1 MB each, full-size decode)
    large = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (1200, 1300, 3), dtype=np.uint8)))
    images = [*small[:3], large, *small[3:]]
    shard = _shard(tmp_path, images)
    options = DecodeOptions()  # full size: each picture keeps its own
    for batch, _ in _batches(shard, options, batch_size=8):
        assert batch.squares is None
        for image, data in zip(batch.images, images):
            assert np.array_equal(image, decode_image(data))
        assert batch.images[3].shape == (1200, 1300, 3)
        assert any(in_shared_memory(image) for image in batch.images)  # in the arena, not pickled


def _die_once(data, options):
    """``picture_one`` for forked workers: the image whose bytes start with the marker path kills
    its worker the first time (the marker file is made), then decodes."""
    from pathlib import Path

    if isinstance(data, bytes) and data.startswith(b"die-once:"):
        marker_path, _, real = data[len(b"die-once:"):].partition(b"|")
        marker = Path(marker_path.decode())
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), 9)
        data = real
    return _picture_one(data, options)


from curator_cli.decode import pool as pool_module  # noqa: E402

_picture_one = pool_module.picture_one


def test_an_image_retried_after_its_worker_died_is_not_read_from_its_empty_row(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "picture_one", _die_once)
    images = [jpeg(i, size=(64, 48)) for i in range(8)]
    killer = b"die-once:" + str(tmp_path / "died").encode() + b"|" + images[5]
    shard = _shard(tmp_path, [*images[:5], killer, *images[6:]])
    for batch, _ in _batches(shard, DecodeOptions(min_side=SIDE, crop=True), batch_size=8):
        for image, data in zip(batch.images, images):
            assert np.array_equal(image, decode_image(data, min_side=SIDE, crop=True))
        if batch.squares is not None:
            assert np.array_equal(batch.squares[5], decode_image(images[5], min_side=SIDE, crop=True))
    assert (tmp_path / "died").exists()  # the worker did die under image 5
