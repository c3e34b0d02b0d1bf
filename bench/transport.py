"""The decode transport's cost to the main process, per image, by job size.

Feeds a ``DecodePool`` the bench's tar shards as the feeder does (a batch arena per batch of 256,
jobs of ``--chunk`` images, two batches decoding ahead of the one being waited on) and reports the
CPU time of this process (every thread: the dispatcher, the senders, this one) per image, with the
images/s. What it shows does not depend on the core count: every job costs the main process about
the same whatever its size, and that cost, not the workers, caps a run on a machine with many
cores (``processor.decode_chunk`` sizes jobs with it in mind).

    .venv/bin/python bench/transport.py                    # jobs of 8, 16 and 32, 2 workers
    .venv/bin/python bench/transport.py --chunks 8 --workers 4 --images 8000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from curator_cli.decode.pool import DecodePool  # noqa: E402
from curator_cli.io.readers.base import ByteRange, ReadOptions  # noqa: E402
from curator_cli.io.readers.tar import read_tar  # noqa: E402
from curator_cli.options import DecodeOptions  # noqa: E402

BATCH = 256


def feed(pool: DecodePool, payloads: list[ByteRange | bytes | None], chunk: int) -> tuple[float, float]:
    """(main-process CPU us per image, images/s) for decoding ``payloads`` in jobs of ``chunk``."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    in_flight = []
    for start in range(0, len(payloads), BATCH):
        pixels = pool.new_batch(BATCH)
        batch = payloads[start:start + BATCH]
        in_flight.append((pixels, [pool.submit(batch[k:k + chunk], pixels) for k in range(0, len(batch), chunk)]))
        if len(in_flight) > 2:  # two batches decoding ahead of the one waited on
            done, jobs = in_flight.pop(0)
            for job in jobs:
                job.wait()
            if done is not None:
                done.release()
    for done, jobs in in_flight:
        for job in jobs:
            job.wait()
        if done is not None:
            done.release()
    return (time.process_time() - cpu0) / len(payloads) * 1e6, len(payloads) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=BENCH_DIR / "data" / "shards")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunks", default="8,16,32", help="images per job, comma-separated")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=256, help="decode size (squares, the tensor path)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    tars = sorted(args.shards.glob("*.tar"))
    if not tars:
        sys.exit(f"transport: no shards in {args.shards} (make bench writes them)")
    payloads: list[ByteRange | bytes | None] = []
    while len(payloads) < args.images:
        for tar in tars:
            payloads += [sample.data for sample in read_tar(tar, ReadOptions())]
    payloads = payloads[:args.images]
    pool = DecodePool(args.workers, DecodeOptions(min_side=args.size, crop=True), 60.0, "fork", 0)
    try:
        feed(pool, payloads[:2 * BATCH], 32)  # workers started, arenas made
        for chunk in (int(c) for c in args.chunks.split(",")):
            runs = [feed(pool, payloads, chunk) for _ in range(args.repeats)]
            cpu = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[1] for r in runs)
            each = ", ".join(f"{r[0]:.1f}" for r in runs)
            print(f"jobs of {chunk:3d}: main process {cpu:6.1f} us/image (runs {each}), {rate:6.0f} images/s, "
                  f"{args.workers} workers")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
