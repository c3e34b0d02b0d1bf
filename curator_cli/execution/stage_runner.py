"""Running the stages over one decoded batch and turning the result into output rows, in input order.

Also where a stage's optional capabilities are honoured: ``decode_size`` (decode no larger than
needed), ``process_tensors`` (one uint8 tensor batch instead of a list of arrays), ``use_autocast``
(mixed precision), and CUDA out-of-memory back-off (halve the batch and retry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from curator_cli.execution.feeder import DecodedBatch
from curator_cli.decode.pillow import square_crop
from curator_cli.stages.base import ProcessingStage, apply_to_tasks
from curator_cli.stages.runtime import precision_context
from curator_cli.tasks import ImageBatch, ImageObject, to_vector
from curator_cli.io.writer import OutputLayout, OutputRow


class StageFailure(Exception):
    """A stage raised while processing a batch; carries the stage name."""

    def __init__(self, stage_name: str, error: BaseException) -> None:
        super().__init__(f"stage {stage_name!r} failed: {type(error).__name__}: {error}")
        self.stage_name = stage_name
        self.error = error


@dataclass
class StageContext:
    """Run-wide settings the stages run under; ``max_images`` shrinks after a CUDA out-of-memory error."""

    device: str = "cpu"
    precision: str = "fp32"
    max_images: int | None = None
    squares: bool = False  # the decoders cut exact squares: stages with process_tensors get tensors


# --------------------------------------------------------------------------- decode size


def uses_tensors(stage: ProcessingStage) -> bool:
    """True when the stage takes the tensor fast path (defines ``process_tensors``)."""
    return callable(getattr(stage, "process_tensors", None))


def decode_request(stages: list[ProcessingStage], override: str | None = None) -> tuple[int | None, bool]:
    """(smallest shorter side to decode, None for full size; whether decoders may return exact squares).

    A stage's ``decode_size``: a positive int is the shorter side it needs, 0 means it does not
    look at pixels, and no attribute (or None) means it needs full-size images, as in NeMo Curator.
    ``override`` is ``--decode-size``: ``"full"``, a number, or None to follow the stages.
    """
    pixel_stages = [s for s in stages if getattr(s, "decode_size", None) != 0]
    sizes = [getattr(s, "decode_size", None) for s in pixel_stages]
    if override == "full":
        return None, False
    if override:
        min_side = int(override)
    elif not stages:
        return None, False
    elif not pixel_stages:
        min_side = 1  # nobody looks at pixels: decode as small as the decoder can, just to validate
    elif any(size is None for size in sizes):
        return None, False
    else:
        min_side = max(int(size) for size in sizes)
    crop = bool(pixel_stages) and all(uses_tensors(s) and s.decode_size == min_side for s in pixel_stages)
    return min_side, crop


def pixel_tensor(images: list[np.ndarray], size: int, device: str):
    """N x 3 x size x size uint8 tensor (pinned when bound for CUDA) from H x W x 3 arrays."""
    import torch

    squares = [
        image if isinstance(image, torch.Tensor) else torch.from_numpy(
            image if image.shape[:2] == (size, size) else np.asarray(square_crop(Image.fromarray(image), size)))
        for image in images
    ]
    on_gpu = next((t.device for t in squares if t.is_cuda), None)  # --decode gpu keeps its squares there
    if on_gpu is not None:  # JPEGs decoded on the GPU, the rest (CPU fallback) joins them there
        stream = torch.cuda.current_stream(on_gpu)
        for t in squares:
            if t.is_cuda:  # made on the decoder's stream: not to be reused before this stream is done with it
                t.record_stream(stream)
        return torch.stack([t.to(on_gpu) for t in squares]).permute(0, 3, 1, 2)
    batch = torch.stack(squares).permute(0, 3, 1, 2)
    if device.startswith("cuda"):
        batch = batch.pin_memory()
    return batch


# --------------------------------------------------------------------------- running


def _precision(stage: ProcessingStage, context: StageContext):
    """The run's precision around a stage that opts in with ``use_autocast`` (others apply it themselves)."""
    precision = context.precision if getattr(stage, "use_autocast", False) else "fp32"
    return precision_context(context.device, precision)


def _call_stage(stage: ProcessingStage, tasks: list[ImageBatch], context: StageContext) -> list[ImageBatch]:
    with _precision(stage, context):
        if not (context.squares and uses_tensors(stage)):
            return stage.process_batch(tasks)
        size = int(stage.decode_size)  # squares are cut only for stages that declare it

        def with_tensors(task: ImageBatch):
            return stage.process_tensors(pixel_tensor([obj.image_data for obj in task.data], size, context.device), task)

        return apply_to_tasks(stage, tasks, with_tensors)


def _survivors(tasks: list[ImageBatch], alive: dict[int, ImageObject]) -> dict[int, ImageObject]:
    """Map the objects in the stage's output back to input rows: by identity, else by ``image_id``."""
    row_of = {id(obj): row for row, obj in alive.items()}
    rows_by_id: dict[str, list[int]] = {}
    for row, obj in alive.items():
        rows_by_id.setdefault(obj.image_id, []).append(row)
    result: dict[int, ImageObject] = {}
    for task in tasks:
        for obj in task.data:
            row = row_of.get(id(obj))
            if row is None or row in result:
                candidates = [r for r in rows_by_id.get(obj.image_id, []) if r not in result]
                if not candidates:
                    continue  # an object the stage invented: nothing in the input to attach it to
                row = candidates[0]
            result[row] = obj
    return result


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def _chain(stages: list[ProcessingStage], objects: dict[int, ImageObject], dataset: str, task_id: str,
           context: StageContext) -> tuple[dict[int, ImageObject], dict[int, str]]:
    """Every stage in order over one ImageBatch of ``objects``: (survivors by row, filtered rows' reasons)."""
    batch = ImageBatch(dataset_name=dataset, data=list(objects.values()))
    batch.task_id = task_id
    tasks, alive, filtered = [batch], objects, {}
    for stage in stages:
        try:
            tasks = _call_stage(stage, tasks, context) if tasks else []
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            raise StageFailure(stage.name, exc) from exc
        after = _survivors(tasks, alive)
        for row in alive.keys() - after.keys():
            filtered[row] = f"filtered by {stage.name}"
        alive = after
    return alive, filtered


def _chain_with_backoff(stages: list[ProcessingStage], objects: dict[int, ImageObject], dataset: str,
                        task_id: str, context: StageContext) -> tuple[dict[int, ImageObject], dict[int, str]]:
    """:func:`_chain`, splitting the batch in halves on CUDA out-of-memory, down to one image."""
    rows = list(objects)
    limit = context.max_images
    if limit and len(rows) > limit:
        alive: dict[int, ImageObject] = {}
        filtered: dict[int, str] = {}
        for start in range(0, len(rows), limit):
            part = {r: objects[r] for r in rows[start:start + limit]}
            a, f = _chain_with_backoff(stages, part, dataset, f"{task_id}.{start // limit}", context)
            alive.update(a)
            filtered.update(f)
        return alive, filtered
    try:
        return _chain(stages, objects, dataset, task_id, context)
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        if len(rows) <= 1:
            raise StageFailure("(out of memory)", exc) from exc
        _release_cuda_memory()
        context.max_images = max(1, len(rows) // 2)
        return _chain_with_backoff(stages, objects, dataset, task_id, context)


def _release_cuda_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_stages(
    stages: list[ProcessingStage],
    decoded: DecodedBatch,
    shard_name: str,
    task_id: str,
    layout: OutputLayout,
    context: StageContext | None = None,
) -> list[OutputRow]:
    """Pass the decodable images through every stage; one output row per input sample, in order."""
    context = context or StageContext()
    objects = {
        i: ImageObject(
            image_path=sample.image_path,
            image_id=sample.image_id,
            metadata={**sample.passthrough, **sample.metadata},  # stages see a parquet row's columns
            image_data=image,
        )
        for i, (sample, image) in enumerate(zip(decoded.samples, decoded.images))
        if image is not None
    }
    filtered: dict[int, str] = {}
    if objects:
        objects, filtered = _chain_with_backoff(stages, objects, shard_name, task_id, context)

    rows: list[OutputRow] = []
    for i, sample in enumerate(decoded.samples):
        row = OutputRow(
            image_id=sample.image_id,
            shard=shard_name,
            image_path=sample.image_path,
            caption=sample.caption,
            metadata=sample.metadata,
            passthrough=sample.passthrough,
            error=sample.error or filtered.get(i),
        )
        obj = objects.get(i)
        if obj is not None:  # what a stage added or changed; columns that pass through are not written twice
            row.metadata = {k: v for k, v in obj.metadata.items()
                            if not (k in sample.passthrough and sample.passthrough[k] is v)}
            row.aesthetic_score = None if obj.aesthetic_score is None else float(obj.aesthetic_score)
            row.nsfw_score = None if obj.nsfw_score is None else float(obj.nsfw_score)
            if obj.embedding is None:
                row.error = "no embedding (no stage set one)"
            else:
                vector = to_vector(obj.embedding)
                if layout.dim is None:
                    layout.dim = int(vector.shape[0])
                if vector.shape[0] != layout.dim:
                    row.error = f"embedding has dimension {vector.shape[0]}, expected {layout.dim}"
                elif not np.all(np.isfinite(vector)):
                    row.error = "embedding contains NaN or infinity"
                else:
                    row.embedding = vector
        rows.append(row)
    return rows
