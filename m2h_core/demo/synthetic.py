"""Seeded, file-free synthetic mannequin/human clips for the CPU demo and tests.

A stylised articulated figure (18-joint skeleton in 3D, orthographic camera looking slightly down) moves like a
fashion model ('sway', 'turn', 'walk') wearing an outfit (top + bottom, or a dress). Each clip is rendered
twice with identical clothing, motion and background: once as a person (skin tone, hair, eyes, face shape) and
once as a mannequin (uniform grey skin, bald featureless head). Ground truth comes with it: clothing / face /
person masks, OpenPose-18 keypoints and pose images, an identity image with its 68-point face-landmark image
p_id, and a stand-in 512-d "ArcFace" embedding that is a deterministic function of the identity.

Everything is derived from the seed (no global state); a 16-frame 128x64 clip takes a few tens of ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from ..pose_render import PoseFrame, draw_face_landmarks, draw_pose
from ..preprocess.parsing import ATR, HumanParser

__all__ = [
    "MOTIONS", "TOP_KINDS", "BOTTOM_KINDS", "PATTERNS", "HAIR_STYLES", "FACE_SHAPES",
    "Identity", "Garment", "Outfit", "SyntheticClip",
    "identity_embedding", "generate_clip", "generate_dataset", "ExactParser",
]

RGB = tuple[int, int, int]

MOTIONS = ("sway", "turn", "walk")
TOP_KINDS = ("t-shirt", "long-sleeve", "dress")
BOTTOM_KINDS = ("trousers", "shorts")
PATTERNS = ("plain", "stripes", "checks", "dots")
HAIR_STYLES = ("short", "bob", "long", "bun")
FACE_SHAPES = ("oval", "round", "long", "square")

_SKIN_TONES: tuple[RGB, ...] = ((255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 101),
                                (161, 102, 70), (120, 75, 50), (88, 56, 38))
_HAIR_COLORS: tuple[RGB, ...] = ((22, 18, 16), (60, 40, 28), (105, 68, 38), (160, 110, 62), (226, 192, 124),
                                 (150, 58, 30), (172, 172, 170))
_EYE_COLORS: tuple[RGB, ...] = ((70, 40, 22), (28, 20, 16), (60, 110, 185), (60, 130, 70), (120, 90, 40),
                                (110, 125, 140))
_GARMENT_COLORS: tuple[RGB, ...] = ((30, 40, 95), (32, 32, 36), (228, 222, 205), (190, 32, 42), (120, 25, 48),
                                    (110, 118, 52), (212, 165, 40), (30, 120, 128), (120, 170, 222),
                                    (232, 150, 172), (160, 140, 205), (118, 120, 126), (70, 100, 152),
                                    (190, 170, 120), (20, 132, 82), (232, 120, 40), (122, 80, 50))
_MANNEQUIN_COLORS: tuple[RGB, ...] = ((222, 222, 218), (198, 198, 200), (172, 174, 178))

# face shape -> (half width a, half height b, superellipse exponent), in figure heights
_FACE_GEOM = {"oval": (0.050, 0.069, 2.0), "round": (0.056, 0.066, 2.0),
              "long": (0.046, 0.075, 2.0), "square": (0.053, 0.068, 3.2)}
_MANNEQUIN_HEAD = (0.049, 0.070, 2.0)

# label categories
_BG, _SKIN, _HEAD, _HAIR, _TOP, _BOTTOM = range(6)
_GARMENT_CATS = (_TOP, _BOTTOM)
_OBLIQUE = 0.22  # camera looks slightly down: points nearer the camera appear lower


def _jitter(rng: np.random.Generator, c: RGB, amount: int) -> RGB:
    return tuple(int(v) for v in np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255))  # type: ignore[return-value]


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# ------------------------------------------------------------------------------------------ attributes


@dataclass(frozen=True)
class Identity:
    """A person's look: skin tone, hair colour and style, eye colour, face shape (RGB tuples)."""

    skin: RGB
    hair_color: RGB
    hair_style: str
    eye_color: RGB
    face_shape: str

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Identity":
        return cls(skin=_jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 8),
                   hair_color=_jitter(rng, _HAIR_COLORS[rng.integers(len(_HAIR_COLORS))], 10),
                   hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
                   eye_color=_jitter(rng, _EYE_COLORS[rng.integers(len(_EYE_COLORS))], 8),
                   face_shape=FACE_SHAPES[rng.integers(len(FACE_SHAPES))])

    def features(self) -> np.ndarray:
        """Attribute vector (colours scaled to [0, 3], one-hot style and shape scaled by 1.5)."""
        col = np.concatenate([self.skin, self.hair_color, self.eye_color]).astype(np.float64) / 255 * 3
        style = np.eye(len(HAIR_STYLES))[HAIR_STYLES.index(self.hair_style)] * 1.5
        shape = np.eye(len(FACE_SHAPES))[FACE_SHAPES.index(self.face_shape)] * 1.5
        return np.concatenate([col, style, shape])


def identity_embedding(identity: Identity, dim: int = 512, seed: int = 20240611, linear_dims: int = 128
                       ) -> np.ndarray:
    """Stand-in ArcFace embedding: random Fourier features of :meth:`Identity.features` with a fixed seeded
    projection, L2-normalised. Same identity -> same vector; cosine ~ exp(-|df|^2 / 2) between identities.

    linear_dims > 0: that many of the `dim` entries are instead a fixed random *linear* projection of the centred
    attributes (skin / hair / eye colour, style, shape), as real face-recognition embeddings also carry such
    attributes linearly; different people still have cosine ~0 on average."""
    f = identity.features()
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((dim, f.size))
    b = rng.uniform(0, 2 * np.pi, dim)
    e = np.cos(w @ f + b)
    if linear_dims > 0:
        centre = np.concatenate([np.full(9, 1.5), np.full(len(HAIR_STYLES), 1.5 / len(HAIR_STYLES)),
                                 np.full(len(FACE_SHAPES), 1.5 / len(FACE_SHAPES))])
        a = rng.standard_normal((linear_dims, f.size)) / np.sqrt(f.size)
        rff = e[: dim - linear_dims] / np.sqrt(dim - linear_dims)
        lin = a @ (f - centre) / np.sqrt(linear_dims)
        e = np.concatenate([rff, lin])
    return (e / np.linalg.norm(e)).astype(np.float32)


@dataclass(frozen=True)
class Garment:
    """One garment: kind, base/secondary colour, pattern and its period (figure heights)."""

    kind: str
    color: RGB
    color2: RGB
    pattern: str = "plain"
    period: float = 0.04
    vertical: bool = False  # stripe direction
    sleeves: bool = True  # dresses only: short sleeves or sleeveless
    length: float = 0.22  # dresses only: hem below the hips (figure heights)

    @classmethod
    def random(cls, rng: np.random.Generator, kind: str) -> "Garment":
        color = _jitter(rng, _GARMENT_COLORS[rng.integers(len(_GARMENT_COLORS))], 12)
        cands = [c for c in _GARMENT_COLORS + ((245, 245, 242), (20, 20, 24)) if abs(_luma(c) - _luma(color)) > 70]
        color2 = _jitter(rng, cands[rng.integers(len(cands))], 8)
        pattern = PATTERNS[rng.choice(4, p=[0.34, 0.26, 0.2, 0.2])]
        period = {"plain": 0.04, "stripes": rng.uniform(0.024, 0.05), "checks": rng.uniform(0.035, 0.07),
                  "dots": rng.uniform(0.035, 0.06)}[pattern]
        return cls(kind=kind, color=color, color2=color2, pattern=pattern, period=float(period),
                   vertical=bool(rng.random() < 0.3), sleeves=bool(rng.random() < 0.6),
                   length=float(rng.uniform(0.16, 0.32)))


@dataclass(frozen=True)
class Outfit:
    """A top ('t-shirt' / 'long-sleeve') with a bottom ('trousers' / 'shorts'), or a 'dress' alone."""

    top: Garment
    bottom: Garment | None = None

    def __post_init__(self) -> None:
        if self.top.kind not in TOP_KINDS:
            raise ValueError(f"top kind {self.top.kind!r} not in {TOP_KINDS}")
        if self.top.kind == "dress" and self.bottom is not None:
            raise ValueError("a dress has no bottom")
        if self.top.kind != "dress" and (self.bottom is None or self.bottom.kind not in BOTTOM_KINDS):
            raise ValueError(f"a {self.top.kind} needs a bottom in {BOTTOM_KINDS}")

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Outfit":
        kind = TOP_KINDS[rng.choice(3, p=[0.36, 0.34, 0.30])]
        top = Garment.random(rng, kind)
        if kind == "dress":
            return cls(top)
        bottom = Garment.random(rng, BOTTOM_KINDS[rng.choice(2, p=[0.65, 0.35])])
        return cls(top, bottom)


@dataclass
class SyntheticClip:
    """One synthetic clip with its ground truth (see module docstring)."""

    human: np.ndarray  # (N, H, W, 3) uint8 RGB
    mannequin: np.ndarray  # (N, H, W, 3) uint8, same clothing + motion + background
    clothing_mask: np.ndarray  # (N, H, W) bool, garment pixels (identical in both renderings)
    face_mask: np.ndarray  # (N, H, W) bool, visible face of the human (empty when facing away)
    person_mask: np.ndarray  # (N, H, W) bool, human silhouette (incl. hair)
    mannequin_mask: np.ndarray  # (N, H, W) bool, mannequin silhouette
    poses: list[PoseFrame]  # body (+ feet) keypoints per frame, no face: what a mannequin gives
    pose_images: np.ndarray  # (N, H, W, 3) uint8, body-only draw_pose
    identity_image: np.ndarray  # (H, W, 3) uint8, frontal human frame, pose/time not in the clip
    identity_landmarks: np.ndarray  # (H, W, 3) uint8 p_id: 68 face landmarks of the identity image
    identity_embedding: np.ndarray  # (512,) float32 unit norm
    identity_pose: PoseFrame  # keypoints of the identity image, with 68 face landmarks
    identity: Identity
    outfit: Outfit
    motion: str
    fps: float
    yaw: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (N,) body yaw, 0 = facing camera
    background: RGB = (240, 240, 240)
    mannequin_color: RGB = (200, 200, 200)
    seed: int = 0


# ------------------------------------------------------------------------------------------ face landmarks


def _unit_landmarks() -> np.ndarray:
    """68 iBUG landmarks on the unit head ellipsoid (x right-of-image at yaw 0, y down, z to camera)."""
    pts: list[tuple[float, float]] = []
    for s in np.linspace(0, np.pi, 17):  # jaw: subject's right ear -> chin -> left ear
        pts.append((-0.92 * math.cos(s), 0.05 + 0.88 * math.sin(s)))
    for x in np.linspace(-0.66, -0.16, 5):  # right brow, outer -> inner
        pts.append((x, -0.27 - 0.07 * math.sin((x + 0.66) / 0.5 * math.pi)))
    for x in np.linspace(0.16, 0.66, 5):  # left brow, inner -> outer
        pts.append((x, -0.27 - 0.07 * math.sin((x - 0.16) / 0.5 * math.pi)))
    for y in np.linspace(-0.14, 0.2, 4):  # nose bridge
        pts.append((0.0, y))
    for x in np.linspace(-0.16, 0.16, 5):  # nose bottom
        pts.append((x, 0.28 + 0.03 * (1 - abs(x) / 0.16)))

    def eye(cx: float, flip: float) -> list[tuple[float, float]]:
        dx, h = 0.12, 0.06
        o = [(-1.0, 0.0), (-0.4, -1.0), (0.4, -1.0), (1.0, 0.0), (0.4, 1.0), (-0.4, 1.0)]
        return [(cx + flip * ox * dx, -0.04 + oy * h) for ox, oy in o]

    pts += eye(-0.36, 1.0)  # right eye: 36 outer (image left) ... 39 inner
    pts += eye(0.36, 1.0)  # left eye: 42 inner ... 45 outer
    mouth_outer = [(-0.26, 0.52), (-0.17, 0.47), (-0.07, 0.45), (0.0, 0.46), (0.07, 0.45), (0.17, 0.47),
                   (0.26, 0.52), (0.17, 0.58), (0.08, 0.61), (0.0, 0.615), (-0.08, 0.61), (-0.17, 0.58)]
    mouth_inner = [(-0.2, 0.52), (-0.08, 0.5), (0.0, 0.505), (0.08, 0.5), (0.2, 0.52), (0.08, 0.54),
                   (0.0, 0.545), (-0.08, 0.54)]
    pts += mouth_outer + mouth_inner
    xy = np.asarray(pts, np.float64)
    z = np.sqrt(np.clip(1 - (xy ** 2).sum(1), 0.0, None))
    z[27:36] += 0.12  # nose sticks out
    return np.concatenate([xy, z[:, None]], 1)


# ------------------------------------------------------------------------------------------ geometry


def _rot_y(p: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate (..., 3) points about the vertical axis: x' = x cos + z sin, z' = -x sin + z cos."""
    c, s = math.cos(yaw), math.sin(yaw)
    out = p.copy()
    out[..., 0] = p[..., 0] * c + p[..., 2] * s
    out[..., 2] = -p[..., 0] * s + p[..., 2] * c
    return out


@dataclass
class _State:
    """Per-frame figure state."""

    root_x: float  # pixels
    foot_y: float  # pixels (sole line)
    fig: float  # figure height, pixels
    yaw: float
    roll: float = 0.0
    head_yaw: float = 0.0
    arms: tuple[tuple[float, float, float], ...] = ((0.12, 0.0, 0.15), (0.12, 0.0, 0.15))  # (abduct, flex, elbow)
    legs: tuple[tuple[float, float, float], ...] = ((0.03, 0.0, 0.0), (0.03, 0.0, 0.0))  # (abduct, hip flex, knee)
    bob: float = 0.0  # vertical root offset, figure heights


@dataclass
class _Body:
    """Per-clip body proportions (shared by human and mannequin)."""

    shoulder: float = 1.0
    hip: float = 1.0


class _Camera:
    """Body-local (figure heights, root at mid-hip, y down, z to camera at yaw 0) -> pixels."""

    def __init__(self, st: _State):
        self.st = st
        self.F = st.fig
        self.rx = st.root_x
        self.ry = st.foot_y - 0.485 * st.fig + st.bob * st.fig  # toes of a straight standing leg at foot_y

    def cam(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, np.float64)
        c, s = math.cos(self.st.roll), math.sin(self.st.roll)
        q = p.copy()
        q[..., 0] = p[..., 0] * c - p[..., 1] * s
        q[..., 1] = p[..., 0] * s + p[..., 1] * c
        return _rot_y(q, self.st.yaw)

    def px(self, p: np.ndarray) -> np.ndarray:
        """(..., 3) local -> (..., 2) pixels."""
        c = self.cam(p)
        return np.stack([self.rx + self.F * c[..., 0], self.ry + self.F * (c[..., 1] + _OBLIQUE * c[..., 2])], -1)


def _skeleton(st: _State, body: _Body) -> dict[str, np.ndarray]:
    """3D body-local joints (figure heights)."""
    j: dict[str, np.ndarray] = {"root": np.zeros(3)}
    j["neck"] = np.array([0.0, -0.325, 0.0])
    j["head"] = np.array([0.0, -0.42, 0.004])
    for side, name, (ab, fl, el) in ((-1, "r", st.arms[0]), (1, "l", st.arms[1])):
        sh = np.array([side * 0.105 * body.shoulder, -0.31, 0.0])
        d1 = np.array([side * math.sin(ab), math.cos(ab) * math.cos(fl), math.cos(ab) * math.sin(fl)])
        ab2, fl2 = ab * 0.55, fl + el
        d2 = np.array([side * math.sin(ab2), math.cos(ab2) * math.cos(fl2), math.cos(ab2) * math.sin(fl2)])
        j[f"{name}_sho"] = sh
        j[f"{name}_elb"] = sh + 0.16 * d1
        j[f"{name}_wri"] = j[f"{name}_elb"] + 0.145 * d2
        j[f"{name}_hand"] = j[f"{name}_wri"] + 0.035 * d2
    for side, name, (ab, fl, kn) in ((-1, "r", st.legs[0]), (1, "l", st.legs[1])):
        hp = np.array([side * 0.058 * body.hip, 0.0, 0.0])
        d1 = np.array([side * math.sin(ab), math.cos(fl), math.sin(fl)])
        d1 /= np.linalg.norm(d1)
        d2 = np.array([side * math.sin(ab) * 0.4, math.cos(fl - kn), math.sin(fl - kn)])
        d2 /= np.linalg.norm(d2)
        j[f"{name}_hip"] = hp
        j[f"{name}_knee"] = hp + 0.22 * d1
        j[f"{name}_ank"] = j[f"{name}_knee"] + 0.215 * d2
        a = j[f"{name}_ank"]
        j[f"{name}_toe"] = a + np.array([side * 0.008, 0.03, 0.06])
        j[f"{name}_bigtoe"] = a + np.array([-side * 0.006, 0.032, 0.068])
        j[f"{name}_smalltoe"] = a + np.array([side * 0.022, 0.032, 0.05])
        j[f"{name}_heel"] = a + np.array([0.0, 0.032, -0.02])
    return j


# ------------------------------------------------------------------------------------------ parts


_SH = 4  # sub-pixel bits for OpenCV rasterisation
_ONE = 1 << _SH


@dataclass
class _Part:
    cat: int
    shapes: list  # ("poly", (K, 2) px) | ("circle", center px, radius px)
    human: bool = True
    mannequin: bool = True
    shade: float = 1.0
    head: dict | None = None  # head shader parameters for _HEAD parts

    def __post_init__(self) -> None:
        fixed = []
        for sh in self.shapes:
            if sh[0] == "poly":
                fixed.append((np.round(np.asarray(sh[1]) * _ONE).astype(np.int32), 0))
            else:
                fixed.append(((int(round(sh[1][0] * _ONE)), int(round(sh[1][1] * _ONE))),
                              max(int(round(sh[2] * _ONE)), _ONE // 2)))
        self.fixed = fixed

    def draw(self, lab: np.ndarray, value: int) -> None:
        for geom, r in self.fixed:
            if r == 0:
                cv2.fillConvexPoly(lab, geom, value, cv2.LINE_8, _SH)
            else:
                cv2.circle(lab, geom, r, value, -1, cv2.LINE_8, _SH)


def _capsule(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> list:
    x0, y0, x1, y1 = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
    n = math.hypot(x1 - x0, y1 - y0)
    nx, ny = ((y0 - y1) / n, (x1 - x0) / n) if n > 1e-6 else (1.0, 0.0)
    quad = np.array([[x0 + nx * r0, y0 + ny * r0], [x1 + nx * r1, y1 + ny * r1],
                     [x1 - nx * r1, y1 - ny * r1], [x0 - nx * r0, y0 - ny * r0]])
    return [("poly", quad), ("circle", (x0, y0), r0), ("circle", (x1, y1), r1)]


def _hull(cam: _Camera, levels: Sequence[tuple[np.ndarray, float, float]]) -> list:
    """Convex hull of width/depth boxes around level centres: [(centre (3,), half width, half depth)]."""
    pts = []
    for c, hw, hd in levels:
        for sx in (-1, 1):
            for sz in (-1, 1):
                pts.append(c + np.array([sx * hw, 0.0, sz * hd]))
    p2 = cam.px(np.asarray(pts))
    hull = cv2.convexHull(p2.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    return [("poly", hull)]


def _superellipse(cx: float, cy: float, a: float, b: float, n: float, k: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / n
    return np.stack([cx + a * np.sign(c) * np.abs(c) ** e, cy + b * np.sign(s) * np.abs(s) ** e], 1)


def _build_parts(st: _State, body: _Body, identity: Identity, outfit: Outfit,
                 joints: dict[str, np.ndarray], cam: _Camera) -> tuple[list[_Part], dict]:
    """All drawable parts in painter's order, plus head geometry for keypoints/landmarks."""
    F = cam.F
    names = list(joints)
    arr = np.stack([joints[k] for k in names])
    P = dict(zip(names, cam.px(arr)))
    Z = dict(zip(names, cam.cam(arr)[:, 2]))
    top, bottom = outfit.top, outfit.bottom
    far = lambda name: 0.88 if Z[name] < -0.03 else 1.0  # noqa: E731

    # ---- core: legs (far leg first), neck, bottom, top, skirt
    core: list[_Part] = []
    legs = sorted("rl", key=lambda s: Z[f"{s}_knee"] + Z[f"{s}_ank"])
    for s in legs:
        sh = far(f"{s}_knee")
        hp, kn, an, toe, heel = P[f"{s}_hip"], P[f"{s}_knee"], P[f"{s}_ank"], P[f"{s}_toe"], P[f"{s}_heel"]
        core.append(_Part(_SKIN, _capsule(hp, kn, 0.04 * F, 0.03 * F) + _capsule(kn, an, 0.03 * F, 0.021 * F)
                          + _capsule(an, toe, 0.019 * F, 0.017 * F) + _capsule(heel, toe, 0.016 * F, 0.016 * F),
                          shade=sh))
        if bottom is not None and bottom.kind == "trousers":
            end = an + 0.06 * (kn - an)
            core.append(_Part(_BOTTOM, _capsule(hp, kn, 0.05 * F, 0.038 * F) + _capsule(kn, end, 0.038 * F,
                                                                                       0.033 * F), shade=sh))
        elif bottom is not None and bottom.kind == "shorts":
            core.append(_Part(_BOTTOM, _capsule(hp, hp + 0.45 * (kn - hp), 0.052 * F, 0.047 * F), shade=sh))
    neck = joints["neck"]
    core.append(_Part(_SKIN, _capsule(P["neck"] + [0, 0.01 * F], cam.px(joints["head"] + [0, 0.03, 0]),
                                      0.022 * F, 0.022 * F)))
    hipz = np.array([0.0, 0.0, 0.0])
    if bottom is not None:
        core.append(_Part(_BOTTOM, _hull(cam, [(np.array([0, -0.1, 0.0]), 0.085 * body.hip, 0.055),
                                                (hipz, 0.1 * body.hip, 0.062),
                                                (np.array([0, 0.06, 0.0]), 0.094 * body.hip, 0.058)])))
    sw, hw = body.shoulder, body.hip
    upper = [(neck + [0, -0.008, 0], 0.112 * sw, 0.05), (np.array([0, -0.24, 0.0]), 0.1 * sw, 0.064),
             (np.array([0, -0.12, 0.0]), 0.08 * (sw + hw) / 2, 0.056)]
    torso = _hull(cam, upper)
    if top.kind == "dress":
        torso += _hull(cam, [(np.array([0, -0.12, 0.0]), 0.08 * (sw + hw) / 2, 0.056),
                             (np.array([0, -0.02, 0.0]), 0.095 * hw, 0.064)])
    else:
        torso += _hull(cam, [(np.array([0, -0.12, 0.0]), 0.08 * (sw + hw) / 2, 0.056),
                             (np.array([0, 0.045, 0.0]), 0.105 * hw, 0.066)])
    core.append(_Part(_TOP, torso))
    if top.kind == "dress":
        knees = (joints["r_knee"] + joints["l_knee"]) / 2
        hem_y = top.length
        frac = min(hem_y / max(knees[1], 1e-3), 1.3)
        hem_c = np.array([knees[0] * frac, hem_y, knees[2] * frac * 0.8])
        spread = 0.15 + 0.5 * abs(float(joints["r_ank"][0] - joints["l_ank"][0])) * (hem_y / 0.43)
        core.append(_Part(_TOP, _hull(cam, [(np.array([0, -0.1, 0.0]), 0.084 * hw, 0.058),
                                             (np.array([0, 0.02, 0.0]), 0.105 * hw, 0.07),
                                             (hem_c, spread * hw, 0.11)])))

    # ---- arms
    arm_groups: list[tuple[float, list[_Part]]] = []
    for s in "rl":
        sh_, el, wr, hd = P[f"{s}_sho"], P[f"{s}_elb"], P[f"{s}_wri"], P[f"{s}_hand"]
        shade = far(f"{s}_elb")
        parts = [_Part(_SKIN, _capsule(sh_, el, 0.027 * F, 0.022 * F) + _capsule(el, wr, 0.021 * F, 0.017 * F)
                       + [("circle", hd, 0.022 * F)], shade=shade)]
        if top.kind == "long-sleeve":
            parts.append(_Part(_TOP, _capsule(sh_, el, 0.037 * F, 0.031 * F) +
                               _capsule(el, wr + 0.1 * (el - wr), 0.031 * F, 0.026 * F), shade=shade))
        elif top.kind == "t-shirt" or (top.kind == "dress" and top.sleeves):
            parts.append(_Part(_TOP, _capsule(sh_, sh_ + 0.45 * (el - sh_), 0.04 * F, 0.034 * F), shade=shade))
        key = (Z[f"{s}_elb"] + Z[f"{s}_wri"]) * 0.5 + 0.006
        arm_groups.append((key, parts))

    # ---- head: human (hair + face) and mannequin (bald)
    yaw_h = st.yaw + st.head_yaw
    hc = P["head"]
    a, b, n = _FACE_GEOM[identity.face_shape]
    ma, mb, mn = _MANNEQUIN_HEAD
    hgeom = {"center": hc, "a": a * F, "b": b * F, "n": n, "yaw": yaw_h}
    head_parts: list[_Part] = []
    style = identity.hair_style
    cap = {"short": (1.09, 1.05, 0.07), "bob": (1.2, 1.08, 0.05), "long": (1.16, 1.07, 0.06),
           "bun": (1.06, 1.04, 0.06)}[style]
    head_parts.append(_Part(_HAIR, [("poly", _superellipse(hc[0], hc[1] - cap[2] * b * F, cap[0] * a * F,
                                                           cap[1] * b * F, 2.0))], mannequin=False))

    def head_local(q: np.ndarray, aa: float, bb: float) -> tuple[np.ndarray, np.ndarray]:
        """Head-local unit coords (..., 3) -> pixels, camera depth (normalised)."""
        r = _rot_y(np.asarray(q, np.float64), yaw_h)
        return np.stack([hc[0] + r[..., 0] * aa * F, hc[1] + r[..., 1] * bb * F], -1), r[..., 2]

    bun_front = False
    if style == "bun":
        c, z = head_local(np.array([0.0, -0.9, -0.62]), a, b)
        bun = _Part(_HAIR, [("circle", c, 0.55 * a * F)], mannequin=False)
        bun_front = bool(z > 0.1)
        if not bun_front:
            head_parts.append(bun)
    head_parts.append(_Part(_HEAD, [("poly", _superellipse(hc[0], hc[1], a * F, b * F, n))], mannequin=False,
                            head=dict(hgeom, human=True)))
    head_parts.append(_Part(_HEAD, [("poly", _superellipse(hc[0], hc[1], ma * F, mb * F, mn))], human=False,
                            head=dict(hgeom, a=ma * F, b=mb * F, n=mn, human=False)))
    if style == "bun" and bun_front:
        head_parts.append(bun)

    groups: list[tuple[float, list[_Part]]] = [(0.0, core)] + arm_groups
    if style in ("long", "bob"):
        bot = 3.8 if style == "long" else 0.9
        xs_top, xs_bot = 1.08, (1.28 if style == "long" else 1.2)
        box = []
        for yy, xs in ((-0.35, xs_top), (bot, xs_bot)):
            for sx in (-1, 1):
                for zz in (-0.95, -0.05):
                    box.append((sx * xs, yy, zz))
        pts, z = head_local(np.asarray(box), a, b)
        hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        groups.append((float(z.mean()) * a, [_Part(_HAIR, [("poly", hull)], mannequin=False, shade=0.92)]))
    groups.append((10.0, head_parts))
    order = sorted(range(len(groups)), key=lambda i: (groups[i][0], i))
    parts = [p for i in order for p in groups[i][1]]
    return parts, hgeom


# ------------------------------------------------------------------------------------------ raster


def _rasterize(parts: Sequence[_Part], which: str, H: int, W: int) -> np.ndarray:
    """Instance-id map (uint8; id = index + 1) for 'human', 'mannequin' or 'common' (no head/hair)."""
    lab = np.zeros((H, W), np.uint8)
    for i, p in enumerate(parts):
        if (p.cat not in (_HEAD, _HAIR)) if which == "common" else getattr(p, which):
            p.draw(lab, i + 1)
    return lab


def _edges(lab: np.ndarray, cat_lut: np.ndarray) -> np.ndarray:
    """Pixels of a part bordering an earlier-drawn part of the same category (outlines overlaps)."""
    cat = cat_lut[lab]
    out = np.zeros(lab.shape, bool)
    for sl_a, sl_b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                       ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        a, b = lab[sl_a], lab[sl_b]
        same = (cat[sl_a] == cat[sl_b]) & (a > 0)
        out[sl_a] |= same & (b < a)
        out[sl_b] |= same & (a < b)
    return out


def _pattern(g: Garment, u: np.ndarray, v: np.ndarray, F: float) -> np.ndarray:
    """True where the garment shows its secondary colour; u, v in figure heights."""
    if g.pattern == "plain":
        return np.zeros(u.shape, bool)
    p = max(g.period, 4.0 / F)  # at least 4 px so small renders do not alias
    if g.pattern == "stripes":
        return np.floor((u if g.vertical else v) / (p / 2)).astype(np.int64) % 2 == 1
    if g.pattern == "checks":
        return (np.floor(u / p) + np.floor(v / p)).astype(np.int64) % 2 == 1
    du, dv = (u / p) % 1 - 0.5, (v / p) % 1 - 0.5
    return du * du + dv * dv < 0.09


def _shade_head(img: np.ndarray, lab: np.ndarray, pid: int, geom: dict, identity: Identity | None,
                color: RGB) -> np.ndarray:
    """Colour head pixels in place; returns the face mask (human) or an empty mask (mannequin)."""
    H, W = lab.shape
    face_mask = np.zeros((H, W), bool)
    ys, xs = np.nonzero(lab == pid)
    if len(ys) == 0:
        return face_mask
    cx, cy = geom["center"]
    a, b, yaw = geom["a"], geom["b"], geom["yaw"]
    u = (xs - cx) / a
    v = (ys - cy) / b
    w = np.sqrt(np.clip(1 - u * u - v * v, 0.0, None))
    c, s = math.cos(yaw), math.sin(yaw)
    lx, ly, lz = u * c - w * s, v, u * s + w * c
    light = 0.68 + 0.32 * w - 0.06 * v
    if identity is None:
        img[ys, xs] = np.clip(np.asarray(color, np.float32) * light[:, None] + 0.5, 0, 255).astype(np.uint8)
        return face_mask
    style = identity.hair_style
    hairline = {"short": -0.42, "bob": -0.22, "long": -0.4, "bun": -0.5}[style]
    nape = {"short": 0.45, "bob": 0.8, "long": 1.1, "bun": 0.35}[style]
    side = {"short": 0.0, "bob": 0.7, "long": 0.78, "bun": 0.0}[style]
    hairline_l = hairline + 0.08 * lx
    side_hair = (np.abs(lx) > side) & (ly < nape * 0.7) & (lz < 0.55) if side else np.zeros_like(lx, bool)
    face = (lz > 0.2) & (ly > hairline_l) & ~side_hair
    if c < -0.5:  # facing away (> 120 deg): only hair, ears and neck are seen
        face[:] = False
    hair = ~face & ((ly < hairline_l) | (lz < 0.2) | side_hair) & (ly < nape)
    base = np.where(hair[:, None], np.asarray(identity.hair_color, np.float32),
                    np.asarray(identity.skin, np.float32))
    col = base * light[:, None]
    # facial features: drawn at the projected feature positions, kept on face pixels only
    x0, x1 = xs.min(), xs.max() + 1
    y0, y1 = ys.min(), ys.max() + 1
    feat = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    fmask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    sh, one = 4, 16

    def proj(q):
        q = np.asarray(q, np.float64)
        q = np.append(q, math.sqrt(max(0.0, 1 - q[0] ** 2 - q[1] ** 2)))
        r = _rot_y(q, yaw)
        return np.array([cx + r[0] * a - x0, cy + r[1] * b - y0]), r[2]

    def fix(p):
        return (int(round(p[0] * one)), int(round(p[1] * one)))

    lip = tuple(int(v) for v in np.clip(np.asarray(identity.skin) * [0.78, 0.5, 0.5] + [30, 0, 0], 0, 255))
    brow = tuple(int(v) for v in np.asarray(identity.hair_color) * 0.8)
    r_eye = max(0.5, 0.17 * a)
    for ex in (-0.36, 0.36):
        p, z = proj((ex, -0.04))
        if z > 0.25:
            cv2.circle(feat, fix(p), int(round(r_eye * one)), identity.eye_color, -1, cv2.LINE_8, sh)
            cv2.circle(fmask, fix(p), int(round(r_eye * one)), 1, -1, cv2.LINE_8, sh)
        if a >= 4.5:
            p0, z0 = proj((ex * 0.45, -0.3))
            p1, z1 = proj((ex * 1.6, -0.32))
            if min(z0, z1) > 0.2:
                cv2.line(feat, fix(p0), fix(p1), brow, 1, cv2.LINE_8, sh)
                cv2.line(fmask, fix(p0), fix(p1), 1, 1, cv2.LINE_8, sh)
    if a >= 3.5:
        p0, z0 = proj((-0.2, 0.53))
        p1, z1 = proj((0.2, 0.53))
        if min(z0, z1) > 0.2:
            cv2.line(feat, fix(p0), fix(p1), lip, 1, cv2.LINE_8, sh)
            cv2.line(fmask, fix(p0), fix(p1), 1, 1, cv2.LINE_8, sh)
    on = fmask[ys - y0, xs - x0].astype(bool) & face
    col[on] = feat[ys - y0, xs - x0][on].astype(np.float32) * (0.85 + 0.15 * light[on, None])
    img[ys, xs] = np.clip(col + 0.5, 0, 255).astype(np.uint8)
    face_mask[ys[face], xs[face]] = True
    return face_mask


def _render_frame(st: _State, body: _Body, identity: Identity, outfit: Outfit, H: int, W: int,
                  bg: RGB, mannequin_color: RGB, u_offset: float, human_only: bool = False) -> dict:
    """Render one frame: human (and mannequin) images, masks, plus the joints/camera/head for keypoints."""
    joints = _skeleton(st, body)
    cam = _Camera(st)
    parts, hgeom = _build_parts(st, body, identity, outfit, joints, cam)
    cat_lut = np.zeros(256, np.uint8)
    shade_lut = np.ones(256, np.float32)
    for i, p in enumerate(parts):
        cat_lut[i + 1] = p.cat
        shade_lut[i + 1] = p.shade
    F = cam.F
    xs = np.arange(W, dtype=np.float32)
    roundness = 1 - 0.16 * np.clip(((xs - cam.rx) / (0.17 * F)) ** 2, 0, 1)  # (W,) cylinder-ish shading

    # shared garment layer, from the map without head/hair (identical for both renderings)
    lab_c = _rasterize(parts, "common", H, W)
    cat_c = cat_lut[lab_c]
    edge_c = _edges(lab_c, cat_lut)
    garment = np.zeros((H, W, 3), np.uint8)
    for cat, g in ((_TOP, outfit.top), (_BOTTOM, outfit.bottom)):
        if g is None:
            continue
        yy, xx = np.nonzero(cat_c == cat)
        if len(yy) == 0:
            continue
        sec = _pattern(g, (xx - cam.rx) / F + u_offset, (yy - cam.ry) / F, F)
        col = np.where(sec[:, None], np.float32(g.color2), np.float32(g.color))
        fac = shade_lut[lab_c[yy, xx]] * roundness[xx] * np.where(edge_c[yy, xx], 0.72, 1.0)
        garment[yy, xx] = np.clip(col * fac[:, None] + 0.5, 0, 255).astype(np.uint8)

    out: dict = {"joints": joints, "cam": cam, "hgeom": hgeom}
    for which in (("human",) if human_only else ("human", "mannequin")):
        if which == "human":
            lab = _rasterize(parts, "human", H, W)
        else:  # the mannequin adds only its head, which is always drawn last
            lab = lab_c.copy()
            for i, p in enumerate(parts):
                if p.cat in (_HEAD, _HAIR) and p.mannequin:
                    p.draw(lab, i + 1)
        cat = cat_lut[lab]
        img = np.empty((H, W, 3), np.uint8)
        img[...] = np.asarray(bg, np.uint8)
        edge = _edges(lab, cat_lut)
        for c, colr in ((_SKIN, identity.skin if which == "human" else mannequin_color),
                        (_HAIR, identity.hair_color)):
            yy, xx = np.nonzero(cat == c)
            if len(yy):
                fac = shade_lut[lab[yy, xx]] * roundness[xx] * np.where(edge[yy, xx], 0.78, 1.0)
                img[yy, xx] = np.clip(np.float32(colr) * fac[:, None] + 0.5, 0, 255).astype(np.uint8)
        g = (cat == _TOP) | (cat == _BOTTOM)
        img[g] = garment[g]
        face = np.zeros((H, W), bool)
        for i, p in enumerate(parts):
            if p.cat == _HEAD and getattr(p, which):
                face = _shade_head(img, lab, i + 1, p.head, identity if which == "human" else None,
                                   mannequin_color)
        out[which] = {"image": img, "garment": g, "person": lab > 0, "face": face}
    return out


# ------------------------------------------------------------------------------------------ motion


def _motion_params(rng: np.random.Generator, motion: str) -> dict:
    return {"phase": rng.uniform(0, 2 * np.pi), "phase2": rng.uniform(0, 2 * np.pi),
            "amp": rng.uniform(0.03, 0.06), "yaw_amp": rng.uniform(0.15, 0.35), "cycles": rng.uniform(0.6, 1.1),
            "arm": rng.uniform(0.08, 0.2), "elbow": rng.uniform(0.05, 0.35), "fig": rng.uniform(0.85, 0.9),
            "dir": float(rng.choice([-1.0, 1.0])), "yaw0": rng.uniform(-0.12, 0.12),
            "walk_cycles": rng.uniform(1.0, 1.6), "start": rng.uniform(0.64, 0.72), "end": rng.uniform(0.86, 0.9),
            "x0": rng.uniform(-0.04, 0.04), "head": rng.uniform(-0.25, 0.25)}


def _state(motion: str, i: int, n: int, mp: dict, H: int, W: int) -> _State:
    t = i / max(n, 1)
    ph = 2 * np.pi * mp["cycles"] * t + mp["phase"]
    arm, elb = mp["arm"], mp["elbow"]
    if motion == "sway":
        F = mp["fig"] * H
        wgt = math.sin(ph)
        return _State(root_x=W / 2 + (mp["x0"] + mp["amp"] * math.sin(ph)) * F, foot_y=0.97 * H, fig=F,
                      yaw=mp["yaw_amp"] * math.sin(ph * 0.8 + mp["phase2"]), roll=0.035 * wgt,
                      head_yaw=mp["head"] * math.sin(ph * 0.6),
                      arms=((arm + 0.05 * math.sin(ph), 0.1 * math.sin(ph + 1), elb),
                            (arm - 0.05 * math.sin(ph), -0.1 * math.sin(ph + 1), elb)),
                      legs=((0.03, 0.12 * max(wgt, 0), 0.25 * max(wgt, 0)),
                            (0.03, 0.12 * max(-wgt, 0), 0.25 * max(-wgt, 0))))
    if motion == "turn":
        F = mp["fig"] * H
        yaw = mp["yaw0"] + mp["dir"] * 2 * np.pi * t
        return _State(root_x=W / 2 + (mp["x0"] * 0.5 + 0.015 * math.sin(ph)) * F, foot_y=0.97 * H, fig=F,
                      yaw=yaw, roll=0.015 * math.sin(ph),
                      arms=((arm, 0.05 * math.sin(ph), elb), (arm, -0.05 * math.sin(ph), elb)),
                      legs=((0.03, 0.0, 0.0), (0.03, 0.0, 0.0)))
    if motion == "walk":
        s = mp["start"] + (mp["end"] - mp["start"]) * t
        F = s * H
        foot_y = (0.78 + (0.94 - 0.78) * (s - mp["start"]) / max(mp["end"] - mp["start"], 1e-6)) * H
        p = 2 * np.pi * mp["walk_cycles"] * t + mp["phase"]
        sp, cp = math.sin(p), math.cos(p)
        return _State(root_x=W / 2 + (mp["x0"] + 0.012 * sp) * F, foot_y=foot_y, fig=F,
                      yaw=0.06 * math.sin(p + mp["phase2"]), roll=0.012 * sp, bob=0.012 * abs(sp),
                      arms=((0.09, -0.38 * sp, 0.25 + 0.15 * max(-sp, 0)), (0.09, 0.38 * sp, 0.25 + 0.15 * max(sp, 0))),
                      legs=((0.02, 0.38 * sp, 0.08 + 0.65 * max(cp, 0)),
                            (0.02, -0.38 * sp, 0.08 + 0.65 * max(-cp, 0))))
    raise ValueError(f"motion {motion!r} not in {MOTIONS}")


# ------------------------------------------------------------------------------------------ keypoints


_BODY_JOINTS = ("neck", "r_sho", "r_elb", "r_wri", "l_sho", "l_elb", "l_wri", "r_hip", "r_knee", "r_ank",
                "l_hip", "l_knee", "l_ank")  # OpenPose-18 indices 1..13
_FOOT_JOINTS = ("l_bigtoe", "l_smalltoe", "l_heel", "r_bigtoe", "r_smalltoe", "r_heel")
# nose, r_eye, l_eye, r_ear, l_ear on the unit head, with the camera-depth threshold for "visible"
_HEAD_KP = ((0, (0.0, 0.2, 0.95), 0.1), (14, (-0.36, -0.04, 0.93), 0.1), (15, (0.36, -0.04, 0.93), 0.1),
            (16, (-0.88, 0.02, 0.1), -0.3), (17, (0.88, 0.02, 0.1), -0.3))


def _pose_frame(joints: dict[str, np.ndarray], cam: _Camera, hgeom: dict, H: int, W: int,
                with_face: bool) -> PoseFrame:
    """Keypoints of the rendered figure (body joints always scored 1; face points only when facing)."""
    body = np.zeros((18, 3), np.float32)
    body[1:14, :2] = cam.px(np.stack([joints[n] for n in _BODY_JOINTS]))
    body[1:14, 2] = 1.0
    cx, cy = hgeom["center"]
    a, b, yaw = hgeom["a"], hgeom["b"], hgeom["yaw"]

    def head_pt(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = _rot_y(np.asarray(q, np.float64), yaw)
        return np.stack([cx + r[..., 0] * a, cy + r[..., 1] * b], -1), r[..., 2]

    p, z = head_pt(np.array([q for _, q, _ in _HEAD_KP]))
    for (k, _, thr), pk, zk in zip(_HEAD_KP, p, z):
        if zk > thr:
            body[k] = [pk[0], pk[1], 1.0]
    feet = np.ones((6, 3), np.float32)
    feet[:, :2] = cam.px(np.stack([joints[n] for n in _FOOT_JOINTS]))
    face = None
    if with_face:
        p, z = head_pt(_unit_landmarks())
        face = np.concatenate([p, (z > -0.05)[:, None]], 1).astype(np.float32)
    return PoseFrame(body=body, face=face, feet=feet, width=W, height=H)


# ------------------------------------------------------------------------------------------ public API


def generate_clip(seed: int, n_frames: int = 16, height: int = 128, width: int = 64, motion: str | None = None,
                  identity: Identity | None = None, outfit: Outfit | None = None, *, fps: float = 8.0,
                  mannequin_color: RGB | None = None) -> SyntheticClip:
    """Render one synthetic clip. Every random choice comes from ``seed`` through independent streams, so
    passing ``identity`` (or ``outfit``/``motion``) changes only that attribute."""
    if n_frames < 1 or height < 16 or width < 8:
        raise ValueError("need n_frames >= 1 and an image of at least 16x8")
    s_id, s_out, s_mot, s_scene = np.random.SeedSequence(int(seed)).spawn(4)
    r_mot, r_scene = np.random.default_rng(s_mot), np.random.default_rng(s_scene)
    identity = identity if identity is not None else Identity.random(np.random.default_rng(s_id))
    outfit = outfit if outfit is not None else Outfit.random(np.random.default_rng(s_out))
    motion = motion if motion is not None else MOTIONS[int(r_mot.integers(len(MOTIONS)))]
    if motion not in MOTIONS:
        raise ValueError(f"motion {motion!r} not in {MOTIONS}")
    mp = _motion_params(r_mot, motion)
    g = int(r_scene.integers(232, 249))
    tint = r_scene.integers(-4, 5, 3)
    bg: RGB = tuple(int(v) for v in np.clip(g + tint, 0, 255))  # type: ignore[assignment]
    man = mannequin_color or _MANNEQUIN_COLORS[int(r_scene.integers(len(_MANNEQUIN_COLORS)))]
    body = _Body(shoulder=float(r_scene.uniform(0.92, 1.08)), hip=float(r_scene.uniform(0.92, 1.1)))
    H, W, N = int(height), int(width), int(n_frames)

    human = np.empty((N, H, W, 3), np.uint8)
    mann = np.empty_like(human)
    cloth = np.zeros((N, H, W), bool)
    face = np.zeros((N, H, W), bool)
    person = np.zeros((N, H, W), bool)
    mmask = np.zeros((N, H, W), bool)
    yaws = np.zeros(N, np.float32)
    poses: list[PoseFrame] = []
    for i in range(N):
        st = _state(motion, i, N, mp, H, W)
        fr = _render_frame(st, body, identity, outfit, H, W, bg, man, u_offset=0.09 * st.yaw)
        human[i], mann[i] = fr["human"]["image"], fr["mannequin"]["image"]
        cloth[i] = fr["human"]["garment"] & fr["mannequin"]["garment"]
        face[i], person[i], mmask[i] = fr["human"]["face"], fr["human"]["person"], fr["mannequin"]["person"]
        yaws[i] = st.yaw
        # body pose from the mannequin's head geometry, so poses do not depend on the identity
        mgeom = dict(fr["hgeom"], a=_MANNEQUIN_HEAD[0] * st.fig, b=_MANNEQUIN_HEAD[1] * st.fig)
        poses.append(_pose_frame(fr["joints"], fr["cam"], mgeom, H, W, with_face=False))
    pose_images = np.stack([draw_pose(p, H, W) for p in poses])

    # identity image: frontal, a pose/time the clip does not contain
    ist = _state("sway", 0, 1, dict(mp, x0=0.0, amp=0.0, phase=mp["phase"] + 2.1), H, W)
    ist.yaw, ist.head_yaw, ist.roll, ist.fig = 0.0, 0.0, 0.0, 0.88 * H
    ist.arms = ((mp["arm"] + 0.14, 0.08, mp["elbow"] + 0.25), (mp["arm"] + 0.1, -0.05, mp["elbow"] + 0.2))
    idf = _render_frame(ist, body, identity, outfit, H, W, bg, man, u_offset=0.0, human_only=True)
    id_pose = _pose_frame(idf["joints"], idf["cam"], idf["hgeom"], H, W, with_face=True)
    id_lm = draw_face_landmarks(id_pose.face, H, W, radius=max(0.5, H / 256))

    return SyntheticClip(human=human, mannequin=mann, clothing_mask=cloth, face_mask=face, person_mask=person,
                         mannequin_mask=mmask, poses=poses, pose_images=pose_images,
                         identity_image=idf["human"]["image"], identity_landmarks=id_lm,
                         identity_embedding=identity_embedding(identity), identity_pose=id_pose,
                         identity=identity, outfit=outfit, motion=motion, fps=float(fps), yaw=yaws,
                         background=bg, mannequin_color=tuple(man), seed=int(seed))  # type: ignore[arg-type]


def generate_dataset(n_clips: int, seed: int, **kw) -> list[SyntheticClip]:
    """``n_clips`` clips with seeds derived from ``seed``; ``kw`` is passed to :func:`generate_clip`."""
    seeds = np.random.SeedSequence(int(seed)).generate_state(max(int(n_clips), 0), dtype=np.uint32)
    return [generate_clip(int(s), **kw) for s in seeds]


class ExactParser(HumanParser):
    """A human parser that answers with known masks: the stand-in for a parsing model on synthetic frames (tests,
    benchmarks). `add` registers frames (float [0, 1] or uint8) with their clothing and person masks (and optional
    hair); the rest of the person is labelled an arm. A frame it was not given raises KeyError."""

    label_set = ATR
    UPPER, ARM, HAIR = (ATR.labels.index(n) for n in ("Upper-clothes", "Left-arm", "Hair"))

    def __init__(self) -> None:
        self.known: dict[bytes, np.ndarray] = {}

    def add(self, frames: np.ndarray, clothing: np.ndarray, person: np.ndarray, hair: np.ndarray | None = None
            ) -> None:
        f8 = frames if frames.dtype == np.uint8 else (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
        for i, f in enumerate(f8):
            lab = np.where(person[i], self.ARM, 0).astype(np.uint8)
            lab[clothing[i]] = self.UPPER
            if hair is not None:
                lab[hair[i]] = self.HAIR
            self.known[f.tobytes()] = lab

    def parse_labels(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.known[np.ascontiguousarray(f).tobytes()] for f in frames])
