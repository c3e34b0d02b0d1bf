"""The GPU benchmark: ``curator embed`` with ``--decode gpu`` (nvJPEG) and with CPU decode, against
the stage alone on ready tensors, for ViT-B/32-sized work (issue 3's target: >= 5,000 images/s
from tar shards on one H100).

Usage (a machine with CUDA; ``bench/gpu_check.sh`` runs it on a lent GPU machine)::

    python bench/gpu.py --json gpu.json                 # torchvision vit_b_32, random weights
    python bench/gpu.py --device cpu --decode cpu --copies 1 --shards 2 --model resnet18   # harness check, no GPU

The bench's 16 x 250 JPEG shards (``datagen.py``) are hard-linked ``--copies`` times under other
names, so a run is long enough for its one-time costs (CUDA start, model build) to matter little;
each shard's second and later copies come from the page cache, as a warm dataset would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from datagen import DatasetSpec, ensure_dataset  # noqa: E402


def linked_copies(shards: list[Path], copies: int, directory: Path) -> Path:
    """``directory`` holding ``copies`` hard links (copies where links fail) of every shard."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for k in range(copies):
        for shard in shards:
            target = directory / f"c{k:02d}-{shard.name}"
            try:
                os.link(shard, target)
            except OSError:
                shutil.copyfile(shard, target)
    return directory


def stage_alone(model: str, device: str, batch: int, passes: int = 5) -> dict[str, Any]:
    """The built-in torchvision stage's ``process_tensors`` on ready uint8 squares, as curator hands
    them (pinned CPU memory for CPU decode, device memory for ``--decode gpu``); median images/s."""
    import torch

    from curator_cli.stages.runtime import default_precision
    from curator_cli.stages.builtin.torchvision_embedding import TorchvisionEmbeddingStage
    from curator_cli.tasks import ImageBatch, ImageObject
    from curator_cli.stages.worker_metadata import WorkerMetadata

    precision = default_precision(device)
    stage = TorchvisionEmbeddingStage(model=model, weights="none", batch_size=batch)
    stage.setup(WorkerMetadata(worker_id="bench", device=device, extra={"precision": precision}))
    size = int(stage.decode_size)
    squares = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    if device.startswith("cuda"):
        squares = squares.pin_memory()
    inputs = {"host": squares}
    if device.startswith("cuda"):
        inputs["device"] = squares.to(device)
    result: dict[str, Any] = {"model": model, "precision": precision, "batch": batch, "decode_size": size}
    for where, pixels in inputs.items():
        rates = []
        for i in range(passes + 2):  # two warm-up passes
            task = ImageBatch(data=[ImageObject(image_id=str(j)) for j in range(batch)])
            t0 = time.perf_counter()
            stage.process_tensors(pixels, task)  # ends with .cpu(): synchronises
            if i >= 2:
                rates.append(batch / (time.perf_counter() - t0))
        result[f"{where}_images_per_second"] = statistics.median(rates)
    stage.teardown()
    return result


def curator(inputs: Path, out: Path, model: str, device: str, decode: str, batch: int) -> dict[str, Any]:
    """One ``curator embed`` run; its summary plus images/s end to end and past stage setup."""
    shutil.rmtree(out, ignore_errors=True)
    summary = out.parent / f"{out.name}.json"
    cmd = [sys.executable, "-m", "curator_cli.cli", "embed", str(inputs), "-o", str(out), "--stage", "torchvision",
           "--stage-arg", f"model={model}", "--stage-arg", "weights=none", "--stage-arg", f"batch_size={batch}",
           "--batch-size", str(batch), "--device", device, "--decode", decode, "--summary-json", str(summary), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"curator embed --decode {decode} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(summary.read_text())
    result["wall_seconds"] = wall
    result["images_per_second_past_setup"] = result["images"] / (result["seconds"] - result["seconds_setup"])
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b_32", help="torchvision model (random weights)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decode", action="append", choices=["gpu", "cpu"],
                        help="decode modes to run (default: gpu and cpu)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--copies", type=int, default=8, help="times each of the 16 shards is read")
    parser.add_argument("--shards", type=int, default=16, help="bench shards to use (of 16)")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "gpu-results.json")
    args = parser.parse_args(argv)
    import torch

    started = time.perf_counter()
    shards = ensure_dataset(args.data_dir, DatasetSpec(), workers=os.cpu_count() or 2)[:args.shards]
    inputs = linked_copies(shards, args.copies, args.data_dir / "gpu-input")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "model": args.model,
        "images": len(shards) * args.copies * DatasetSpec().per_shard,
        "stage_alone": stage_alone(args.model, args.device, args.batch_size), "curator": {}}
    print(f"stage alone: {json.dumps(results['stage_alone'])}", flush=True)
    for decode in args.decode or ["gpu", "cpu"]:
        run = curator(inputs, args.data_dir / f"gpu-out-{decode}", args.model, args.device, decode, args.batch_size)
        results["curator"][decode] = run
        split = ", ".join(f"{k[8:]} {run[k]:.1f}" for k in run if k.startswith("seconds_"))
        print(f"curator --decode {decode}: {run['images']} images, {run['images_per_second']:.0f} img/s end to end, "
              f"{run['images_per_second_past_setup']:.0f} past setup; seconds {run['seconds']:.1f} ({split})",
              flush=True)
    best = max((r["images_per_second_past_setup"] for r in results["curator"].values()), default=0.0)
    results["target_5000_past_setup"] = best >= 5000
    results["seconds_total"] = time.perf_counter() - started
    shutil.rmtree(inputs, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results in {args.json} ({results['seconds_total']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
