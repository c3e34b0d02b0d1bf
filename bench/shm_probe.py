"""How fast batches of pixels move from decode workers to the main process through /dev/shm, by
each way of writing and reading a batch arena (issue 13). On an H200 machine (gVisor) curator's
main process spent ~0.3-0.5 s per 50 MB batch reading arenas that workers had written through
their own mappings, where a 2-core Linux VM spends a few ms: this probe tells which step pays.

    python bench/shm_probe.py [--workers 4] [--batches 12] [--json out.json]

Per combination: median wall time per batch of the workers' writes (slowest worker) and of the
main process's read, and the main process's CPU time per batch. Writes: ``mmap+fallocate`` (each
picture's range fallocated, then copied into the worker's mapping), ``mmap`` (file allocated once
by the main process), ``pwrite``. Reads: ``map-touch`` (one byte per 4 KiB page of the main's
mapping: the page-fault cost alone), ``map-copy`` (numpy copy of the mapping into a private
buffer), ``torch-copy`` (the same with torch's ``copy_`` on its intra-op threads, as
``HostStaging.copy`` does), ``preadv`` (the kernel copies the file into the private buffer; no mapping).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import time

import numpy as np

ROWS, ROW = 256, 256 * 256 * 3  # a batch of 256-px squares: 50 MB
WRITES = ("mmap+fallocate", "mmap", "pwrite")
READS = ("map-touch", "map-copy", "torch-copy", "preadv")


def worker(path: str, rows: range, mode: str, go: int, done: int) -> None:
    fd = os.open(path, os.O_RDWR)
    view = mmap.mmap(fd, ROWS * ROW * 2) if mode.startswith("mmap") else None
    picture = np.random.default_rng(rows.start).integers(0, 255, ROW, dtype=np.uint8).tobytes()
    while True:
        msg = os.read(go, 8)
        if not msg or msg == b"stop....":
            break
        base = int(msg) * ROWS * ROW  # which of the two arenas in the file
        t0 = time.perf_counter()
        for r in rows:
            at = base + r * ROW
            if mode == "pwrite":
                os.pwrite(fd, picture, at)
            else:
                if mode == "mmap+fallocate":
                    os.posix_fallocate(fd, at, ROW)
                view[at:at + ROW] = picture
        os.write(done, f"{time.perf_counter() - t0:.6f}".encode().ljust(16))
    os._exit(0)


def probe(write: str, read: str, workers: int, batches: int) -> dict:
    path = f"/dev/shm/curator-probe-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
    size = ROWS * ROW * 2
    os.ftruncate(fd, size)
    if write != "mmap+fallocate":
        os.posix_fallocate(fd, 0, size)
    mapping = mmap.mmap(fd, size)
    private = np.empty(ROWS * ROW, dtype=np.uint8)
    private[::4096] = 0
    pipes, pids = [], []
    per = ROWS // workers
    for w in range(workers):
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            worker(path, range(w * per, (w + 1) * per), write, go_r, done_w)
        pipes.append((go_w, done_r))
        pids.append(pid)
    writes, reads, cpus = [], [], []
    for b in range(batches):
        half = b % 2
        for go_w, _ in pipes:
            os.write(go_w, str(half).encode().ljust(8))
        writes.append(max(float(os.read(done_r, 16)) for _, done_r in pipes))
        c0, t0 = time.process_time(), time.perf_counter()
        if read == "preadv":
            os.preadv(fd, [memoryview(private)], half * ROWS * ROW)
        else:
            view = np.ndarray((ROWS * ROW,), np.uint8, buffer=mapping, offset=half * ROWS * ROW)
            if read == "map-touch":
                int(view[::4096].sum())
            elif read == "torch-copy":  # torch's copy_, on all its intra-op threads (as HostStaging.copy)
                import torch
                torch.from_numpy(private).copy_(torch.from_numpy(view))
            else:
                np.copyto(private, view)
            del view
        reads.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    for go_w, done_r in pipes:
        os.write(go_w, b"stop....")
    for pid in pids:
        os.waitpid(pid, 0)
    mapping.close()
    os.close(fd)
    os.unlink(path)
    steady = slice(2, None)  # the first use of each arena faults in fresh pages anywhere
    ms = lambda xs: round(statistics.median(xs[steady]) * 1000, 1)  # noqa: E731
    return {"write": write, "read": read, "write_ms": ms(writes), "read_ms": ms(reads), "read_cpu_ms": ms(cpus),
            "first_read_ms": round(reads[0] * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = []
    print(f"{'write':>15} {'read':>10} {'write ms':>9} {'read ms':>8} {'read cpu':>9} {'1st read':>9}  (per 50 MB batch)")
    for write in WRITES:
        for read in READS:
            r = probe(write, read, args.workers, args.batches)
            results.append(r)
            print(f"{write:>15} {read:>10} {r['write_ms']:>9} {r['read_ms']:>8} {r['read_cpu_ms']:>9} {r['first_read_ms']:>9}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
