"""Preprocess takes the tensor fast path's batch as one tensor and gives what it gives for the
same images one by one (the batch is never split into images and stacked again)."""

from __future__ import annotations

import numpy as np
import torch

from curator_cli.stages.preprocess import Preprocess


def test_a_batch_tensor_and_its_images_preprocess_alike():
    squares = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    preprocess = Preprocess(crop_size=48, resize_size=56)
    one_by_one = preprocess(list(squares), "cpu")
    as_batch = preprocess(torch.from_numpy(squares), "cpu")
    assert as_batch.shape == (5, 3, 48, 48)
    assert torch.allclose(one_by_one, as_batch)
