"""What ``curator embed`` is measured against on a GPU machine (``bench/gpu.py`` runs each in a
process of its own):

- :func:`ceiling`: nvJPEG's batched decode (``torchvision.io.decode_jpeg(list, device="cuda")``) of
  the bench's JPEG bytes, already in memory, in batches of 256, + resize of the shorter side to 256
  and centre crop 224 (one ``interpolate`` per same-shape group); then the same decode back to back
  with the model on the same batches: the GPU's ceiling for tar shards of JPEGs.
- :func:`dataloader`: the plain PyTorch loop a user would write: an ``IterableDataset`` over the tar
  shards (``tarfile`` + PIL, shards split between workers by worker id), the weights' own
  ``transforms()``, ``DataLoader(num_workers=<cores>, pin_memory=True)``, batches of 256, bf16
  autocast, the same model; timed from model build to the last batch's embeddings on the CPU.
- :func:`pillow_core`: one core's Pillow decode (``Image.draft`` as curator uses it) + resize of the
  shorter side to 256 + centre crop 224, on the first few hundred bench JPEGs.
"""

from __future__ import annotations

import io
import os
import socket
import statistics
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

RESIZE, CROP = 256, 224  # ViT_B_32_Weights.DEFAULT.transforms(): resize 256, centre crop 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def jpeg_bytes(shards: list[Path], limit: int | None = None) -> list[bytes]:
    """The ``.jpg`` members of ``shards``, in order, at most ``limit``."""
    out: list[bytes] = []
    for shard in shards:
        with tarfile.open(shard) as archive:
            for member in archive:
                if member.name.endswith(".jpg"):
                    out.append(archive.extractfile(member).read())
                    if limit and len(out) >= limit:
                        return out
    return out


def no_network() -> None:
    """Make any TCP/IP connection in this process (and its forked children) fail loudly, so a
    hidden weights download cannot go unnoticed."""

    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):  # Unix sockets (worker pipes) stay allowed
            raise RuntimeError(f"network access attempted in the GPU check: {address}")
        return connect(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]


# --- nvJPEG decode ceiling ------------------------------------------------------------------------

def _decode_resize(payloads: list[Any], device: str) -> Any:
    """One batch of JPEG byte tensors -> (N, 3, 224, 224) uint8 on ``device``: decode_jpeg on the
    list, then per same-shape group one interpolate (shorter side to 256, bilinear, antialiased)
    and a centre crop of 224."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(payloads, mode=ImageReadMode.RGB, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(decoded):
        groups.setdefault(tuple(image.shape[1:]), []).append(i)
    out = torch.empty((len(decoded), 3, CROP, CROP), dtype=torch.uint8, device=device)
    for (height, width), index in groups.items():
        scale = RESIZE / min(height, width)
        target = (max(RESIZE, round(height * scale)), max(RESIZE, round(width * scale)))
        stacked = torch.stack([decoded[i] for i in index]).float()
        resized = F.interpolate(stacked, size=target, mode="bilinear", antialias=True, align_corners=False)
        top, left = (target[0] - CROP) // 2, (target[1] - CROP) // 2
        crop = resized[:, :, top:top + CROP, left:left + CROP].round_().clamp_(0, 255).to(torch.uint8)
        out[torch.tensor(index, device=device)] = crop
    return out


def ceiling(shards: list[Path], device: str, model: str, batch: int, passes: int = 3,
            emit: Callable[[dict], None] = lambda r: None) -> dict[str, Any]:
    """Images/s of nvJPEG decode + resize/crop alone, and back to back with the model, on the same
    batches of ``batch`` JPEGs (full batches only); median of ``passes`` after one warm-up pass."""
    import torch
    import torch.nn.functional as F

    from curator_cli.stages.builtin.torchvision_embedding import TorchvisionEmbeddingStage
    from curator_cli.stages.runtime import autocast, default_precision
    from curator_cli.stages.worker_metadata import WorkerMetadata

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    blobs = jpeg_bytes(shards)
    payloads = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    full = max(1, len(payloads) // batch)
    batches = [payloads[i * batch:(i + 1) * batch] for i in range(full)]
    images = sum(len(b) for b in batches)
    result: dict[str, Any] = {"device": device, "batch": batch, "batches": len(batches), "images_per_pass": images,
                              "resize": RESIZE, "crop": CROP, "passes": passes}

    def timed(run_batch: Callable[[list[Any]], Any]) -> list[float]:
        rates = []
        for i in range(passes + 1):  # one warm-up pass (nvJPEG handles, cuDNN/cuBLAS choices)
            sync()
            t0 = time.perf_counter()
            for b in batches:
                run_batch(b)
            sync()
            if i >= 1:
                rates.append(images / (time.perf_counter() - t0))
        return rates

    rates = timed(lambda b: _decode_resize(b, device))
    result["decode_images_per_second"] = statistics.median(rates)
    result["decode_rates"] = rates
    emit(result)

    precision = default_precision(device)
    stage = TorchvisionEmbeddingStage(model=model, weights="none", batch_size=batch)
    stage.setup(WorkerMetadata(worker_id="ceiling", device=device, extra={"precision": precision}))
    net = stage._model
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0

    def decode_and_embed(b: list[Any]) -> Any:
        squares = _decode_resize(b, device)
        with autocast(device, precision):
            features = net((squares.float() - mean) / std)
        return F.normalize(features.float(), dim=1).cpu()  # .cpu() synchronises, as a real loop would

    rates = timed(decode_and_embed)
    result["back_to_back_images_per_second"] = statistics.median(rates)
    result["back_to_back_rates"] = rates
    result["precision"] = precision
    stage.teardown()
    return result


# --- the plain PyTorch DataLoader loop ------------------------------------------------------------

def _tar_dataset(shards: list[Path], transform: Any) -> Any:
    from torch.utils.data import IterableDataset, get_worker_info

    class TarShards(IterableDataset):
        """(key, tensor) for every .jpg in the shards; each DataLoader worker reads its own shards."""

        def __iter__(self) -> Iterator[tuple[str, Any]]:
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            for shard in shards[worker::workers]:
                with tarfile.open(shard) as archive:
                    for member in archive:
                        if member.name.endswith(".jpg"):
                            data = archive.extractfile(member).read()
                            image = Image.open(io.BytesIO(data)).convert("RGB")
                            yield member.name[:-4], transform(image)

    return TarShards()


def dataloader(shards: list[Path], device: str, batch: int, model_name: str = "vit_b_32",
               workers: int | None = None) -> dict[str, Any]:
    """The loop a user writes; images/s from model build to the last batch's embeddings on the CPU."""
    no_network()
    import torch
    import torchvision
    from torch.utils.data import DataLoader

    workers = cores() if workers is None else workers
    # ViT_B_32_Weights.DEFAULT.transforms() for vit_b_32: the recipe only, no download
    transform = torchvision.models.get_model_weights(model_name).DEFAULT.transforms()
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None)
    if model_name.startswith("vit_"):
        model.heads = torch.nn.Identity()  # what a ViT user writes to get the 768-d features
    else:
        from curator_cli.stages.builtin.torchvision_embedding import remove_head
        remove_head(model)
    model = model.eval().to(device)
    loader = DataLoader(_tar_dataset(shards, transform), batch_size=batch, num_workers=workers, pin_memory=cuda)
    count, first = 0, None
    embeddings = []
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        for keys, pixels in loader:
            if first is None:
                first = time.perf_counter() - t0
            out = model(pixels.to(device, non_blocking=True))
            embeddings.append(out.float().cpu())
            count += len(keys)
    seconds = time.perf_counter() - t0
    return {"images": count, "seconds": seconds, "images_per_second": count / seconds,
            "seconds_to_first_batch": first, "model": model_name, "num_workers": workers, "pin_memory": cuda, "batch": batch,
            "dimension": int(embeddings[0].shape[1]) if embeddings else None,
            "transform": repr(transform).replace("\n", " "), "network_blocked": True}


# --- one core's Pillow decode + resize ------------------------------------------------------------

def _pillow_draft_resize(data: bytes) -> np.ndarray:
    """Decode with DCT scaling to no less than 256 on the shorter side (curator's rule), resize the
    shorter side to 256 (bilinear, antialiased), centre crop 224."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    scale = min(width, height) / RESIZE
    if scale >= 2:
        image.draft("RGB", (int(width / scale + 0.999), int(height / scale + 0.999)))
    image = image.convert("RGB")
    width, height = image.size
    factor = RESIZE / min(width, height)
    new_w, new_h = max(RESIZE, round(width * factor)), max(RESIZE, round(height * factor))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - CROP) // 2, (new_h - CROP) // 2
    return np.asarray(image.crop((left, top, left + CROP, top + CROP)))


def pillow_core(shards: list[Path], count: int = 300, passes: int = 3) -> dict[str, Any]:
    """One process, one thread: images/s of Pillow draft + resize 256 + crop 224, and of curator's own
    CPU decoder at decode size 256 (``decode_image(min_side=256, crop=True)``); median of passes."""
    from curator_cli.decode.pillow import decode_image

    blobs = jpeg_bytes(shards, count)
    result: dict[str, Any] = {"images": len(blobs), "passes": passes, "cores": cores()}
    for label, fn in (("pillow_draft", _pillow_draft_resize),
                      ("curator_decoder", lambda d: decode_image(d, min_side=RESIZE, crop=True))):
        rates = []
        for i in range(passes + 1):
            t0 = time.perf_counter()
            for data in blobs:
                fn(data)
            if i >= 1:
                rates.append(len(blobs) / (time.perf_counter() - t0))
        result[f"{label}_images_per_second"] = statistics.median(rates)
    result["pillow_draft_x_cores"] = result["pillow_draft_images_per_second"] * result["cores"]
    return result
