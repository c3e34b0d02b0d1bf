"""Running the stages over one decoded batch and turning the result into output rows, in input order.

Also where a stage's optional capabilities are honoured: ``decode_size`` (decode no larger than
needed), ``process_tensors`` (one uint8 tensor batch instead of a list of arrays), ``use_autocast``
(mixed precision), and CUDA out-of-memory back-off (halve the batch and retry).

And where a stage's mistakes are contained: a return value that is not an ``ImageBatch``, a list of
them or ``None`` fails the shard (:class:`StageFailure`, one line naming the stage and what it
returned); a value on one image that cannot be written (an embedding that is a string, empty, or
beyond float16 with ``--embedding-dtype float16``, a score that is not a number, metadata that is
not a dict) fails that image only (its row's ``error`` says what), and never fixes the dimension.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from curator_cli.execution.feeder import DecodedBatch
from curator_cli.stages.staging import HostStaging
from curator_cli.decode.pillow import square_crop
from curator_cli.stages.base import ProcessingStage, apply_to_tasks
from curator_cli.stages.runtime import precision_context
from curator_cli.tasks import ImageBatch, ImageObject, to_vector
from curator_cli.io.writer import SCORE_COLUMNS, OutputLayout, OutputRow

log = logging.getLogger("curator")

EXPECTED_RETURN = "an ImageBatch, a list of ImageBatch, or None"


class StageFailure(Exception):
    """A stage raised while processing a batch, or returned something unusable; carries the stage name."""

    def __init__(self, stage_name: str, error: BaseException, message: str | None = None) -> None:
        super().__init__(message or f"stage {stage_name!r} failed: {type(error).__name__}: {error}")
        self.stage_name = stage_name
        self.error = error


@dataclass
class StageContext:
    """Run-wide settings the stages run under; ``max_images`` shrinks after a CUDA out-of-memory error."""

    device: str = "cpu"
    precision: str = "fp32"
    max_images: int | None = None
    squares: bool = False  # the decoders cut exact squares: stages with process_tensors get tensors
    running: tuple[str, float] | None = None  # (stage name, time.monotonic() at its call) while one runs
    stage_cpu_seconds: float = 0.0  # CPU time of the calling thread inside the stages' own calls
    staging: HostStaging | None = None  # reusable pinned buffers for the tensor path on CUDA
    # the batch being run, as the decoders delivered it: (its images, all of them as one N x S x S x 3
    # array, or CUDA tensor with --decode gpu), when they did; a stage given exactly those images gets
    # that as its tensor
    ready: tuple[list[Any], Any] | None = None


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


def pixel_tensor(images: list[np.ndarray], size: int, device: str, staging: HostStaging | None = None,
                 ready: tuple[list[Any], Any] | None = None):
    """N x 3 x size x size uint8 tensor from H x W x 3 arrays: in ``staging``'s reusable (pinned) host
    buffers when given (the CUDA path), else pinned when bound for CUDA. ``ready``: the decoders'
    batch's rows and the batch as one array; when ``images`` are exactly those rows, the array is the
    tensor as it is (copied once into staging for CUDA), no image is touched one by one."""
    import torch

    if ready is not None and len(ready[0]) == len(images) and all(a is b for a, b in zip(images, ready[0])):
        if isinstance(ready[1], torch.Tensor):  # --decode gpu: already on the device
            if ready[1].is_cuda:  # made on the decoder's stream: not to be reused before this one is done
                ready[1].record_stream(torch.cuda.current_stream(ready[1].device))
            return ready[1].permute(0, 3, 1, 2)
        if staging is not None:
            return staging.copy(ready[1]).permute(0, 3, 1, 2)
        batch = torch.from_numpy(ready[1])
        if device.startswith("cuda"):
            batch = batch.pin_memory()
        return batch.permute(0, 3, 1, 2)

    squares = [
        image if isinstance(image, torch.Tensor) else torch.from_numpy(
            image if image.shape[:2] == (size, size) else np.array(square_crop(Image.fromarray(image), size)))
        for image in images
    ]
    on_gpu = next((t.device for t in squares if t.is_cuda), None)  # --decode gpu keeps its squares there
    if on_gpu is not None:  # JPEGs decoded on the GPU, the rest (CPU fallback) joins them there
        stream = torch.cuda.current_stream(on_gpu)
        for t in squares:
            if t.is_cuda:  # made on the decoder's stream: not to be reused before this stream is done with it
                t.record_stream(stream)
        return torch.stack([t.to(on_gpu) for t in squares]).permute(0, 3, 1, 2)
    if staging is not None and squares:
        return staging.stack(squares).permute(0, 3, 1, 2)
    batch = torch.stack(squares).permute(0, 3, 1, 2)
    if device.startswith("cuda"):
        batch = batch.pin_memory()
    return batch


# --------------------------------------------------------------------------- running


def _precision(stage: ProcessingStage, context: StageContext):
    """The run's precision around a stage that opts in with ``use_autocast`` (others apply it themselves)."""
    precision = context.precision if getattr(stage, "use_autocast", False) else "fp32"
    return precision_context(context.device, precision)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def describe_return(value: Any) -> str | None:
    """What is wrong with a value ``process`` returned, in a few words (``a list of 4 ImageObject``);
    None when it is an ImageBatch of ImageObjects, a list of those, or None."""
    if value is None:
        return None
    if isinstance(value, list):
        wrong = [v for v in value if not isinstance(v, ImageBatch)]
        if wrong:
            kinds = sorted({type(v).__name__ for v in wrong})
            return f"a list of {len(value)} {kinds[0]}" if len(kinds) == 1 and len(wrong) == len(value) \
                else f"a list holding {', '.join(kinds)}"
        return next((problem for problem in map(describe_return, value) if problem), None)
    if not isinstance(value, ImageBatch):
        return _a(type(value).__name__)
    if not isinstance(value.data, list):
        return f"an ImageBatch whose data is {_a(type(value.data).__name__)}"
    wrong_items = sorted({type(obj).__name__ for obj in value.data if not isinstance(obj, ImageObject)})
    if wrong_items:
        return f"an ImageBatch holding {', '.join(wrong_items)}"
    return None


class _InvalidReturn(TypeError):
    """A stage returned something that is not an ImageBatch, a list of them, or None."""


def _checked(handle):
    """``handle`` (a stage's ``process`` or tensor path), refusing a return value the runner cannot use."""
    def call(task: ImageBatch):
        result = handle(task)
        problem = describe_return(result)
        if problem:
            raise _InvalidReturn(f"returned {problem} ({EXPECTED_RETURN} expected)")
        return result
    return call


def _call_stage(stage: ProcessingStage, tasks: list[ImageBatch], context: StageContext) -> list[ImageBatch]:
    """One stage over ``tasks``, with the CPU time its own call takes counted apart from curator's."""
    t0 = time.thread_time()
    try:
        return _call_stage_untimed(stage, tasks, context)
    finally:
        context.stage_cpu_seconds += time.thread_time() - t0


def _call_stage_untimed(stage: ProcessingStage, tasks: list[ImageBatch], context: StageContext) -> list[ImageBatch]:
    with _precision(stage, context):
        if not (context.squares and uses_tensors(stage)):
            if type(stage).process_batch is ProcessingStage.process_batch:  # the default: check each return
                return apply_to_tasks(stage, tasks, _checked(stage.process))
            results = stage.process_batch(tasks)
            if isinstance(results, list):
                problem = describe_return(results)
            else:
                problem = "None" if results is None else _a(type(results).__name__)
            if problem:
                raise _InvalidReturn(f"returned {problem} from process_batch (a list of ImageBatch expected)")
            return results
        size = int(stage.decode_size)  # squares are cut only for stages that declare it

        def with_tensors(task: ImageBatch):
            pixels = pixel_tensor([obj.image_data for obj in task.data], size, context.device, context.staging,
                                  context.ready)
            try:
                return stage.process_tensors(pixels, task)
            finally:
                if context.staging is not None:
                    context.staging.done()

        return apply_to_tasks(stage, tasks, _checked(with_tensors))


def _survivors(tasks: list[ImageBatch], alive: dict[int, ImageObject]) -> dict[int, ImageObject]:
    """Map the objects in the stage's output back to input rows: by identity, else by ``image_id``."""
    if len(tasks) == 1 and len(tasks[0].data) == len(alive) and all(
            a is b for a, b in zip(tasks[0].data, alive.values())):
        return alive  # the usual case: the batch came back as it went in
    row_of = {id(obj): row for row, obj in alive.items()}
    rows_by_id: dict[str, list[int]] = {}
    for row, obj in alive.items():
        rows_by_id.setdefault(obj.image_id, []).append(row)
    result: dict[int, ImageObject] = {}
    for task in tasks:
        for obj in task.data:
            row = row_of.get(id(obj))
            if row is None or row in result:
                same_id = rows_by_id.get(obj.image_id, []) if isinstance(obj.image_id, str) else []
                candidates = [r for r in same_id if r not in result]
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
        context.running = (stage.name, time.monotonic())
        try:
            tasks = _call_stage(stage, tasks, context) if tasks else []
        except _InvalidReturn as exc:
            raise StageFailure(stage.name, exc, f"stage {stage.name!r} {exc}") from exc
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            raise StageFailure(stage.name, exc) from exc
        finally:
            context.running = None
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
        if decoded.squares is not None:
            context.ready = ([obj.image_data for obj in objects.values()], decoded.squares)
        try:
            objects, filtered = _chain_with_backoff(stages, objects, shard_name, task_id, context)
        finally:
            context.ready = None

    rows: list[OutputRow] = []
    embedded: list[OutputRow] = []
    for i, sample in enumerate(decoded.samples):
        row = OutputRow(
            image_id=sample.image_id,
            shard=shard_name,
            image_path=sample.image_path,
            caption=sample.caption,
            metadata=sample.metadata,
            passthrough=sample.passthrough,
            metadata_text=sample.metadata_text,
            error=sample.error or filtered.get(i),
        )
        obj = objects.get(i)
        if obj is not None:
            try:
                _take_outputs(row, obj, sample)
            except Exception as exc:  # whatever else a stage left on an image costs that image only
                log.exception("image %s of %s: stage output unusable", sample.image_id, shard_name)
                row.metadata, row.aesthetic_score, row.nsfw_score, row.embedding = sample.metadata, None, None, None
                row.metadata_text = sample.metadata_text
                row.error = f"stage output unusable: {type(exc).__name__}: {exc}"
            if row.embedding is not None:
                embedded.append(row)
        rows.append(row)
    _check_embeddings(embedded, layout)
    return rows


def _number(value: Any) -> float | None:
    """A score as a float; None when it is not a number (a string, an array of several values...)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _vector(value: Any) -> np.ndarray | None:
    """An embedding as a 1-D float32 array; None when it is not one (a string, a dict, ragged lists...)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return to_vector(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _take_outputs(row: OutputRow, obj: ImageObject, sample: Any) -> None:
    """Copy what the stages set on ``obj`` into ``row``, or set ``row.error`` to what cannot be written
    (the row then keeps no embedding). The embedding is a non-empty 1-D vector here; whether it fits
    the run (dimension, finite values) is checked for the whole batch at once (:func:`_check_embeddings`)."""
    if not isinstance(obj.metadata, dict):
        row.error = f"stage set metadata to {_a(type(obj.metadata).__name__)}, not a dict"
        return
    # what a stage added or changed; columns that pass through are not written twice
    row.metadata = ({k: v for k, v in obj.metadata.items()
                     if not (k in sample.passthrough and sample.passthrough[k] is v)}
                    if sample.passthrough else obj.metadata)
    if row.metadata_text is not None and row.metadata != sample.metadata:
        row.metadata_text = None  # a stage changed it: written from the dict
    for column in SCORE_COLUMNS:
        value = getattr(obj, column)
        score = None if value is None else _number(value)
        if value is not None and score is None:
            row.error = f"stage set {column} to {_a(type(value).__name__)}, not a number"
            row.aesthetic_score = row.nsfw_score = None
            return
        setattr(row, column, score)
    if obj.embedding is None:
        row.error = "no embedding (no stage set one)"
        return
    vector = _vector(obj.embedding)
    if vector is None:
        row.error = f"stage set embedding to {_a(type(obj.embedding).__name__)}, not a vector"
    elif vector.shape[0] == 0:
        row.error = "stage set an empty embedding (0 values)"
    else:
        row.embedding = vector


def _check_embeddings(rows: list[OutputRow], layout: OutputLayout) -> None:
    """Fail the rows whose vector the run cannot write: another dimension than the run's, NaN or
    infinity, or beyond float16 with ``--embedding-dtype float16``. One numpy pass per vector length
    (normally one), not one per row. Only a vector that can be written fixes the run's dimension."""
    if not rows:
        return
    by_length: dict[int, list[int]] = {}
    for position, row in enumerate(rows):
        by_length.setdefault(row.embedding.shape[0], []).append(position)
    problem: list[str | None] = [None] * len(rows)
    for positions in by_length.values():
        matrix = np.stack([rows[p].embedding for p in positions])
        finite = np.isfinite(matrix).all(axis=1)
        if layout.embedding_dtype == "float16":
            with np.errstate(over="ignore"):
                fits = np.isfinite(matrix.astype(np.float16)).all(axis=1)  # checked after the cast, as written
        else:
            fits = finite
        for index in np.flatnonzero(~(finite & fits)):
            position = positions[index]
            problem[position] = ("embedding contains NaN or infinity" if not finite[index]
                                 else "embedding out of float16 range")
    if layout.dim is None:
        layout.dim = next((int(row.embedding.shape[0]) for row, p in zip(rows, problem) if p is None), None)
    for row, reason in zip(rows, problem):
        if layout.dim is not None and row.embedding.shape[0] != layout.dim:
            reason = f"embedding has dimension {row.embedding.shape[0]}, expected {layout.dim}"
        if reason is not None:
            row.embedding, row.error = None, reason
