"""The one set of frame converters: uint8 <-> float32 in [0, 1], channels-last <-> channels-first.

Files and the preprocessing models use uint8 (N, H, W, 3); ComfyUI's IMAGE is float (N, H, W, 3) in [0, 1]; the
models take float (N, 3, H, W). Every conversion between these goes through here, so rounding is the same
everywhere (the command line and the nodes give bit-identical inputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_float(frames: Any) -> np.ndarray:
    """uint8 (divided by 255) or float frames, numpy or torch -> float32 numpy, layout unchanged."""
    if isinstance(frames, torch.Tensor):
        t = frames.detach().cpu()
        frames = t.numpy() if t.dtype == torch.uint8 else t.float().numpy()
    x = np.asarray(frames)
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def to_uint8(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float frames in [0, 1] (numpy or torch) -> uint8 numpy (clipped, rounded), layout unchanged."""
    x = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    return (np.clip(x, 0, 1) * 255.0).round().astype(np.uint8)


def to_nchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W, C) channels-last (numpy or torch) -> (..., C, H, W) contiguous torch, dtype unchanged."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    return x.movedim(-1, -3).contiguous()


def to_nhwc(frames: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) channels-first -> (..., H, W, C) contiguous, dtype unchanged (ComfyUI's IMAGE layout)."""
    return frames.movedim(-3, -1).contiguous()
