"""DWPose whole-body pose (YOLOX-L person detector + RTMPose-style 133-keypoint SimCC model) on onnxruntime.

Pipeline (same maths as DWPose's ONNX annotator, written independently):

* detector: letterbox into 640x640 (top-left, pad 114, no normalisation), YOLOX grid decode over strides
  8/16/32, person score = objectness x class-0 score, keep > 0.3, NMS IoU 0.45, boxes divided by the ratio;
* pose: each box padded 1.25x, widened to the 288:384 aspect, affine-warped to 288x384, normalised with
  mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375); SimCC decode = argmax per axis / split ratio 2,
  score = min of the two maxima, mapped back through the warp;
* COCO-WholeBody 133 -> OpenPose-18 body (neck = mean of the shoulders, visible when both > 0.3), feet 17:23,
  face 23:91, left hand 91:112, right hand 112:133.

Colour order: DWPose's own ControlNet annotator feeds RGB to both models; rtmlib feeds BGR (cv2.imread) to
both. Their training configs differ: the pose model was trained with ``bgr_to_rgb=True`` and RGB mean/std
(mmpose RTMPose wholebody 384x288 config), so it expects **RGB**; the mmdet YOLOX detector has no colour
conversion, so it saw **BGR**. We follow the training configs: ``frames`` are RGB, the detector gets BGR
(``det_bgr=True``), the pose model RGB. Both choices are constructor options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..pose_render import PoseFrame, draw_pose
from .masks import to_frames
from .model_files import create_onnx_session, find_model_file, onnx_providers

DET_SIZE = (640, 640)  # (H, W)
POSE_SIZE = (288, 384)  # (W, H)
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
SIMCC_SPLIT = 2.0
BOX_PADDING = 1.25

# OpenPose-18 index -> COCO-17 index (1 = neck, computed)
_OP_FROM_COCO = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

STATUS_OK = "ok"
STATUS_NO_PERSON = "no_person"


# ------------------------------------------------------------------------------------------ detector maths


def letterbox(image: np.ndarray, size: tuple[int, int] = DET_SIZE, pad_value: int = 114) -> tuple[np.ndarray, float]:
    """Resize keeping aspect into the top-left of a ``size`` (H, W) canvas filled with ``pad_value``.
    Returns (canvas uint8, ratio) with ``ratio`` = canvas px per image px."""
    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    nh, nw = max(1, min(size[0], int(h * r))), max(1, min(size[1], int(w * r)))
    canvas = np.full((size[0], size[1], image.shape[2]), pad_value, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, r


def yolox_grid_decode(raw: np.ndarray, input_hw: tuple[int, int] = DET_SIZE,
                      strides: Sequence[int] = (8, 16, 32)) -> np.ndarray:
    """Decode YOLOX head output (..., A, 5 + C): xy = (xy + grid) * stride, wh = exp(wh) * stride.
    Anchors are ordered stride by stride, row-major (y then x). Returns a decoded copy."""
    grids, expanded = [], []
    for s in strides:
        hs, ws = input_hw[0] // s, input_hw[1] // s
        yv, xv = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(expanded).astype(np.float32)
    if raw.shape[-2] != len(grid):
        raise ValueError(f"detector output has {raw.shape[-2]} anchors; a {input_hw} input needs {len(grid)}")
    out = raw.astype(np.float32).copy()
    out[..., :2] = (out[..., :2] + grid) * stride
    out[..., 2:4] = np.exp(out[..., 2:4]) * stride
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS (pixel-inclusive areas, +1, as DWPose); returns kept indices, best first."""
    if len(boxes) == 0:
        return []
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def person_boxes(decoded: np.ndarray, ratio: float, score_threshold: float = 0.3,
                 iou_threshold: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (n, 4) xyxy in image pixels and scores (n,) from one image's decoded YOLOX output (A, 85)."""
    scores = decoded[:, 4] * decoded[:, 5]
    sel = scores > score_threshold
    if not sel.any():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    d, s = decoded[sel], scores[sel]
    cx, cy, w, h = d[:, 0], d[:, 1], d[:, 2], d[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) / ratio
    keep = nms(boxes, s, iou_threshold)
    return boxes[keep].astype(np.float32), s[keep].astype(np.float32)


# ------------------------------------------------------------------------------------------ pose maths


def box_center_scale(box: np.ndarray, padding: float = BOX_PADDING,
                     aspect: float = POSE_SIZE[0] / POSE_SIZE[1]) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and scale (w, h) of a xyxy box, padded, then widened to the model's w/h ``aspect``."""
    x1, y1, x2, y2 = [float(v) for v in box[:4]]
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float32)


def crop_warp(center: np.ndarray, scale: np.ndarray, out_size: tuple[int, int] = POSE_SIZE) -> np.ndarray:
    """2x3 affine (no rotation) mapping the box (center, scale) onto an ``out_size`` (W, H) crop."""
    ow, oh = out_size
    sx, sy = ow / scale[0], oh / scale[1]
    return np.array([[sx, 0, ow / 2 - sx * center[0]], [0, sy, oh / 2 - sy * center[1]]], np.float32)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split_ratio: float = SIMCC_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """SimCC argmax decoding: (N, K, Wx), (N, K, Wy) -> locations (N, K, 2) in crop pixels and scores (N, K).
    Score = min of the x and y maxima; locations with score <= 0 are -1."""
    n, k, _ = simcc_x.shape
    x = simcc_x.reshape(n * k, -1)
    y = simcc_y.reshape(n * k, -1)
    locs = np.stack([x.argmax(1), y.argmax(1)], -1).astype(np.float32)
    vals = np.minimum(x.max(1), y.max(1)).astype(np.float32)
    locs[vals <= 0] = -1
    return (locs / split_ratio).reshape(n, k, 2), vals.reshape(n, k)


def crop_to_image(locs: np.ndarray, center: np.ndarray, scale: np.ndarray,
                  out_size: tuple[int, int] = POSE_SIZE) -> np.ndarray:
    """Map crop-pixel locations (K, 2) back to image pixels through the inverse warp."""
    return locs / np.asarray(out_size, np.float32) * scale + center - scale / 2


def wholebody_to_pose(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int,
                      neck_threshold: float = 0.3) -> PoseFrame:
    """COCO-WholeBody 133 keypoints (133, 2) + scores (133,) -> PoseFrame (OpenPose-18 body, feet, face, hands)."""
    kp = np.concatenate([keypoints.astype(np.float32), scores.astype(np.float32)[:, None]], 1)
    kp[kp[:, 2] <= 0] = 0.0
    body = np.zeros((18, 3), np.float32)
    for op, coco in enumerate(_OP_FROM_COCO):
        if coco >= 0:
            body[op] = kp[coco]
    ls, rs = kp[5], kp[6]
    if ls[2] > neck_threshold and rs[2] > neck_threshold:
        body[1] = [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, min(ls[2], rs[2])]
    hands = np.stack([kp[112:133], kp[91:112]])  # right, left
    return PoseFrame(body=body, hands=hands, face=kp[23:91].copy(), feet=kp[17:23].copy(),
                     width=int(width), height=int(height))


# ------------------------------------------------------------------------------------------ detector


@dataclass
class PoseResult:
    """One frame: the main person (largest box) or None, every person found, their boxes, and a status."""

    pose: PoseFrame | None
    people: list[PoseFrame] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    status: str = STATUS_NO_PERSON
    main_index: int = -1
    width: int = 0
    height: int = 0


def _batch_dim(session) -> int | None:
    """The fixed batch size of a session's first input, or None if dynamic."""
    d = session.get_inputs()[0].shape[0]
    return d if isinstance(d, int) and d > 0 else None


class DWPoseDetector:
    """DWPose on onnxruntime; sessions are created once and reused.

    ``det_path`` / ``pose_path``: paths or names ('yolox_l.onnx', 'dw-ll_ucoco_384.onnx') found with
    :func:`find_model_file` in ``search_dirs`` / ``$M2H_MODELS``. ``providers``: onnxruntime providers
    (default: CUDA when available, then CPU). Frames are batched where a model's batch axis is dynamic.
    """

    def __init__(self, det_path: str | os.PathLike = "yolox_l.onnx",
                 pose_path: str | os.PathLike = "dw-ll_ucoco_384.onnx", providers: Sequence[str] | None = None,
                 *, search_dirs: Sequence[str | os.PathLike] | None = None, threads: int | None = None,
                 det_bgr: bool = True, pose_rgb: bool = True, score_threshold: float = 0.3,
                 iou_threshold: float = 0.45, batch_size: int = 8):
        self.det_path = find_model_file("dwpose", det_path, search_dirs)
        self.pose_path = find_model_file("dwpose", pose_path, search_dirs)
        self.providers = list(providers) if providers else onnx_providers()
        self.det = create_onnx_session(self.det_path, self.providers, threads)
        self.pose = create_onnx_session(self.pose_path, self.providers, threads)
        self.det_bgr, self.pose_rgb = det_bgr, pose_rgb
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.batch_size = max(1, int(batch_size))
        self._det_in = self.det.get_inputs()[0].name
        self._pose_in = self.pose.get_inputs()[0].name
        dshape = self.det.get_inputs()[0].shape
        self.det_size = (dshape[2], dshape[3]) if all(isinstance(v, int) for v in dshape[2:4]) else DET_SIZE
        pshape = self.pose.get_inputs()[0].shape
        self.pose_size = (pshape[3], pshape[2]) if all(isinstance(v, int) for v in pshape[2:4]) else POSE_SIZE
        names = [o.name for o in self.pose.get_outputs()]
        self._simcc_names = (["simcc_x", "simcc_y"] if {"simcc_x", "simcc_y"} <= set(names) else names[:2])
        self._det_batch = _batch_dim(self.det)
        self._pose_batch = _batch_dim(self.pose)

    @property
    def active_providers(self) -> list[str]:
        """Providers onnxruntime actually uses (CUDA silently falls back to CPU when its libraries are missing)."""
        return list(self.det.get_providers())

    # -- stages ------------------------------------------------------------------------------------------

    def _run_batched(self, session, name: str, batch: np.ndarray, fixed: int | None, outputs=None):
        step = fixed if fixed is not None else self.batch_size
        outs = None
        for i in range(0, len(batch), step):
            chunk = batch[i:i + step]
            if fixed is not None and len(chunk) != fixed:  # pad a fixed batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), 0)])
            res = session.run(outputs, {name: chunk})
            res = [r[:len(batch[i:i + step])] for r in res]
            outs = res if outs is None else [np.concatenate([a, b]) for a, b in zip(outs, res)]
        return outs

    def detect_boxes(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Person boxes and scores for each RGB uint8 frame."""
        if not frames:
            return []
        blobs, ratios = [], []
        for f in frames:
            img = f[..., ::-1] if self.det_bgr else f
            canvas, r = letterbox(np.ascontiguousarray(img), self.det_size)
            blobs.append(canvas.transpose(2, 0, 1).astype(np.float32))
            ratios.append(r)
        raw = self._run_batched(self.det, self._det_in, np.stack(blobs), self._det_batch)[0]
        decoded = yolox_grid_decode(raw, self.det_size)
        return [person_boxes(decoded[i], ratios[i], self.score_threshold, self.iou_threshold)
                for i in range(len(frames))]

    def estimate(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """133 keypoints (n, 133, 2) in image pixels and scores (n, 133) for the given boxes of one frame."""
        kps, scs = self._estimate_many([frame], [boxes])
        return kps[0], scs[0]

    def _estimate_many(self, frames, boxes_per_frame):
        crops, metas = [], []
        img_src = [f if self.pose_rgb else f[..., ::-1] for f in frames]
        for fi, boxes in enumerate(boxes_per_frame):
            for box in boxes:
                c, s = box_center_scale(box, BOX_PADDING, self.pose_size[0] / self.pose_size[1])
                m = crop_warp(c, s, self.pose_size)
                crop = cv2.warpAffine(np.ascontiguousarray(img_src[fi]), m, self.pose_size, flags=cv2.INTER_LINEAR)
                crops.append(((crop.astype(np.float32) - POSE_MEAN) / POSE_STD).transpose(2, 0, 1))
                metas.append((fi, c, s))
        kps = [np.zeros((0, 133, 2), np.float32) for _ in frames]
        scs = [np.zeros((0, 133), np.float32) for _ in frames]
        if not crops:
            return kps, scs
        sx, sy = self._run_batched(self.pose, self._pose_in, np.stack(crops), self._pose_batch, self._simcc_names)
        locs, vals = simcc_decode(sx, sy, SIMCC_SPLIT)
        per = {i: ([], []) for i in range(len(frames))}
        for j, (fi, c, s) in enumerate(metas):
            pts = crop_to_image(locs[j], c, s, self.pose_size)
            pts[vals[j] <= 0] = -1
            per[fi][0].append(pts)
            per[fi][1].append(vals[j])
        for fi, (p, v) in per.items():
            if p:
                kps[fi], scs[fi] = np.stack(p).astype(np.float32), np.stack(v).astype(np.float32)
        return kps, scs

    # -- public --------------------------------------------------------------------------------------------

    def detect(self, frames: np.ndarray | Sequence[np.ndarray],
               progress: Callable[[int, int], None] | None = None) -> list[PoseResult]:
        """Pose of every frame of ``frames`` ((N, H, W, 3) uint8 RGB; grayscale / RGBA / float accepted).

        Each result has the main person (largest box) as ``pose`` or ``None`` with status ``'no_person'``.
        ``progress(done, total)`` is called after each chunk.
        """
        imgs = to_frames(frames)
        results: list[PoseResult] = []
        step = self.batch_size
        for start in range(0, len(imgs), step):
            chunk = imgs[start:start + step]
            dets = self.detect_boxes(chunk)
            kps, scs = self._estimate_many(chunk, [b for b, _ in dets])
            for f, (boxes, bscores), k, s in zip(chunk, dets, kps, scs):
                h, w = f.shape[:2]
                people = [wholebody_to_pose(k[i], s[i], w, h) for i in range(len(k))]
                if not people:
                    results.append(PoseResult(None, [], boxes, bscores, STATUS_NO_PERSON, -1, w, h))
                    continue
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                main = int(np.argmax(areas))
                results.append(PoseResult(people[main], people, boxes, bscores, STATUS_OK, main, w, h))
            if progress is not None:
                progress(min(start + step, len(imgs)), len(imgs))
        return results

    def __call__(self, frames):
        return self.detect(frames)

    def render(self, results: Sequence[PoseResult | PoseFrame | None], height: int | None = None,
               width: int | None = None, **kw) -> np.ndarray:
        """Pose images for ``results`` (see :func:`render_poses`); size defaults to the frames' size."""
        first = next((r for r in results if r is not None), None)
        height = height or (first.height if first is not None else 0)
        width = width or (first.width if first is not None else 0)
        if not height or not width:
            raise ValueError("render needs height and width when no result carries a frame size")
        return render_poses(results, height, width, **kw)


def render_poses(poses: Sequence[PoseFrame | PoseResult | None], height: int, width: int, *, body: bool = True,
                 hands: bool = False, face: bool = False, feet: bool = False, score_threshold: float = 0.3,
                 line_width: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 pose images via :func:`m2h_core.pose_render.draw_pose`; body only by default
    (mannequins have no face or hands). Frames without a pose are black; poses are rescaled to the canvas."""
    out = np.zeros((len(poses), int(height), int(width), 3), np.uint8)
    for i, p in enumerate(poses):
        p = p.pose if isinstance(p, PoseResult) else p
        if p is not None:
            out[i] = draw_pose(p, height, width, body=body, hands=hands, face=face, feet=feet,
                               score_threshold=score_threshold, line_width=line_width)
    return out
