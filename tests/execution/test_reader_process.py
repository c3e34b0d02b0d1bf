"""The tar reader's own process: the feeder gets exactly the samples ``read_tar`` gives, a shard's
error after the samples before it, and a shard given up part-way does not hold up the next one."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from conftest import encode, img2dataset_tar, jpeg, write_tar
from PIL import Image

from curator_cli.execution.reader_process import CHUNK, ReaderProcess
from curator_cli.io.readers.base import ByteRange, ReadOptions, ShardReadError
from curator_cli.io.readers.tar import INLINE_BYTES, read_tar


@pytest.fixture
def reader():
    process = ReaderProcess("fork")
    yield process
    process.close()


def test_samples_are_those_of_the_tar_reader_in_order(tmp_path, reader):
    shard = img2dataset_tar(tmp_path / "00000.tar", CHUNK * 2 + 5, size=(16, 16))
    options = ReadOptions()
    assert list(reader.samples(shard, options)) == list(read_tar(shard, options))


def test_images_read_by_the_decoders_arrive_as_the_same_byte_ranges(tmp_path, reader):
    # members over the tar reader's inline limit travel as byte ranges of the shard (the decode
    # workers read them); small ones as bytes: both kinds, interleaved, as read_tar gives them
    big = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)), quality=95)
    assert len(big) > INLINE_BYTES
    members = []
    for i in range(CHUNK + 3):
        members += [(f"{i:09d}.jpg", big if i % 3 else jpeg(i)), (f"{i:09d}.txt", f"caption {i}".encode()),
                    (f"{i:09d}.json", json.dumps({"key": f"{i:09d}", "width": 160}).encode())]
    shard = write_tar(tmp_path / "nested" / ".." / "00000.tar", members)
    samples = list(reader.samples(shard, ReadOptions()))
    assert samples == list(read_tar(shard, ReadOptions()))
    ranges = [s.data for s in samples if isinstance(s.data, ByteRange)]
    assert len(ranges) == len(samples) - (CHUNK + 5) // 3
    assert all(r.read() == big for r in ranges)


def test_a_corrupt_shard_fails_after_its_good_samples_and_the_reader_goes_on(tmp_path, reader):
    shard = img2dataset_tar(tmp_path / "00000.tar", 6, size=(16, 16))
    with tarfile.open(shard) as archive:
        offset = archive.getmembers()[9].offset  # a later member's header
    data = bytearray(shard.read_bytes())
    data[offset + 3] ^= 0x01  # its name changes: its checksum no longer matches
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    def until_error(samples) -> tuple[list[str], str]:
        got = []
        with pytest.raises(ShardReadError) as failure:
            for sample in samples:
                got.append(sample.image_id)
        return got, str(failure.value)

    in_process = until_error(reader.samples(bad, ReadOptions()))
    assert in_process == until_error(read_tar(bad, ReadOptions()))  # the same samples, the same reason
    assert "checksum" in in_process[1]
    assert len(list(reader.samples(shard, ReadOptions()))) == 6  # the next shard reads whole


def test_a_shard_given_up_part_way_leaves_the_reader_ready_for_the_next(tmp_path, reader):
    big = img2dataset_tar(tmp_path / "00000.tar", CHUNK * 4, size=(16, 16))
    small = img2dataset_tar(tmp_path / "00001.tar", 3, first_seed=99, size=(16, 16))
    samples = reader.samples(big, ReadOptions())
    first = [next(samples) for _ in range(CHUNK + 1)]
    samples.close()  # the feeder stopping mid-shard
    assert first[0].image_id != first[-1].image_id
    assert [s.image_id for s in reader.samples(small, ReadOptions())] == [s.image_id for s in read_tar(small, ReadOptions())]
    assert reader.usable
