"""Masks are resized with nearest neighbour (a mask stays binary and keeps thin stripes where they are)."""

import numpy as np

from m2h_core.video_io import compute_center_crop, crop_resize_masks


def test_crop_resize_masks_is_nearest_neighbour():
    m = np.zeros((1, 10, 5), bool)
    m[0, ::2] = True  # every other row
    got = crop_resize_masks(m, compute_center_crop(10, 5, 14, 7))
    rows = np.floor(np.arange(14) * 10 / 14).astype(int)  # OpenCV nearest: output row i reads source row floor(i*10/14)
    assert got.dtype == bool and np.array_equal(got[0], np.broadcast_to((rows % 2 == 0)[:, None], (14, 7)))
