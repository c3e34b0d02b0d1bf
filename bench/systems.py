"""The systems the benchmark compares (besides ``curator embed``), each run in its own process.

Usage (``run.py`` calls these; each writes one JSON result)::

    python bench/systems.py howto   --stage resnet18 --result r.json SHARD...
    python bench/systems.py ray     --stage mean     --result r.json SHARD...
    python bench/systems.py model   --stage resnet18 --result r.json SHARD...   # stage on pre-decoded batches
    python bench/systems.py tensors --stage resnet18 --result r.json SHARD...   # only its process_tensors
    python bench/systems.py ceiling --result r.json SHARD...                    # single-core decode ceilings

``seconds`` in every result covers the stage's setup and all the work, not the interpreter start
or (for Ray) ``ray.init``/``ray.shutdown``, the same span ``curator embed`` reports as ``seconds``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from stages import (  # noqa: E402
    MeanPixel256Stage,
    MeanPixelSmallStage,
    MeanPixelStage,
    MeanTensor224Stage,
    MeanTensorStage,
    ResNet18Stage,
    resize_center_crop,
)

from curator_cli.stages.base import ProcessingStage  # noqa: E402
from curator_cli.tasks import ImageBatch, ImageObject  # noqa: E402

BATCH_SIZE = 256  # images per ImageBatch: curator embed's default --batch-size, used by every system
STAGES: dict[str, type[ProcessingStage]] = {"mean": MeanPixelStage, "mean-small": MeanPixelSmallStage,
                                            "resnet18": ResNet18Stage, "mean-256": MeanPixel256Stage,
                                            "mean-tensor": MeanTensorStage, "mean-tensor-224": MeanTensor224Stage}


def make_stage(name: str) -> ProcessingStage:
    """A fresh, not yet set up, instance of the benchmark stage ``name`` (``mean`` or ``resnet18``)."""
    return STAGES[name]()


def iter_tar_jpegs(paths: list[str]) -> Iterator[tuple[str, str, bytes]]:
    """(shard path, key, JPEG bytes) for every ``KEY.jpg`` member, in shard then member order."""
    for path in paths:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".jpg"):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    yield path, member.name[: -len(".jpg")], handle.read()


def pil_rgb(data: bytes) -> np.ndarray:
    """What the how-to reader does: full-resolution PIL decode to an RGB uint8 array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------- a. the how-to loop


def run_howto(stage_name: str, paths: list[str], out_dir: Path) -> dict[str, Any]:
    """The loop a user writes from NeMo Curator's custom-stage how-to: tarfile, PIL, batch, ``process``."""
    started = time.perf_counter()
    stage = make_stage(stage_name)
    stage.setup()
    embeddings: list[np.ndarray] = []
    keys: list[str] = []
    batch: list[ImageObject] = []

    def flush() -> None:
        result = stage.process(ImageBatch(dataset_name="bench", data=batch))
        for obj in result.data:
            keys.append(obj.image_id)
            embeddings.append(np.asarray(obj.embedding, dtype=np.float32))
        batch.clear()

    for path, key, data in iter_tar_jpegs(paths):
        batch.append(ImageObject(image_path=f"{path}/{key}.jpg", image_id=key, image_data=pil_rgb(data)))
        if len(batch) == BATCH_SIZE:
            flush()
    if batch:
        flush()
    stage.teardown()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings.npy", np.stack(embeddings))
    (out_dir / "keys.json").write_text(json.dumps(keys))
    seconds = time.perf_counter() - started
    return {"images": len(keys), "seconds": seconds, "images_per_second": len(keys) / seconds}


# --------------------------------------------------------------------------- b. Ray Data


def ray_decode(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Ray Data ``map_batches`` task: JPEG bytes -> full-size RGB arrays (ragged, so an object column)."""
    images = np.empty(len(batch["jpg"]), dtype=object)
    for i, data in enumerate(batch["jpg"]):
        images[i] = pil_rgb(data)
    return {"key": batch["__key__"], "image": images}


class RayStageActor:
    """Ray Data ``map_batches`` actor: set the stage up once, then ``process`` each batch."""

    def __init__(self, stage_name: str) -> None:
        import torch

        self.stage = make_stage(stage_name)
        self.stage.setup()
        self.torch_threads = torch.get_num_threads()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        objects = [ImageObject(image_id=str(k), image_data=img) for k, img in zip(batch["key"], batch["image"])]
        result = self.stage.process(ImageBatch(dataset_name="bench", data=objects))
        embeddings = np.stack([np.asarray(o.embedding, dtype=np.float32) for o in result.data])
        threads = np.full(len(objects), self.torch_threads, dtype=np.int32)
        return {"key": np.array([o.image_id for o in result.data]), "embedding": embeddings, "threads": threads}


def run_ray(stage_name: str, paths: list[str], out_dir: Path) -> dict[str, Any]:
    """read_webdataset -> map_batches(decode) -> map_batches(stage actor, concurrency=1), on 2 CPUs."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    import ray
    import ray.data

    t0 = time.perf_counter()
    # address="local": always a fresh cluster of our own, never one another process on this machine started
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_seconds = time.perf_counter() - t0
    try:
        started = time.perf_counter()
        ds = ray.data.read_webdataset(paths, decoder=None, suffixes=["jpg"])
        ds = ds.map_batches(ray_decode, batch_size=BATCH_SIZE, batch_format="numpy")
        ds = ds.map_batches(RayStageActor, fn_constructor_args=(stage_name,), concurrency=1,
                            batch_size=BATCH_SIZE, batch_format="numpy")
        keys: list[str] = []
        embeddings: list[np.ndarray] = []
        threads: set[int] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            keys.extend(str(k) for k in batch["key"])
            embeddings.append(batch["embedding"])
            threads.update(int(t) for t in batch["threads"])
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "embeddings.npy", np.concatenate(embeddings))
        (out_dir / "keys.json").write_text(json.dumps(keys))
        seconds = time.perf_counter() - started
    finally:
        t1 = time.perf_counter()
        ray.shutdown()
        shutdown_seconds = time.perf_counter() - t1
    return {"images": len(keys), "seconds": seconds, "images_per_second": len(keys) / seconds,
            "seconds_ray_init": init_seconds, "seconds_ray_shutdown": shutdown_seconds,
            "actor_torch_threads": sorted(threads)}


# --------------------------------------------------------------------------- the stage alone


def run_model(stage_name: str, paths: list[str], limit: int, passes: int = 3,
              tensors_only: bool = False) -> dict[str, Any]:
    """The stage's own throughput on pre-decoded batches (decode time excluded); median of ``passes``.

    ``process_*`` times ``stage.process`` on ImageBatches of ``BATCH_SIZE`` images already decoded
    at the stage's ``decode_size`` (shorter side 224 for resnet18: what a size-aware decoder hands
    it; full size for the mean stage), so it includes the stage's own resize/crop/normalise. For
    resnet18, ``forward_*`` times the model alone on ready normalised tensors (``model_batch`` each),
    and ``tensors_*`` the stage as curator calls it by default: ``process_tensors`` on pre-decoded
    ``BATCH_SIZE`` uint8 squares, under autocast at curator's default precision on this CPU.
    Everything is warmed up on every batch shape first (oneDNN picks kernels per shape).
    ``tensors_only``: time ``process_tensors`` alone (a second measurement after the curator run).
    """
    from curator_cli.stages.runtime import default_precision

    import torch

    stage = make_stage(stage_name)
    stage.setup()
    size = getattr(stage, "decode_size", None)
    images = []
    for _, _, data in iter_tar_jpegs(paths):
        image = pil_rgb(data)
        if size:
            h, w = image.shape[:2]
            scale = size / min(h, w)
            image = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)),
                                                             Image.Resampling.BILINEAR))
        images.append(image)
        if len(images) == limit:
            break
    batches = [[ImageObject(image_id=str(i), image_data=img) for i, img in enumerate(images[s:s + BATCH_SIZE])]
               for s in range(0, len(images), BATCH_SIZE)]
    ready = []
    squares = []  # what curator's tensor fast path hands the stage: N x 3 x S x S uint8 (NHWC in memory)
    precision = default_precision("cpu")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if isinstance(stage, ResNet18Stage):
        crops = np.stack([resize_center_crop(img, stage.decode_size) for img in images])
        mean, std = stage._mean.cpu(), stage._std.cpu()
        ready = [(torch.from_numpy(crops[s:s + stage.model_batch]).permute(0, 3, 1, 2).float() - mean) / std
                 for s in range(0, len(crops), stage.model_batch)]
        for x in {tuple(x.shape): x for x in ready}.values():
            stage.forward(x)
        squares = [torch.from_numpy(crops[s:s + BATCH_SIZE]).permute(0, 3, 1, 2) for s in range(0, len(crops), BATCH_SIZE)]

    def tensors_pass() -> None:
        with torch.inference_mode(), autocast:
            for pixels, objects in zip(squares, batches):
                stage.process_tensors(pixels, ImageBatch(data=objects))

    stage.process(ImageBatch(data=batches[0][:8]))
    if squares:
        tensors_pass()
    process_rates, forward_rates, forward_bf16_rates, tensors_rates = [], [], [], []
    for _ in range(passes):
        if tensors_only:
            t0 = time.perf_counter()
            tensors_pass()
            tensors_rates.append(len(images) / (time.perf_counter() - t0))
            continue
        t0 = time.perf_counter()
        for objects in batches:
            stage.process(ImageBatch(data=objects))
        process_rates.append(len(images) / (time.perf_counter() - t0))
        if ready:
            t0 = time.perf_counter()
            for x in ready:
                stage.forward(x)
            forward_rates.append(len(images) / (time.perf_counter() - t0))
            # the same at the precision curator runs opt-in stages with by default on this CPU
            with torch.autocast("cpu", dtype=torch.bfloat16):
                for x in {tuple(x.shape): x for x in ready}.values():
                    stage.forward(x)
                t0 = time.perf_counter()
                for x in ready:
                    stage.forward(x)
                forward_bf16_rates.append(len(images) / (time.perf_counter() - t0))
        if squares:
            t0 = time.perf_counter()
            tensors_pass()
            tensors_rates.append(len(images) / (time.perf_counter() - t0))
    result: dict[str, Any] = {"images": len(images), "torch_threads": torch.get_num_threads(), "passes": passes}
    if process_rates:
        result.update(process_images_per_second=statistics.median(process_rates), process_all=process_rates)
    if forward_rates:
        result.update(forward_images_per_second=statistics.median(forward_rates), forward_all=forward_rates,
                      forward_bf16_images_per_second=statistics.median(forward_bf16_rates),
                      forward_bf16_all=forward_bf16_rates)
    if tensors_rates:
        result.update(tensors_images_per_second=statistics.median(tensors_rates), tensors_all=tensors_rates,
                      tensors_precision=precision)
    stage.teardown()
    return result


# --------------------------------------------------------------------------- decode ceilings


def _time_per_image(fn: Callable[[bytes], Any], blobs: list[bytes]) -> tuple[float, float]:
    """(images/s, CPU microseconds per image) of ``fn`` over ``blobs``, in this one thread."""
    fn(blobs[0])
    t0, cpu0 = time.perf_counter(), time.thread_time()
    for data in blobs:
        fn(data)
    return len(blobs) / (time.perf_counter() - t0), (time.thread_time() - cpu0) / len(blobs) * 1e6


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)


def decode_resize(data: bytes, size: int = 224) -> np.ndarray:
    """Stock Pillow: full decode, bicubic resize of the shorter side to ``size``."""
    return np.asarray(_resize_shorter(Image.open(io.BytesIO(data)).convert("RGB"), size))


def draft_decode_resize(data: bytes, size: int = 224) -> np.ndarray:
    """Pillow with ``Image.draft`` (JPEG DCT scaling to >= ``size`` on the shorter side), then bicubic resize."""
    image = Image.open(io.BytesIO(data))
    w, h = image.size
    scale = min(w, h) / size
    image.draft("RGB", (int(w / scale + 0.999), int(h / scale + 0.999)))
    return np.asarray(_resize_shorter(image.convert("RGB"), size))


def run_ceiling(paths: list[str], limit: int, passes: int = 3) -> dict[str, Any]:
    """Single-core decode ceilings (one process, images/s) on the first ``limit`` bench JPEGs; median of ``passes``."""
    blobs = [data for _, _, data in iter_tar_jpegs(paths)][:limit]
    result: dict[str, Any] = {"images": len(blobs), "passes": passes}
    for name, fn in (("decode_resize224", decode_resize), ("draft_decode_resize224", draft_decode_resize),
                     ("decode_full", pil_rgb)):
        timed = [_time_per_image(fn, blobs) for _ in range(passes)]
        rates = [rate for rate, _ in timed]
        result[name] = statistics.median(rates)
        result[name + "_all"] = rates
        result[name + "_cpu_us"] = statistics.median(cpu for _, cpu in timed)
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: run one system on the given shards and write its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=["howto", "ray", "model", "tensors", "ceiling"])
    parser.add_argument("shards", nargs="+")
    parser.add_argument("--stage", choices=sorted(STAGES), default="mean")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="where the embeddings go (howto, ray)")
    parser.add_argument("--limit", type=int, default=256, help="images (model, ceiling)")
    args = parser.parse_args(argv)
    out = args.out or args.result.with_suffix("")
    if args.system == "howto":
        result = run_howto(args.stage, args.shards, out)
    elif args.system == "ray":
        result = run_ray(args.stage, args.shards, out)
    elif args.system in ("model", "tensors"):
        result = run_model(args.stage, args.shards, args.limit, tensors_only=args.system == "tensors")
    else:
        result = run_ceiling(args.shards, args.limit)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
