"""The stages the tests run through the CLI, one module for all of them.

Tests name them by file path, as a user names a stage file they wrote:
``--stage path/to/tests/stages_for_tests.py:ClassName`` (``conftest.stage_spec("ClassName")``).
Class names, ``name`` values and fields are what the tests check (``filtered by DropAll``,
``stage 'shapes' failed``, ``--stage-arg delay=...``): change them together with the tests.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from curator_cli.stages.base import ProcessingStage
from curator_cli.tasks import ImageBatch, ImageObject


# --------------------------------------------------------------------------- the streaming pipeline (tests/execution)


@dataclass
class Shapes(ProcessingStage[ImageBatch, ImageBatch]):
    """Embeds (height, width, batch length); records what it saw."""
    log: str = ""
    delay: float = 0.0
    def process(self, task):
        time.sleep(self.delay)
        for obj in task.data:
            h, w, _ = obj.image_data.shape
            obj.embedding = [float(h), float(w), float(len(task.data))]
        return task


@dataclass
class Sized(Shapes):
    decode_size: int = 64


@dataclass
class AtExit(Shapes):
    """Shapes, and a handler registered with ``atexit`` in setup (as libraries that flush or upload at
    exit do) that writes ``marker`` and prints a line (buffered: stdout is a pipe); also a thread of
    its own (not a daemon) that writes ``marker.thread`` a moment after the last batch."""
    marker: str = ""
    def setup(self, worker_metadata=None):
        atexit.register(self._at_exit)
    def teardown(self):
        threading.Thread(target=self._late_write, daemon=False).start()  # (teardown runs in a daemon thread)
    def _late_write(self):
        time.sleep(0.5)
        with open(self.marker + ".thread", "w") as handle:
            handle.write("written")
    def _at_exit(self):
        with open(self.marker, "w") as handle:
            handle.write("ran at exit")
        print("AtExit stage: bye")


@dataclass
class Tensors(ProcessingStage[ImageBatch, ImageBatch]):
    decode_size: int = 32
    def process(self, task):
        raise AssertionError("the tensor fast path must be used")
    def process_tensors(self, pixels, task):
        assert pixels.dtype == torch.uint8 and tuple(pixels.shape[1:]) == (3, 32, 32)
        assert len(pixels) == len(task.data)
        means = pixels.float().mean(dim=(2, 3))
        for obj, mean in zip(task.data, means):
            obj.embedding = mean
        return task


@dataclass
class Autocast(ProcessingStage[ImageBatch, ImageBatch]):
    use_autocast = True
    def process(self, task):
        enabled = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")  # the run's device
        x = torch.ones(len(task.data), 4) @ torch.ones(4, 2)
        for obj, row in zip(task.data, x):
            obj.embedding = torch.cat([row, torch.tensor([float(enabled)], dtype=row.dtype)])
        return task


# --------------------------------------------------------------------------- multi-stage runs (tests/cli)


@dataclass
class MeanColour(ProcessingStage[ImageBatch, ImageBatch]):
    name: str = "mean_colour"
    def process(self, task):
        for obj in task.data:
            obj.embedding = obj.image_data.reshape(-1, 3).mean(axis=0) / 255.0
        return task


@dataclass
class DropOdd(ProcessingStage[ImageBatch, ImageBatch]):
    """Keeps every other image, in new objects (as a stage that rebuilds the batch would)."""
    name: str = "drop_odd"
    def process(self, task):
        kept = [ImageObject(image_id=o.image_id, image_path=o.image_path, image_data=o.image_data,
                            metadata=o.metadata, embedding=o.embedding)
                for i, o in enumerate(task.data) if i % 2 == 0]
        return ImageBatch(dataset_name=task.dataset_name, data=kept)


@dataclass
class Score(ProcessingStage[ImageBatch, ImageBatch]):
    name: str = "score"
    def outputs(self):
        return ["data"], ["aesthetic_score"]
    def process(self, task):
        for obj in task.data:
            obj.aesthetic_score = float(obj.embedding[0])
            obj.metadata["scored"] = True
        return task


@dataclass
class DropAll(ProcessingStage[ImageBatch, ImageBatch]):
    """No ``name``: the class name is the stage name (``filtered by DropAll``)."""
    def process(self, task):
        return None


# --------------------------------------------------------------------------- failures and resume (tests/cli/test_reliability.py)


@dataclass
class ShapesOrFail(ProcessingStage[ImageBatch, ImageBatch]):
    """(height, width, mean pixel); ``delay`` seconds per batch; fails on ids containing ``fail_on``."""
    delay: float = 0.0
    fail_on: str = ""
    name: str = "shapes"
    def process(self, task):
        time.sleep(self.delay)
        for obj in task.data:
            if self.fail_on and self.fail_on in obj.image_id:
                raise ValueError(f"cannot handle {obj.image_id}")
            h, w, _ = obj.image_data.shape
            obj.embedding = [float(h), float(w), float(obj.image_data.mean())]
        return task


@dataclass
class BrokenSetup(ShapesOrFail):
    name: str = "broken_setup"
    def setup(self, worker_metadata=None):
        raise RuntimeError("weights file is corrupt")


@dataclass
class SmallGpu(ShapesOrFail):
    """Raises CUDA out-of-memory for batches of more than ``limit`` images."""
    limit: int = 2
    def process(self, task):
        if len(task.data) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().process(task)


# --------------------------------------------------------------------------- Ray actors (tests/execution/test_ray.py)


@dataclass
class Mean(ProcessingStage[ImageBatch, ImageBatch]):
    """Mean colour; optionally slow, optionally dying once (marker file) when it meets ``die_on``."""
    delay: float = 0.0
    die_on: str = ""
    marker: str = ""
    log: str = ""
    def setup_on_node(self, node_info=None, worker_metadata=None):
        if self.log:
            with open(self.log, "a") as f:
                f.write("node\n")
    def setup(self, worker_metadata=None):
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"worker {worker_metadata.worker_id} {worker_metadata.device}\n")
    def process(self, task):
        time.sleep(self.delay)
        for obj in task.data:
            if self.die_on and self.die_on in obj.image_id and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)  # the actor dies mid-shard
            obj.embedding = obj.image_data.reshape(-1, 3).mean(axis=0)
        return task


# --------------------------------------------------------------------------- readers of the output (tests/io)


@dataclass
class UrlLength(ProcessingStage[ImageBatch, ImageBatch]):
    name: str = "url_length"
    def process(self, task):
        for obj in task.data:
            obj.embedding = [float(len(obj.metadata["url"]))]
            obj.metadata["seen_status"] = obj.metadata["status"]
        return task


@dataclass
class IdVector(ProcessingStage[ImageBatch, ImageBatch]):
    """A unit vector drawn from the image id, so a reader's values can be checked exactly."""
    dim: int = 8
    name: str = "id_vector"
    def process(self, task):
        for obj in task.data:
            v = np.random.default_rng(int(obj.image_id)).standard_normal(self.dim).astype(np.float32)
            obj.embedding = v / np.linalg.norm(v)
        return task


# --------------------------------------------------------------------------- CUDA (tests/execution/test_cuda.py)


@dataclass
class Hungry(ProcessingStage[ImageBatch, ImageBatch]):
    """Allocates ``per_image`` bytes of GPU memory per image of the batch: past what the GPU holds,
    a real CUDA out-of-memory error."""
    per_image: int = 0
    name = "hungry"
    def process(self, task):
        scratch = torch.empty(len(task.data) * self.per_image, dtype=torch.uint8, device="cuda")
        for obj in task.data:
            obj.embedding = torch.tensor([float(scratch.numel() > 0), 1.0])
        del scratch
        return task


# --------------------------------------------------------------------------- stage faults (tests/execution/test_stage_faults.py)


@dataclass
class Misbehaves(ProcessingStage[ImageBatch, ImageBatch]):
    """(height, width, mean pixel), except on images whose id contains a mistake's name: ``str``
    (the embedding is a string), ``empty`` (a zero-length embedding), ``huge`` (beyond float16),
    ``score`` (aesthetic_score is a string), ``nsfw`` (nsfw_score is a string), ``meta`` (metadata
    is a string)."""
    name: str = "misbehaves"
    def process(self, task):
        for obj in task.data:
            h, w, _ = obj.image_data.shape
            obj.embedding = [float(h), float(w), float(obj.image_data.mean())]
            if "str" in obj.image_id:
                obj.embedding = "0.1, 0.2, 0.3"
            elif "empty" in obj.image_id:
                obj.embedding = np.zeros(0, dtype=np.float32)
            elif "huge" in obj.image_id:
                obj.embedding = [1e6, 1.0, 2.0]
            elif "score" in obj.image_id:
                obj.aesthetic_score = "high"
            elif "nsfw" in obj.image_id:
                obj.nsfw_score = "0.3"
            elif "meta" in obj.image_id:
                obj.metadata = "not a dict"
        return task


@dataclass
class ReturnsObjects(Misbehaves):
    """Returns ``task.data``, a list of ImageObject, for a batch holding an id that contains ``on``."""
    on: str = "bad"
    name: str = "returns_objects"
    def process(self, task):
        task = super().process(task)
        return task.data if any(self.on in obj.image_id for obj in task.data) else task


@dataclass
class Sleepy(Misbehaves):
    """Sleeps ``seconds`` on a batch holding an id that contains ``on`` (on every batch when empty)."""
    seconds: float = 0.0
    on: str = ""
    name: str = "sleepy"
    def process(self, task):
        if any(self.on in obj.image_id for obj in task.data):
            time.sleep(self.seconds)
        return super().process(task)


@dataclass
class BusyCpu(ProcessingStage[ImageBatch, ImageBatch]):
    """Keeps the CPU busy for ``seconds`` per batch (its own compute), then sets a 1-d embedding."""

    seconds: float = 0.5
    name: str = "busy_cpu"

    def process(self, task):
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:
            pass
        for obj in task.data:
            obj.embedding = [float(obj.image_data.mean())]
        return task
