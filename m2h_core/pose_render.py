"""OpenPose-style pose data and rendering: the project's single pose renderer.

Keypoints are in pixels of the frame they were detected in (``PoseFrame.width`` x ``PoseFrame.height``);
a score of 0 means "missing". Rendering follows the look of the standard OpenPose / ControlNet renderer:
18 colour-coded limbs drawn as filled ellipses blended at 0.6 alpha onto black, joints as filled circles on
top, hands as HSV-coloured bones with blue joints, face landmarks as white dots.

Pure numpy + OpenCV; no global mutable state.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

__all__ = [
    "BODY_NAMES", "BODY_LIMBS", "BODY_COLORS", "HAND_EDGES", "HAND_EDGE_COLORS", "FOOT_NAMES", "FACE_CONTOURS",
    "PoseFrame", "draw_pose", "draw_face_landmarks", "draw_pose_sequence",
    "save_openpose_json", "load_openpose_json", "default_line_width",
]

BODY_NAMES: tuple[str, ...] = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
"""OpenPose-18 (COCO-18) keypoint order."""

FOOT_NAMES: tuple[str, ...] = ("l_big_toe", "l_small_toe", "l_heel", "r_big_toe", "r_small_toe", "r_heel")
"""Foot keypoint order (COCO-WholeBody 17:23, OpenPose BODY_25 19:25)."""

# The 17 limbs the standard renderer draws (0-based joint indices), in drawing/colour order.
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# 18 colours: limb i uses colour i, joint j uses colour j (RGB).
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# 21-point hand: wrist 0, then 4 joints per finger (thumb..pinky).
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    (0 if j == 0 else 4 * f + j, 4 * f + j + 1) for f in range(5) for j in range(4)
)
HAND_EDGE_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))  # type: ignore[misc]
    for i in range(len(HAND_EDGES))
)

# Foot bones: (ankle body index, foot index) and toe-to-toe, coloured like the shin they hang off.
_FOOT_BONES: tuple[tuple[str, int, int, int], ...] = (
    # (kind, a, b, colour index) kind "bf": body a -> foot b, "ff": foot a -> foot b
    ("bf", 13, 0, 11), ("bf", 13, 2, 11), ("ff", 0, 1, 11),
    ("bf", 10, 3, 8), ("bf", 10, 5, 8), ("ff", 3, 4, 8),
)

# iBUG 68-point groups: (start, end inclusive, closed).
FACE_CONTOURS: tuple[tuple[int, int, bool], ...] = (
    (0, 16, False), (17, 21, False), (22, 26, False), (27, 30, False), (31, 35, False),
    (36, 41, True), (42, 47, True), (48, 59, True), (60, 67, True),
)

# BODY_25 -> OpenPose-18 mapping (BODY_25 adds mid-hip at 8 and 6 foot points at 19..24).
_B25_TO_18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT


def _as_kp(a, n: int) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if a.ndim == 1:
        a = a.reshape(-1, 3)
    if a.shape[-1] == 2:
        a = np.concatenate([a, np.ones(a.shape[:-1] + (1,), np.float32)], -1)
    if a.shape[-2] != n or a.shape[-1] != 3:
        raise ValueError(f"expected (..., {n}, 3) keypoints, got {a.shape}")
    return a


@dataclass
class PoseFrame:
    """One person's keypoints in one frame, pixels of a ``width`` x ``height`` frame; score 0 = missing."""

    body: np.ndarray  # (18, 3) OpenPose-18 order
    hands: np.ndarray | None = None  # (2, 21, 3): right, left
    face: np.ndarray | None = None  # (68, 3)
    feet: np.ndarray | None = None  # (6, 3) FOOT_NAMES order
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        self.body = _as_kp(self.body, 18)
        if self.hands is not None:
            self.hands = _as_kp(self.hands, 21).reshape(2, 21, 3)
        if self.face is not None:
            self.face = _as_kp(self.face, 68)
        if self.feet is not None:
            self.feet = _as_kp(self.feet, 6)
        self.width, self.height = int(self.width), int(self.height)

    # -------------------------------------------------------------- OpenPose JSON
    def to_openpose_dict(self) -> dict:
        """An OpenPose JSON ``people`` entry (flat ``x, y, score`` lists, pixels; missing points are 0, 0, 0)."""

        def flat(a: np.ndarray | None) -> list[float]:
            if a is None:
                return []
            a = a.astype(np.float64).copy()
            a[a[:, 2] <= 0] = 0.0
            return [float(round(v, 3)) for v in a.reshape(-1)]

        d = {"pose_keypoints_2d": flat(self.body),
             "face_keypoints_2d": flat(self.face),
             "hand_left_keypoints_2d": flat(None if self.hands is None else self.hands[1]),
             "hand_right_keypoints_2d": flat(None if self.hands is None else self.hands[0])}
        if self.feet is not None:
            d["foot_keypoints_2d"] = flat(self.feet)
        return d

    @classmethod
    def from_openpose_dict(cls, d: dict, width: int, height: int) -> "PoseFrame":
        """Parse a ``people`` entry (OpenPose-18 or BODY_25 ``pose_keypoints_2d``; pixels).

        A whole frame dict (with ``people``) is accepted too: its first person is used (all-missing if none).
        """
        if "people" in d:
            width = int(d.get("canvas_width", width) or width)
            height = int(d.get("canvas_height", height) or height)
            d = d["people"][0] if d["people"] else {}

        def arr(key: str) -> np.ndarray | None:
            v = d.get(key)
            if not v:
                return None
            return np.asarray(v, np.float32).reshape(-1, 3)

        body = arr("pose_keypoints_2d")
        feet = arr("foot_keypoints_2d")
        if body is None:
            body = np.zeros((18, 3), np.float32)
        elif len(body) == 25:
            if feet is None:
                feet = body[19:25].copy()
            body = body[list(_B25_TO_18)]
        elif len(body) != 18:
            raise ValueError(f"pose_keypoints_2d has {len(body)} points; expected 18 or 25")
        hr, hl = arr("hand_right_keypoints_2d"), arr("hand_left_keypoints_2d")
        hands = None
        if hr is not None or hl is not None:
            z = np.zeros((21, 3), np.float32)
            hands = np.stack([hr if hr is not None else z, hl if hl is not None else z])
        return cls(body=body, hands=hands, face=arr("face_keypoints_2d"), feet=feet, width=width, height=height)

    # -------------------------------------------------------------- geometry
    def scaled(self, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> "PoseFrame":
        """``x' = x*sx + dx, y' = y*sy + dy`` on every keypoint (scores kept); width/height scale by sx/sy."""

        def tf(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            a = a.copy()
            a[..., 0] = a[..., 0] * sx + dx
            a[..., 1] = a[..., 1] * sy + dy
            return a

        return PoseFrame(body=tf(self.body), hands=tf(self.hands), face=tf(self.face), feet=tf(self.feet),
                         width=int(round(self.width * sx)), height=int(round(self.height * sy)))


# ------------------------------------------------------------------------------------------ drawing


def default_line_width(height: int, width: int) -> int:
    """Full limb thickness in pixels: 8 at 512 px (the standard stick width 4), scaled, at least 2."""
    return max(2, int(round(8 * max(height, width) / 512)))


def _fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts, np.float64) * _ONE).astype(np.int32)


def _blend_limb(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, half_width: float, color,
                alpha: float = 0.6) -> None:
    """Alpha-blend a filled ellipse spanning p0..p1 (half thickness ``half_width``) onto canvas in place."""
    h, w = canvas.shape[:2]
    x0_, y0_, x1_, y1_ = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
    length = math.hypot(x1_ - x0_, y1_ - y0_)
    ang = math.degrees(math.atan2(y1_ - y0_, x1_ - x0_))
    major = max(length / 2, half_width)
    cx, cy = (x0_ + x1_) / 2, (y0_ + y1_) / 2
    x0 = max(int(math.floor(cx - major)) - 1, 0)
    y0 = max(int(math.floor(cy - major)) - 1, 0)
    x1 = min(int(math.ceil(cx + major)) + 2, w)
    y1 = min(int(math.ceil(cy + major)) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return
    roi = canvas[y0:y1, x0:x1]
    layer = roi.copy()
    cv2.ellipse(layer, (int(round((cx - x0) * _ONE)), int(round((cy - y0) * _ONE))),
                (int(round(major * _ONE)), int(round(half_width * _ONE))), ang, 0, 360,
                tuple(int(c) for c in color), -1, cv2.LINE_8, _SHIFT)
    # outside the ellipse layer == roi, so the blend leaves those pixels unchanged
    cv2.addWeighted(roi, 1 - alpha, layer, alpha, 0, dst=roi)


def _circle(canvas: np.ndarray, p: np.ndarray, radius: float, color) -> None:
    cv2.circle(canvas, tuple(int(v) for v in _fixed(p)), int(round(radius * _ONE)),
               tuple(int(c) for c in color), -1, cv2.LINE_8, _SHIFT)


def _line(canvas: np.ndarray, p0: np.ndarray, p1: np.ndarray, thickness: int, color) -> None:
    cv2.line(canvas, tuple(int(v) for v in _fixed(p0)), tuple(int(v) for v in _fixed(p1)),
             tuple(int(c) for c in color), max(1, int(thickness)), cv2.LINE_8, _SHIFT)


def draw_pose(pose: PoseFrame, height: int, width: int, *, body: bool = True, hands: bool = False,
              face: bool = False, feet: bool = False, score_threshold: float = 0.3,
              line_width: int | None = None) -> np.ndarray:
    """Render ``pose`` as an OpenPose-style (H, W, 3) uint8 RGB image on black.

    ``line_width`` is the full limb thickness in pixels (default :func:`default_line_width`); joint radius,
    hand and face dot sizes scale with it. If the pose carries a frame size different from (height, width),
    its coordinates are rescaled to the canvas. Points with score <= ``score_threshold`` are not drawn.
    """
    height, width = int(height), int(width)
    canvas = np.zeros((height, width, 3), np.uint8)
    if pose is None:
        return canvas
    if pose.width and pose.height and (pose.width, pose.height) != (width, height):
        pose = pose.scaled(width / pose.width, height / pose.height)
    lw = float(line_width) if line_width else float(default_line_width(height, width))
    half = max(lw / 2, 0.75)
    radius = max(half, 1.0)

    def ok(p: np.ndarray) -> bool:
        return bool(p[2] > score_threshold) and bool(np.isfinite(p[:2]).all())

    if body:
        b = pose.body
        vis = ((b[:, 2] > score_threshold) & np.isfinite(b[:, :2]).all(1)).tolist()
        for i, (j0, j1) in enumerate(BODY_LIMBS):
            if vis[j0] and vis[j1]:
                _blend_limb(canvas, b[j0], b[j1], half, BODY_COLORS[i])
        if feet and pose.feet is not None:
            for kind, a, f, ci in _FOOT_BONES:
                pa = b[a] if kind == "bf" else pose.feet[a]
                pf = pose.feet[f]
                if ok(pa) and ok(pf):
                    _blend_limb(canvas, pa, pf, half, BODY_COLORS[ci])
        for j in range(18):
            if vis[j]:
                _circle(canvas, b[j, :2], radius, BODY_COLORS[j])
        if feet and pose.feet is not None:
            for f in range(6):
                if ok(pose.feet[f]):
                    _circle(canvas, pose.feet[f, :2], radius * 0.75, BODY_COLORS[11 if f < 3 else 8])

    if hands and pose.hands is not None:
        t = max(1, int(round(lw / 4)))
        for hand in pose.hands:
            for e, (a, c) in enumerate(HAND_EDGES):
                if ok(hand[a]) and ok(hand[c]):
                    _line(canvas, hand[a, :2], hand[c, :2], t, HAND_EDGE_COLORS[e])
            for k in range(21):
                if ok(hand[k]):
                    _circle(canvas, hand[k, :2], max(radius * 0.5, 0.5), (0, 0, 255))

    if face and pose.face is not None:
        for k in range(len(pose.face)):
            if ok(pose.face[k]):
                _circle(canvas, pose.face[k, :2], max(radius * 0.5, 0.5), (255, 255, 255))
    return canvas


def draw_face_landmarks(points: np.ndarray, height: int, width: int, *, radius: float | None = None,
                        connect: bool = False, color: tuple[int, int, int] = (255, 255, 255),
                        line_color: tuple[int, int, int] | None = None, score_threshold: float = 0.3,
                        canvas: np.ndarray | None = None) -> np.ndarray:
    """Face-landmark image p_id: white dots (optionally iBUG-68 contour lines) on black, (H, W, 3) uint8.

    ``points`` is (N, 2) or (N, 3) in pixels; with scores, points <= ``score_threshold`` are skipped.
    Lines are drawn only for 68-point sets. ``radius`` defaults to ~1/200 of the image size (>= 0.5 px).
    """
    pts = np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N, 2) or (N, 3), got {pts.shape}")
    vis = pts[:, 2] > score_threshold if pts.shape[1] == 3 else np.ones(len(pts), bool)
    vis &= np.isfinite(pts[:, :2]).all(1)
    out = np.zeros((int(height), int(width), 3), np.uint8) if canvas is None else canvas
    r = float(radius) if radius is not None else max(0.5, max(height, width) / 200)
    if connect and len(pts) == 68:
        lc = line_color if line_color is not None else tuple(int(c * 0.6) for c in color)
        t = max(1, int(round(r)))
        for s, e, closed in FACE_CONTOURS:
            idx = list(range(s, e + 1)) + ([s] if closed else [])
            for a, b in zip(idx[:-1], idx[1:]):
                if vis[a] and vis[b]:
                    _line(out, pts[a, :2], pts[b, :2], t, lc)
    for k in np.flatnonzero(vis):
        _circle(out, pts[k, :2], r, color)
    return out


def draw_pose_sequence(poses: Sequence[PoseFrame | None], height: int, width: int, **kw) -> np.ndarray:
    """(N, H, W, 3) uint8: :func:`draw_pose` per frame (``None`` frames are black)."""
    out = np.zeros((len(poses), int(height), int(width), 3), np.uint8)
    for i, p in enumerate(poses):
        if p is not None:
            out[i] = draw_pose(p, height, width, **kw)
    return out


# ------------------------------------------------------------------------------------------ files


def save_openpose_json(poses: Iterable[PoseFrame | None], path: str | Path) -> None:
    """Write a JSON list with one OpenPose-style frame dict per pose
    (``{"people": [...], "canvas_width", "canvas_height"}``, the ComfyUI POSE_KEYPOINT layout)."""
    frames = []
    for p in poses:
        if p is None:
            frames.append({"version": 1.3, "people": [], "canvas_width": 0, "canvas_height": 0})
        else:
            frames.append({"version": 1.3, "people": [p.to_openpose_dict()],
                           "canvas_width": p.width, "canvas_height": p.height})
    Path(path).write_text(json.dumps(frames))


def load_openpose_json(path: str | Path) -> list[PoseFrame]:
    """Read a file written by :func:`save_openpose_json` (or a single OpenPose frame dict).

    Frames with no people give an all-missing body."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        data = [data]
    out = []
    for fr in data:
        w, h = int(fr.get("canvas_width", 0) or 0), int(fr.get("canvas_height", 0) or 0)
        out.append(PoseFrame.from_openpose_dict(fr, w, h))
    return out
