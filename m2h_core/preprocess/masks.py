"""Image and mask utilities: input normalisation, hole filling, grow/shrink, feather, temporal smoothing,
and loading a user-supplied mask sequence (works without any model)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


# ------------------------------------------------------------------------------------------ input images


def to_rgb_uint8(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Return ``image`` as (H, W, 3) uint8 RGB.

    Accepts (H, W) grayscale, (H, W, 1), (H, W, 3) RGB, (H, W, 4) RGBA (alpha composited on black) and float
    images in [0, 1]. Raises ValueError with a clear message for empty or malformed input.
    """
    arr = np.asarray(image)
    if arr.size == 0 or arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); expected (H, W, 3) RGB with H, W > 0")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name} has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        if a.max(initial=0.0) <= 1.0 + 1e-6:
            a = a * 255.0
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.rint(arr[..., :3].astype(np.float32) * alpha).astype(np.uint8)
    return np.ascontiguousarray(arr)


def to_frames(frames: np.ndarray | Sequence[np.ndarray], *, name: str = "frames") -> list[np.ndarray]:
    """Return a list of (H, W, 3) uint8 RGB frames from an (N, H, W, C) array, a single (H, W, C) image,
    an (N, H, W) grayscale stack or a list of images. An empty input gives an empty list."""
    if isinstance(frames, (list, tuple)):
        return [to_rgb_uint8(f, name=f"{name}[{i}]") for i, f in enumerate(frames)]
    arr = np.asarray(frames)
    if arr.ndim == 4:
        return [to_rgb_uint8(f, name=f"{name}[{i}]") for i, f in enumerate(arr)]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4):
        return [to_rgb_uint8(f, name=f"{name}[{i}]") for i, f in enumerate(arr)]  # grayscale stack
    if arr.ndim in (2, 3):
        return [to_rgb_uint8(arr, name=name)]
    if arr.size == 0:
        return []
    raise ValueError(f"{name} has shape {arr.shape}; expected (N, H, W, 3) or (H, W, 3)")


# ------------------------------------------------------------------------------------------ single masks


def binarize(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Bool mask from a bool / uint8 (0..255) / float (0..1) array; trailing channel axes are averaged."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] in (1, 3, 4):
        m = m[..., :3].mean(axis=-1) if m.shape[-1] >= 3 else m[..., 0]
    if m.dtype == bool:
        return m.copy()
    m = m.astype(np.float32)
    if m.max(initial=0.0) > 1.0:
        m = m / 255.0
    return m > threshold


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a bool mask (flood fill of the background from the border)."""
    m = binarize(mask).astype(np.uint8)
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    flood = pad.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (m > 0) | holes


def grow_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """The pack's one mask morphology: dilate (px > 0) or erode (px < 0) an (H, W) or (N, H, W) mask by ``|px|``
    pixels with an elliptical (disk) kernel (OpenCV); outside the image counts as off. Returns bool."""
    m = np.asarray(mask)
    if m.ndim == 3 and (m.dtype == bool or m.shape[-1] not in (1, 3, 4)):  # a stack, not one (H, W, C) image
        return np.stack([grow_mask(x, px) for x in m]) if len(m) else m.astype(bool)
    m = binarize(m).astype(np.uint8)
    if px == 0:
        return m > 0
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(px) + 1, 2 * abs(px) + 1))
    out = cv2.dilate(m, k) if px > 0 else cv2.erode(m, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out > 0


def feather_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """Soft float32 mask in [0, 1]: Gaussian blur of the binary mask with sigma ~ px / 2."""
    m = binarize(mask).astype(np.float32)
    if px <= 0:
        return m
    k = 2 * int(px) + 1
    return np.clip(cv2.GaussianBlur(m, (k, k), sigmaX=max(px / 2.0, 0.5)), 0.0, 1.0)


def refine_mask(mask: np.ndarray, *, fill: bool = True, grow_px: int = 0, feather_px: int = 0) -> np.ndarray:
    """fill_holes -> grow/shrink -> feather; bool when feather_px == 0 else float32."""
    m = fill_holes(mask) if fill else binarize(mask)
    m = grow_mask(m, grow_px)
    return feather_mask(m, feather_px) if feather_px > 0 else m


# ------------------------------------------------------------------------------------------ sequences


def temporal_smooth_masks(masks: np.ndarray, window: int = 3, mode: str = "majority") -> np.ndarray:
    """Per-pixel temporal smoothing of an (N, H, W) mask sequence over a centred window (edges shrink).

    ``majority``: a pixel is on when more than half of the window is on (removes one-frame flicker).
    ``median``: the median of float masks (keeps soft masks soft).
    """
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {m.shape}")
    if window <= 1 or len(m) <= 1:
        return m.copy()
    r = window // 2
    out = np.empty(m.shape, dtype=bool if mode == "majority" else np.float32)
    mf = m.astype(np.float32) if m.dtype != bool else m.astype(np.float32)
    for i in range(len(m)):
        lo, hi = max(0, i - r), min(len(m), i + r + 1)
        if mode == "majority":
            out[i] = mf[lo:hi].mean(axis=0) > 0.5
        elif mode == "median":
            out[i] = np.median(mf[lo:hi], axis=0)
        else:
            raise ValueError(f"mode must be 'majority' or 'median', got {mode!r}")
    return out


_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_mask_sequence(source: str | os.PathLike | np.ndarray, num_frames: int | None = None,
                       size: tuple[int, int] | None = None, threshold: float = 0.5,
                       resize: bool = True) -> np.ndarray:
    """A user-supplied clothing-mask sequence as (N, H, W) bool; no model needed.

    ``source``: a folder of images (sorted by name), a single image (repeated to ``num_frames``), a ``.npy``
    array (loaded with ``allow_pickle=False``), a video file, or an array (N, H, W[, C]).
    ``size`` = (H, W) of the video: masks of another size are resized (nearest) when ``resize`` else rejected.
    ``num_frames``: the count must match (a single mask is repeated); otherwise ValueError says both counts.
    """
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = arr[None]
        frames = [a for a in arr]
    else:
        p = Path(source).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"mask source not found: {p}")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in _IMG_EXT)
            if not files:
                raise ValueError(f"no mask images ({', '.join(_IMG_EXT)}) in folder {p}")
            frames = [_read_gray(f) for f in files]
        elif p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
            frames = [a for a in (arr[None] if arr.ndim == 2 else arr)]
        elif p.suffix.lower() in _IMG_EXT:
            frames = [_read_gray(p)]
        else:
            frames = _read_video_gray(p)
    if not frames:
        raise ValueError("mask sequence is empty")
    masks = [binarize(f, threshold) for f in frames]
    if num_frames is not None:
        if len(masks) == 1 and num_frames > 1:
            masks = masks * num_frames
        elif len(masks) != num_frames:
            raise ValueError(f"mask sequence has {len(masks)} frames but the video has {num_frames}; give one "
                             f"mask per frame or a single mask for all frames")
    out = []
    for i, m in enumerate(masks):
        if size is not None and m.shape != tuple(size):
            if not resize:
                raise ValueError(f"mask {i} is {m.shape[1]}x{m.shape[0]} (WxH) but the video is "
                                 f"{size[1]}x{size[0]}")
            m = cv2.resize(m.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        out.append(m)
    shapes = {m.shape for m in out}
    if len(shapes) != 1:
        raise ValueError(f"masks have different sizes: {sorted(shapes)}; pass size=(H, W) to resize them")
    return np.stack(out)


def _read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read mask image {path}")
    if img.ndim == 3 and img.shape[2] == 4:  # use alpha when the colour is flat
        return img[..., 3] if np.ptp(img[..., :3]) == 0 else cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img


def _read_video_gray(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"cannot read any frame from {path} (not an image folder, .npy, image or video)")
    return frames


def apply_mask(frames: np.ndarray, masks: np.ndarray, background: int = 0) -> np.ndarray:
    """``v ⊙ M``: frames (N, H, W, 3) uint8 with pixels outside masks (N, H, W) set to ``background``.
    Soft (float) masks blend towards the background."""
    f = np.asarray(frames)
    m = np.asarray(masks)
    if m.dtype == bool:
        return np.where(m[..., None], f, np.uint8(background)).astype(np.uint8)
    a = m.astype(np.float32)[..., None]
    return np.clip(f.astype(np.float32) * a + background * (1 - a), 0, 255).round().astype(np.uint8)
