"""Putting the identity photo where the model expects x_id (paper Eq. 2 input), and its p_id / ArcFace.

In training, x_id is a frame of the same video, so the head sits where the body pose puts it and has the size of
a head in that frame. A user's photo is arbitrary: `place_identity` moves and scales the photo's face onto the head
position estimated from the mannequin's pose (`head_box_from_pose`; headless mannequins: from neck and shoulders),
or, without a pose, centre-crops the photo to the video's aspect ratio ("fit_photo"). The landmark image p_id is
drawn from the same transformed landmarks, so x_id and p_id stay aligned.

`head_only` keeps only the head of x_id (`M2HConfig.identity_input == "head"`): see its docstring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .frames import to_float, to_nchw
from .pose_render import draw_face_landmarks
from .video_io import apply_crop, compute_center_crop

log = logging.getLogger("m2h")


HEAD_FROM_SHOULDERS = 0.42  # head width / shoulder width of an adult
HEAD_FROM_NECK_UP = 0.62  # head centre above the neck, in shoulder widths


def head_box_from_pose(pose: Any, height: int, width: int) -> tuple[float, float, float] | None:
    """(centre x, centre y, head width) in a height x width image from an OpenPose-18 PoseFrame, or None.

    Uses eyes/ears/nose when the mannequin has a head; otherwise (headless mannequins) the neck and shoulders.
    """
    if pose is None:
        return None
    b = np.asarray(pose.body, np.float64).copy()
    if pose.width and pose.height and (pose.width, pose.height) != (width, height):
        b[:, 0] *= width / pose.width
        b[:, 1] *= height / pose.height
    ok = b[:, 2] > 0.3
    sh = None
    if ok[2] and ok[5]:
        sh = float(np.hypot(*(b[2, :2] - b[5, :2])))
    face_pts = [i for i in (0, 14, 15, 16, 17) if ok[i]]
    if len(face_pts) >= 2:
        pts = b[face_pts, :2]
        ears = [i for i in (16, 17) if ok[i]]
        span = float(np.hypot(*(b[16, :2] - b[17, :2]))) if len(ears) == 2 else None
        eyes = float(np.hypot(*(b[14, :2] - b[15, :2]))) if ok[14] and ok[15] else None
        head_w = span * 1.1 if span else (eyes * 2.5 if eyes else (sh * HEAD_FROM_SHOULDERS if sh else None))
        if head_w and head_w > 1:
            cx, cy = pts.mean(0)
            return float(cx), float(cy + 0.1 * head_w), float(head_w)
    if ok[1] and sh and sh > 1:
        cx, cy = b[1, :2]
        return float(cx), float(cy - HEAD_FROM_NECK_UP * sh), float(sh * HEAD_FROM_SHOULDERS)
    return None


def place_identity(photo: np.ndarray, face_bbox: Sequence[float], points: np.ndarray, height: int, width: int,
                   head: tuple[float, float, float] | None, face_scale: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Place the identity photo in a height x width canvas.

    With ``head`` = (cx, cy, head width): similarity transform taking the face box centre to the head centre and
    its width to ``face_scale`` x head width (photo borders replicated). Without it: centre crop + resize.
    Returns (image uint8 (H, W, 3), transformed landmark points (K, 2), 2x3 matrix, description).
    """
    import cv2

    h0, w0 = photo.shape[:2]
    x1, y1, x2, y2 = [float(v) for v in face_bbox[:4]]
    if head is not None:
        cx, cy, hw = head
        s = face_scale * hw / max(x2 - x1, 1.0)
        fx, fy = (x1 + x2) / 2, (y1 + y2) / 2
        m = np.array([[s, 0, cx - s * fx], [0, s, cy - s * fy]], np.float64)
        img = cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REPLICATE)
        desc = (f"face ({x2 - x1:.0f} px wide) scaled x{s:.3g} and moved to the head at ({cx:.0f}, {cy:.0f}) "
                f"of the {width}x{height} frame")
    else:
        info = compute_center_crop(h0, w0, height, width)
        img = apply_crop(photo, info)
        m = np.array([[info.scale_x, 0, (0.5 - info.x0) * info.scale_x - 0.5],
                      [0, info.scale_y, (0.5 - info.y0) * info.scale_y - 0.5]], np.float64)
        desc = "photo " + info.describe()
    pts = np.asarray(points, np.float64)[:, :2]
    pts = pts @ m[:, :2].T + m[:, 2]
    return np.ascontiguousarray(img), pts.astype(np.float32), m, desc


def head_from_poses(poses: Sequence[Any], src_height: int, src_width: int, height: int, width: int,
                    reference_frame: int = 0) -> tuple[tuple[float, float, float] | None, int | None]:
    """Head (cx, cy, width) in the model's height x width frame, from the reference frame's pose or the nearest
    frame that has one; poses are in the source video's src_height x src_width (mapped through the same centre
    crop as the frames). Returns (head or None, the frame used)."""
    if not len(poses):
        return None, None
    idx = min(max(int(reference_frame), 0), len(poses) - 1)
    for i in sorted(range(len(poses)), key=lambda i: abs(i - idx)):
        head = head_box_from_pose(poses[i], src_height, src_width)
        if head is not None:
            info = compute_center_crop(src_height, src_width, height, width)
            (cx, cy), = info.map_points(np.array([[head[0], head[1]]]))
            return (float(cx), float(cy), float(head[2] * info.scale_x)), i
    return None, None


@dataclass
class PlacedIdentity:
    """x_id and p_id at the model's size (uint8 RGB), the ArcFace embedding, and what was done."""

    image: np.ndarray  # (H, W, 3)
    landmark_image: np.ndarray  # (H, W, 3)  p_id
    arcface: np.ndarray  # (512,)
    description: str
    face_box: tuple[float, float, float, float]
    preview: np.ndarray  # x_id with the face box and landmarks drawn


def prepare_identity(photo: np.ndarray, face: Any, height: int, width: int,
                     head: tuple[float, float, float] | None = None, face_scale: float = 1.0,
                     identity_input: str = "full") -> PlacedIdentity:
    """From the photo (uint8 RGB) and its analysed face (FaceResult: bbox, landmarks or kps, embedding).

    identity_input: the model's `M2HConfig.identity_input`; with "head" the preview dims what the model will not
    see (everything outside `head_region`). x_id itself stays whole: the model masks it (`FrozenEncoders`)."""
    import cv2

    points = face.landmarks if face.landmarks is not None else face.kps
    img, pts, m, desc = place_identity(photo, face.bbox, points, height, width, head, face_scale)
    lmk = draw_face_landmarks(pts, height, width)
    x1, y1, x2, y2 = [float(v) for v in face.bbox[:4]]
    box = np.array([[x1, y1], [x2, y2]]) @ m[:, :2].T + m[:, 2]
    preview = img.copy()
    if identity_input == "head":
        m, _ = head_region(to_nchw(to_float(lmk))[None])
        keep = m[0, 0].numpy()[..., None]
        preview = (preview * (0.25 + 0.75 * keep)).round().astype(np.uint8)
    cv2.rectangle(preview, (int(box[0, 0]), int(box[0, 1])), (int(box[1, 0]), int(box[1, 1])), (0, 255, 0), 1)
    preview = draw_face_landmarks(pts, height, width, color=(255, 64, 64), canvas=preview)
    return PlacedIdentity(img, lmk, np.asarray(face.embedding, np.float32).reshape(-1), desc,
                          (float(box[0, 0]), float(box[0, 1]), float(box[1, 0]), float(box[1, 1])), preview)


# Head region around the 68 landmarks (jaw to brows), in landmark-box widths / heights: the hair and forehead
# reach ~0.8 box heights above the brows, the ears and hair ~0.3 box widths to each side.
HEAD_MARGIN_SIDE = 0.3
HEAD_MARGIN_TOP = 0.8
HEAD_MARGIN_BOTTOM = 0.1


def head_region(identity_landmarks: torch.Tensor, threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Head masks from p_id: an ellipse around the drawn landmarks, widened for hair and ears.

    identity_landmarks (B, 3, H, W) in [0, 1] (white landmarks on black). Returns (masks (B, 1, H, W) in {0, 1},
    found (B,) bool); a sample whose p_id is empty (no landmarks) gets an all-ones mask and found = False.
    """
    b, _, h, w = identity_landmarks.shape
    on = identity_landmarks.amax(1) > threshold  # (B, H, W)
    ys = torch.arange(h, device=on.device, dtype=torch.float32)
    xs = torch.arange(w, device=on.device, dtype=torch.float32)
    masks = torch.ones(b, 1, h, w, device=on.device)
    found = on.flatten(1).any(1)
    for i in torch.nonzero(found).flatten().tolist():
        rows = torch.nonzero(on[i].any(1)).flatten()
        cols = torch.nonzero(on[i].any(0)).flatten()
        y1, y2 = float(rows[0]), float(rows[-1]) + 1
        x1, x2 = float(cols[0]), float(cols[-1]) + 1
        bw, bh = x2 - x1, y2 - y1
        top, bottom = y1 - HEAD_MARGIN_TOP * bh, y2 + HEAD_MARGIN_BOTTOM * bh
        left, right = x1 - HEAD_MARGIN_SIDE * bw, x2 + HEAD_MARGIN_SIDE * bw
        cy, cx = (top + bottom) / 2, (left + right) / 2
        ry, rx = max((bottom - top) / 2, 1.0), max((right - left) / 2, 1.0)
        ell = ((ys[:, None] + 0.5 - cy) / ry) ** 2 + ((xs[None, :] + 0.5 - cx) / rx) ** 2 <= 1.0
        masks[i, 0] = ell.float()
    return masks, found


def head_only(identity_image: torch.Tensor, identity_landmarks: torch.Tensor) -> torch.Tensor:
    """x_id ⊙ M_head: the identity image with everything but the head blacked out (paper Eq. 2's input, our choice).

    The paper's x_id is "randomly selected from the frames in v_h" (Sec. III-D): a whole frame, wearing the clip's
    own clothes. A model trained that way can copy the *clothing* from x_id (at test time another person in other
    clothes), and we measured exactly that in the tiny demo (the identity photo's trousers showed up in the
    result). Keeping only the head (the region the mirror loss supervises, and what the paper's user study shows
    as "the face image") removes that shortcut. Black is the masked-out colour, as for the clothing frame v ⊙ M_c.
    Samples without landmarks are kept whole. (B, 3, H, W) in [0, 1] -> same.
    """
    masks, _ = head_region(identity_landmarks)
    return identity_image * masks.to(identity_image.dtype)
