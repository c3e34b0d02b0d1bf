"""Running the stages over one decoded batch and turning the result into output rows, in input order."""

from __future__ import annotations

from typing import Any

import numpy as np

from curator_cli.batching import DecodedBatch
from curator_cli.stages.base import ProcessingStage
from curator_cli.tasks import ImageBatch, ImageObject
from curator_cli.writer import OutputLayout, OutputRow


class StageFailure(Exception):
    """A stage raised while processing a batch; carries the stage name."""

    def __init__(self, stage_name: str, error: BaseException) -> None:
        super().__init__(f"stage {stage_name!r} failed: {type(error).__name__}: {error}")
        self.stage_name = stage_name
        self.error = error


def to_vector(value: Any) -> np.ndarray:
    """A stage's embedding (numpy array, torch tensor or sequence) as a 1-D float32 numpy array."""
    if hasattr(value, "detach"):  # torch.Tensor, on any device and dtype
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32).reshape(-1)


def _survivors(
    tasks: list[ImageBatch], alive: dict[int, ImageObject]
) -> dict[int, ImageObject]:
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


def run_stages(
    stages: list[ProcessingStage],
    decoded: DecodedBatch,
    shard_name: str,
    task_id: str,
    layout: OutputLayout,
) -> list[OutputRow]:
    """Pass the decodable images through every stage; one output row per input sample, in order."""
    objects = {
        i: ImageObject(
            image_path=sample.image_path,
            image_id=sample.image_id,
            metadata=dict(sample.metadata),
            image_data=image,
        )
        for i, (sample, image) in enumerate(zip(decoded.samples, decoded.images))
        if image is not None
    }
    filtered: dict[int, str] = {}
    if objects:
        batch = ImageBatch(dataset_name=shard_name, data=list(objects.values()))
        batch.task_id = task_id
        tasks: list[ImageBatch] = [batch]
        alive = objects
        for stage in stages:
            try:
                tasks = stage.process_batch(tasks) if tasks else []
            except Exception as exc:
                raise StageFailure(stage.name, exc) from exc
            after = _survivors(tasks, alive)
            for row in alive.keys() - after.keys():
                filtered[row] = f"filtered by {stage.name}"
            alive = after
        objects = alive

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
        if obj is not None:
            row.metadata = obj.metadata
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
