"""The one set of frame converters (m2h_core/frames.py): numpy and torch give the same values, round trips are exact."""

from __future__ import annotations

import numpy as np
import torch

from m2h_core.frames import to_float, to_nchw, to_nhwc, to_uint8


def test_uint8_float_round_trip_numpy_and_torch() -> None:
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    f = to_float(u8)
    assert f.dtype == np.float32 and f.max() == 1.0 and f.min() == 0.0
    np.testing.assert_array_equal(to_float(torch.from_numpy(u8)), f)  # a uint8 tensor is divided by 255 too
    np.testing.assert_array_equal(to_uint8(f), u8)
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(f)), u8)
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.6 / 255, 1.4 / 255, 2.0])), [0, 1, 1, 255])  # clip, round


def test_layout_round_trip() -> None:
    x = torch.rand(2, 5, 7, 3)
    nchw = to_nchw(x.numpy())
    assert nchw.shape == (2, 3, 5, 7) and nchw.is_contiguous()
    assert torch.equal(to_nhwc(nchw), x)
