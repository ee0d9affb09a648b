"""Temporal clean-up of pose sequences: fill frames where detection failed, then One-Euro smoothing.

Keypoint arrays are (N, K, 3) = x, y, score per frame; a score of 0 means missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..pose_render import PoseFrame

FRAME_DETECTED = "detected"
FRAME_INTERPOLATED = "interpolated"
FRAME_HELD = "held"
FRAME_MISSING = "missing"

_PARTS = (("body", (18, 3)), ("feet", (6, 3)), ("face", (68, 3)), ("hands", (2, 21, 3)))


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class OneEuroFilter:
    """One-Euro filter (Casiez et al. 2012) applied element-wise to arrays of a fixed shape.

    ``min_cutoff`` (Hz) sets smoothing at rest; ``beta`` raises the cutoff with speed (less lag when moving).
    """

    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0
    x_prev: np.ndarray | None = None
    dx_prev: np.ndarray | None = None

    def reset(self) -> None:
        self.x_prev = self.dx_prev = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x_prev is None:
            self.x_prev, self.dx_prev = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self.x_prev) / dt
        a_d = _alpha(self.d_cutoff, dt)
        dx_hat = a_d * dx + (1 - a_d) * self.dx_prev
        cutoff = self.min_cutoff + self.beta * np.abs(dx_hat)
        tau = 1.0 / (2 * math.pi * cutoff)
        a = 1.0 / (1.0 + tau / dt)
        x_hat = a * x + (1 - a) * self.x_prev
        self.x_prev, self.dx_prev = x_hat, dx_hat
        return x_hat


def one_euro_smooth(seq: np.ndarray, fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.05,
                    d_cutoff: float = 1.0, score_threshold: float = 0.0) -> np.ndarray:
    """Smooth x, y of a (N, K, 3) keypoint sequence; each keypoint's filter restarts after it goes missing
    (score <= ``score_threshold``). Scores are untouched."""
    seq = np.asarray(seq, np.float32)
    out = seq.copy()
    n, k = seq.shape[:2]
    dt = 1.0 / float(fps)
    filters = [OneEuroFilter(min_cutoff, beta, d_cutoff) for _ in range(k)]
    for t in range(n):
        for j in range(k):
            if seq[t, j, 2] <= score_threshold:
                filters[j].reset()
                continue
            out[t, j, :2] = filters[j](seq[t, j, :2], dt)
    return out


def fill_missing(seq: np.ndarray, present: np.ndarray, mode: str = "interpolate",
                 max_gap: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Fill whole frames where ``present`` is False.

    ``interpolate``: linear between the nearest detected frames on both sides (per keypoint: where a keypoint
    is missing on one side it is held from the other); frames before the first / after the last detection are
    held. ``hold``: copy the previous detection (the next one at the start). ``none``: leave them.
    Gaps longer than ``max_gap`` stay missing. Returns the filled array and a per-frame status.
    """
    seq = np.asarray(seq, np.float32).copy()
    present = np.asarray(present, bool)
    n = len(seq)
    status = [FRAME_DETECTED if p else FRAME_MISSING for p in present]
    idx = np.flatnonzero(present)
    if mode == "none" or len(idx) == 0:
        return seq, status
    if mode not in ("interpolate", "hold"):
        raise ValueError(f"fill mode must be 'interpolate', 'hold' or 'none', got {mode!r}")
    for t in range(n):
        if present[t]:
            continue
        prev = idx[idx < t]
        nxt = idx[idx > t]
        a = int(prev[-1]) if len(prev) else None
        b = int(nxt[0]) if len(nxt) else None
        gap = (b if b is not None else n) - (a if a is not None else -1) - 1
        if max_gap is not None and gap > max_gap:
            continue
        if mode == "interpolate" and a is not None and b is not None:
            w = (t - a) / (b - a)
            pa, pb = seq[a], seq[b]
            both = (pa[:, 2] > 0) & (pb[:, 2] > 0)
            val = np.where((pa[:, 2] > 0)[:, None], pa, pb).copy()
            val[both, :2] = (1 - w) * pa[both, :2] + w * pb[both, :2]
            val[both, 2] = np.minimum(pa[both, 2], pb[both, 2])
            seq[t] = val
            status[t] = FRAME_INTERPOLATED
        else:
            src = a if a is not None else b
            seq[t] = seq[src]
            status[t] = FRAME_HELD
    return seq, status


def _part(p: PoseFrame, name: str, shape) -> np.ndarray:
    v = getattr(p, name, None)
    return np.zeros(shape, np.float32) if v is None else np.asarray(v, np.float32).reshape(shape)


def poses_to_array(poses: Sequence[PoseFrame | None]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Stack PoseFrames into (N, K, 3); returns (array, present mask, parts included). Missing parts are zeros."""
    parts = tuple(name for name, _ in _PARTS if any(p is not None and getattr(p, name, None) is not None
                                                    for p in poses))
    k = sum(int(np.prod(s[:-1])) for name, s in _PARTS if name in parts)
    arr = np.zeros((len(poses), k, 3), np.float32)
    present = np.array([p is not None for p in poses], bool)
    for i, p in enumerate(poses):
        if p is None:
            continue
        arr[i] = np.concatenate([_part(p, name, s).reshape(-1, 3) for name, s in _PARTS if name in parts])
    return arr, present, parts


def array_to_poses(arr: np.ndarray, parts: Sequence[str], width: int, height: int,
                   present: np.ndarray | None = None) -> list[PoseFrame | None]:
    """Inverse of :func:`poses_to_array` (frames where ``present`` is False become None)."""
    out: list[PoseFrame | None] = []
    for i in range(len(arr)):
        if present is not None and not present[i]:
            out.append(None)
            continue
        kw, pos = {}, 0
        for name, s in _PARTS:
            if name not in parts:
                continue
            cnt = int(np.prod(s[:-1]))
            kw[name] = arr[i, pos:pos + cnt].reshape(s).copy()
            pos += cnt
        out.append(PoseFrame(width=int(width), height=int(height), **kw))
    return out


@dataclass
class SmoothedPoses:
    """Result of :func:`smooth_pose_sequence`: poses (None where nothing could be filled) and per-frame status."""

    poses: list[PoseFrame | None]
    status: list[str]

    @property
    def filled_frames(self) -> list[int]:
        """Indices of frames that were interpolated or held."""
        return [i for i, s in enumerate(self.status) if s in (FRAME_INTERPOLATED, FRAME_HELD)]


def smooth_pose_sequence(poses: Sequence[PoseFrame | None], *, fps: float = 30.0, fill: str = "interpolate",
                         max_gap: int | None = None, smooth: bool = True, min_cutoff: float = 1.0,
                         beta: float = 0.05, d_cutoff: float = 1.0) -> SmoothedPoses:
    """Fill failed frames (``fill`` = interpolate / hold / none) and One-Euro-smooth every keypoint."""
    poses = list(poses)
    if not poses:
        return SmoothedPoses([], [])
    ref = next((p for p in poses if p is not None), None)
    if ref is None:
        return SmoothedPoses([None] * len(poses), [FRAME_MISSING] * len(poses))
    arr, present, parts = poses_to_array(poses)
    arr, status = fill_missing(arr, present, fill, max_gap)
    if smooth:
        arr = one_euro_smooth(arr, fps, min_cutoff, beta, d_cutoff)
    keep = np.array([s != FRAME_MISSING for s in status])
    return SmoothedPoses(array_to_poses(arr, parts, ref.width, ref.height, keep), status)
