"""The region any generator should redraw on a mannequin video, and the garment lock that keeps the rest (issue 29).

Wan2.2 Animate, VACE, AnimateDiff inpainting or the pack's zero-shot mode redraw what a mask says. For a mannequin
video that is the mannequin's bare body (head, neck, arms, legs) and room for the new person's head and hair, but
never the garment, whose real pixels M2H Composite puts back afterwards:

    R    = (body ∪ head ∖ garment), grown `grow_into_garment` px into the garment's edge (where skin meets cloth)
    lock = garment eroded by `lock_erode` px, minus R                                    (never overlaps R)

body = person ∖ garment (the parser calls a bare mannequin skin); head = an ellipse sized from the pose
(`identity.head_box_from_pose`: eyes/ears, or neck and shoulders for headless mannequins), widened `head_scale`
and raised `hair_margin` head widths for hair, joined to the neck. Steadiness: the garment and person masks get a
vote over `temporal_window` frames (`steady_masks`) and the head box a moving average over the same window, so a
still clip gives the same mask in every frame; what the frame itself shows bare (opened) is added back, so a vote
lagging behind motion never leaves mannequin skin un-redrawn. `mask_flicker` measures it (1 - IoU of neighbouring
frames; figures in `benchmarks/bench_compositing.py`'s output and docs/any-generator.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..identity import head_box_from_pose
from ..preprocess.masks import feather_mask, grow_mask, temporal_smooth_masks


@dataclass(frozen=True)
class RegenMaskSettings:
    """Sizes in pixels are at the frames' size (`for_height` scales the 512-px defaults)."""

    head_scale: float = 1.3  # head region width / the head width estimated from the pose
    hair_margin: float = 0.35  # the head region reaches this many head widths higher, for hair
    grow_into_garment: int = 4  # R reaches this far into the garment's edge
    lock_erode: int = 3  # the lock: garment eroded by this (as CompositeSettings.erode_px)
    feather: int = 0  # soft edge of R (Gaussian, px); 0 = hard
    temporal_window: int = 3  # masks voted (steady_masks) / head box averaged over this many frames

    def __post_init__(self) -> None:
        if self.head_scale <= 0 or self.hair_margin < 0:
            raise ValueError("head_scale must be > 0 and hair_margin >= 0")
        if min(self.grow_into_garment, self.lock_erode, self.feather) < 0 or self.temporal_window < 1:
            raise ValueError("grow_into_garment / lock_erode / feather must be >= 0, temporal_window >= 1")

    @classmethod
    def for_height(cls, height: int, **kw: Any) -> RegenMaskSettings:
        """The pixel defaults scaled from 512 px high frames to `height` (at least 1 px), as
        CompositeSettings.for_height; `kw` sets any field (the nodes pass their widgets' pixels as they are)."""
        s = lambda px: max(1, round(px * height / 512))
        return cls(**{"grow_into_garment": s(4), "lock_erode": s(3), **kw})


@dataclass
class RegenMasks:
    regen: np.ndarray  # (N, H, W) float32 in [0, 1]: what to redraw (soft when feathered)
    lock: np.ndarray  # (N, H, W) bool: where M2H Composite puts the source's garment back
    head: np.ndarray  # (N, H, W) bool: the head region from the pose (empty without poses)
    notes: list[str] = field(default_factory=list)


def _smooth_boxes(boxes: list[tuple[float, float, float] | None], window: int) -> list[np.ndarray | None]:
    """Centred moving average of per-frame (cx, cy, w) head boxes; a frame without one borrows its neighbours'."""
    r = window // 2
    out: list[np.ndarray | None] = []
    for i in range(len(boxes)):
        near = [b for b in boxes[max(0, i - r): i + r + 1] if b is not None]
        out.append(np.mean(np.asarray(near, np.float64), 0) if near else None)
    return out


def steady_masks(masks: np.ndarray, window: int, sigma: float = 1.0) -> np.ndarray:
    """(N, H, W) bool masks voted over `window` frames (temporal median), then a `sigma`-px Gaussian and > 0.5:
    the vote removes what flips in single frames, the blur the lone pixels a per-pixel vote leaves along an edge
    (a still clip whose parser flips 30% of its edge pixels: flicker 0.12 -> 0.017 at window 5, against 0.036 for
    the vote alone; `benchmarks/bench_compositing.py` measures the whole mask)."""
    voted = temporal_smooth_masks(masks.astype(np.float32), window, "median")
    return np.stack([cv2.GaussianBlur(v, (0, 0), sigma) > 0.5 for v in voted])


def head_region(box: np.ndarray, neck: np.ndarray | None, height: int, width: int, s: RegenMaskSettings
                ) -> np.ndarray:
    """(H, W) bool: an upright ellipse over the head box (cx, cy, head width), raised for hair, plus a band down
    to the neck keypoint."""
    cx, cy, w = (float(v) for v in box)
    a = 0.5 * s.head_scale * w
    b = 1.25 * a + 0.5 * s.hair_margin * w
    cy -= 0.5 * s.hair_margin * w
    m = np.zeros((height, width), np.uint8)
    cv2.ellipse(m, (round(cx * 16), round(cy * 16)), (max(1, round(a * 16)), max(1, round(b * 16))), 0, 0, 360, 1,
                -1, cv2.LINE_8, 4)
    if neck is not None:
        cv2.line(m, (round(neck[0] * 16), round(neck[1] * 16)), (round(cx * 16), round(cy * 16)), 1,
                 max(1, round(0.55 * w)), cv2.LINE_8, 4)
    return m > 0


def regenerate_mask(clothing: np.ndarray, person: np.ndarray, poses: Sequence[Any] | None = None,
                    settings: RegenMaskSettings | None = None) -> RegenMasks:
    """R, the lock and the head region from (N, H, W) garment and person (mannequin) masks and optional per-frame
    OpenPose-18 `PoseFrame`s (None where no person was found); see the module docstring."""
    s = settings or RegenMaskSettings()
    cloth, pers = np.asarray(clothing) > 0.5, np.asarray(person) > 0.5
    if cloth.ndim != 3 or cloth.shape != pers.shape:
        raise ValueError(f"the clothing {cloth.shape} and person {pers.shape} masks must both be (N, H, W)")
    n, h, w = cloth.shape
    raw_core = pers & ~cloth
    notes = []
    if s.temporal_window > 1:
        cloth, pers = steady_masks(cloth, s.temporal_window), steady_masks(pers, s.temporal_window)
    if not cloth.any():
        notes.append("the garment mask is empty in every frame: the whole mannequin is redrawn and nothing is locked")
    head = np.zeros((n, h, w), bool)
    if poses is None:
        notes.append("no keypoints: the head region is the mannequin's own head (connect DWPose keypoints to size it "
                     "for the new person's head and hair)")
    else:
        if len(poses) != n:
            raise ValueError(f"{len(poses)} keypoint frames for {n} mask frames: give one per frame")
        boxes = _smooth_boxes([head_box_from_pose(p, h, w) for p in poses], s.temporal_window)
        for i, (p, box) in enumerate(zip(poses, boxes)):
            if box is None:
                continue
            neck = None
            if p is not None and float(p.body[1, 2]) > 0.3:
                neck = np.asarray(p.body[1, :2], np.float64) * ([w / p.width, h / p.height] if p.width else 1.0)
            head[i] = head_region(box, neck, h, w, s)
        missing = sum(b is None for b in boxes)
        if missing:
            notes.append(f"no head position in {missing} of {n} frames (no face or shoulder keypoints)")
    core = (pers | head) & ~cloth
    if s.temporal_window > 1:  # what this frame shows bare, opened (no lone pixels), is redrawn even if the vote lags
        core |= grow_mask(grow_mask(raw_core, -1), 1)
    seed = grow_mask(grow_mask(core, -1), 1)  # opened: a lone pixel the vote left must not grow into a blob
    regen = core | (grow_mask(seed, s.grow_into_garment) & cloth)
    lock = grow_mask(cloth, -s.lock_erode) & ~regen
    soft = np.stack([feather_mask(m, s.feather) for m in regen]) if s.feather else regen.astype(np.float32)
    return RegenMasks(soft.astype(np.float32), lock, head, notes)


def mannequin_masks(frames: np.ndarray, parser, clothing: np.ndarray | None = None, person: np.ndarray | None = None,
                    groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(garment, person) (N, H, W) bool masks of uint8 mannequin frames: the user's own where given, else the human
    parser's (`groups`: the clothing groups, default all garments; holes in the garment filled)."""
    if clothing is not None and person is not None:
        return np.asarray(clothing) > 0.5, np.asarray(person) > 0.5
    if parser is None:
        raise ValueError("the regenerate mask needs a human-parsing model (models/human_parsing/) to find the "
                         "mannequin and its garment, or both a clothing and a person mask sequence")
    from ..preprocess.parsing import DEFAULT_CLOTHING

    res = parser.parse(frames, tuple(groups or DEFAULT_CLOTHING), fill_holes=True)
    return (res.clothing_mask if clothing is None else np.asarray(clothing) > 0.5,
            res.person_mask if person is None else np.asarray(person) > 0.5)


def preview(frames: np.ndarray, regen: np.ndarray, lock: np.ndarray) -> np.ndarray:
    """float32 (N, H, W, 3) frames in [0, 1] with R tinted red and the lock green (what the masks cover)."""
    f = np.asarray(frames, np.float32)
    r = np.asarray(regen, np.float32)[..., None] * 0.55
    g = np.asarray(lock, np.float32)[..., None] * 0.4
    red, green = np.array([1.0, 0.1, 0.1], np.float32), np.array([0.1, 0.9, 0.2], np.float32)
    return np.clip(f * (1 - r - g) + red * r + green * g, 0.0, 1.0).astype(np.float32)


def mask_flicker(masks: np.ndarray) -> float:
    """Mean over neighbouring frames of 1 - IoU (masks > 0.5): 0 for a mask that never changes; the fraction of the
    mask that changes from one frame to the next. Frames where both masks are empty count 0."""
    m = np.asarray(masks) > 0.5
    if len(m) < 2:
        return 0.0
    inter = (m[1:] & m[:-1]).sum((1, 2))
    union = (m[1:] | m[:-1]).sum((1, 2))
    return float(np.mean(np.where(union > 0, 1.0 - inter / np.maximum(union, 1), 0.0)))
