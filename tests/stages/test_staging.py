"""The CUDA path allocates no host buffer per batch: batches bound for the GPU are stacked into a
small ring of reusable pinned buffers (``stages/staging.py``). Here the CPU stands in for pinned
memory and CUDA events, and the allocations are counted through the whole stage runner."""

from __future__ import annotations

import numpy as np
import torch

from curator_cli.execution.feeder import DecodedBatch
from curator_cli.execution.stage_runner import StageContext, run_stages
from curator_cli.stages.staging import SLOTS, HostStaging
from curator_cli.io.readers.base import Sample
from curator_cli.io.writer import OutputLayout
from curator_cli.stages.base import ProcessingStage
from curator_cli.tasks import ImageBatch


class MeanOfTensors(ProcessingStage[ImageBatch, ImageBatch]):
    """Tensor fast path: the embedding is each square's mean, read from the tensor it was handed."""

    name = "mean_of_tensors"
    decode_size = 8

    def process(self, task):
        raise AssertionError("the tensor path should be taken")

    def process_tensors(self, pixels, task):
        self.seen.append(pixels.data_ptr())
        for obj, square in zip(task.data, pixels):
            obj.embedding = [float(square.float().mean())]
        return task


class Fence:
    synchronized = 0

    def synchronize(self) -> None:
        Fence.synchronized += 1


def test_batches_reuse_the_staging_buffers_and_keep_their_own_pixels():
    allocated: list[tuple[int, ...]] = []

    def allocate(shape):
        allocated.append(shape)
        return torch.empty(shape, dtype=torch.uint8)  # pinned memory on CUDA; plain here

    staging = HostStaging(allocate=allocate, fence=Fence)
    stage = MeanOfTensors()
    stage.seen = []
    context = StageContext(device="cpu", squares=True, staging=staging)
    layout = OutputLayout()
    for batch in range(12):
        sizes = 16 if batch < 11 else 5  # the last batch is smaller: a view of a buffer, not a new one
        images = [np.full((8, 8, 3), (batch * 16 + i) % 256, np.uint8) for i in range(sizes)]
        samples = [Sample(image_id=f"{batch}-{i}", image_path="") for i in range(sizes)]
        rows = run_stages([stage], DecodedBatch(samples, images), "shard", f"shard:{batch}", layout, context)
        assert [r.embedding[0] for r in rows] == [float((batch * 16 + i) % 256) for i in range(sizes)]
    assert len(allocated) == SLOTS == staging.allocations  # one buffer per slot, then none per batch
    assert len(set(stage.seen)) == SLOTS  # the stage was handed the ring's buffers in turn
    assert Fence.synchronized == 12 - SLOTS  # a slot is reused only after its fence


def test_a_larger_batch_grows_a_slot_once():
    staging = HostStaging(allocate=lambda shape: torch.empty(shape, dtype=torch.uint8), fence=None, slots=1)
    small = staging.stack([torch.zeros(4, 4, 3, dtype=torch.uint8)] * 2)
    assert tuple(small.shape) == (2, 4, 4, 3)
    staging.done()
    large = staging.stack([torch.ones(4, 4, 3, dtype=torch.uint8)] * 3)
    assert tuple(large.shape) == (3, 4, 4, 3) and int(large.sum()) == 3 * 48
    staging.done()
    again = staging.stack([torch.ones(4, 4, 3, dtype=torch.uint8)] * 3)
    assert staging.allocations == 2 and again.data_ptr() == large.data_ptr()
