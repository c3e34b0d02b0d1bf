"""CPU per image of the ``--decode gpu`` thread with the GPU's work taken out, on any machine.

That thread runs in the main process, beside the feeder, the writer and the stages: its Python
(reading each image's bytes, parsing its JPEG header, handing nvJPEG its tensors, stacking and
copying the results into the batch) is CPU that the main process spends per image however fast the
GPU is. Here the decoder runs on the CPU with ``torchvision.io.decode_jpeg`` standing in as a
function that returns, at once, a ready 8 x 8 picture: the decode size is 8, so the thread takes
the same steps as at 224 (crop, stack, copy into the batch's rows), but the tensor work that the
GPU would do costs next to nothing here. What is measured is the thread itself, fed the bench's tar
shards as byte ranges in batches of 256, as the tar reader hands them.

    .venv/bin/python bench/gpu_thread.py                   # 4,000 images, median of 5 passes
    .venv/bin/python bench/gpu_thread.py --images 8000
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from curator_cli.io.readers.base import ByteRange, ReadOptions  # noqa: E402
from curator_cli.io.readers.tar import read_tar  # noqa: E402
from curator_cli.options import DecodeOptions  # noqa: E402

BATCH = 256


def byte_ranges(shards: Path, images: int) -> list[ByteRange]:
    """The first ``images`` images of the tar shards, as the tar reader hands them on."""
    ranges: list[ByteRange] = []
    for shard in sorted(shards.glob("*.tar")):
        for sample in read_tar(shard, ReadOptions()):
            if isinstance(sample.data, ByteRange):
                ranges.append(sample.data)
            if len(ranges) == images:
                return ranges
    return ranges


SIZE = 8  # the stand-in's pictures and decode size: the GPU's share of the work made negligible


def thread_cpu_us_per_image(ranges: list[ByteRange], size: int = SIZE) -> float:
    """Decode ``ranges`` in batches of :data:`BATCH` with nvJPEG's work taken out; the CPU of this
    process per image (the decode thread's, since this one only waits)."""
    import torch
    import torchvision.io

    from curator_cli.decode import gpu

    ready = torch.zeros((3, size, size), dtype=torch.uint8)
    real = torchvision.io.decode_jpeg
    torchvision.io.decode_jpeg = lambda data, **kw: [ready] * len(data) if isinstance(data, list) else ready
    try:
        decoder = gpu.GpuDecoder(DecodeOptions(min_side=size, crop=True), "cpu", stream=contextlib.nullcontext)
        decoder.submit(ranges[:BATCH]).wait()  # the thread started, the buffer grown
        cpu0 = time.process_time()
        jobs = [decoder.submit(ranges[k:k + BATCH]) for k in range(0, len(ranges), BATCH)]
        for job in jobs:
            job.wait()
        cpu = time.process_time() - cpu0
        decoder.close()
    finally:
        torchvision.io.decode_jpeg = real
    return cpu / len(ranges) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=BENCH_DIR / "data" / "shards")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args(argv)
    ranges = byte_ranges(args.shards, args.images)
    if not ranges:
        print(f"no tar shards in {args.shards}: run `make bench` once (bench/datagen.py makes them)", file=sys.stderr)
        return 2
    runs = [thread_cpu_us_per_image(ranges) for _ in range(args.passes)]
    print(f"--decode gpu thread, GPU work taken out: {statistics.median(runs):.1f} us of CPU per image "
          f"(median of {args.passes}: {', '.join(f'{r:.1f}' for r in runs)}; {len(ranges)} images, "
          f"batches of {BATCH})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
