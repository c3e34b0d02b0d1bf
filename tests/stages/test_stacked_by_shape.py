"""``stacked_by_shape``: the one grouping of images by shape that Preprocess, the GPU decoder's
resize and the perceptual stage's thumbnails share."""

from __future__ import annotations

import numpy as np
import torch

from curator_cli.stages.preprocess import stacked_by_shape


def _image(value: int, shape=(4, 6, 3)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def test_images_of_one_shape_are_stacked_together_in_order_of_first_appearance():
    images = [_image(0), _image(1, (6, 4, 3)), None, _image(3), torch.from_numpy(_image(4, (6, 4, 3)))]
    groups = list(stacked_by_shape(images, "cpu"))
    assert [indices for indices, _ in groups] == [[0, 3], [1, 4]]  # None skipped
    for indices, pixels in groups:
        assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8
        assert pixels.shape == (len(indices), *images[indices[0]].shape)
        assert [int(p[0, 0, 0]) for p in pixels] == indices  # each image where its index says


def test_limit_splits_a_group_and_tensors_stay_where_they_are_without_a_device():
    images = [torch.full((3, 2, 2), i, dtype=torch.uint8) for i in range(5)]
    groups = list(stacked_by_shape(images, limit=2))
    assert [indices for indices, _ in groups] == [[0, 1], [2, 3], [4]]
    assert all(pixels.shape[1:] == (3, 2, 2) for _, pixels in groups)
