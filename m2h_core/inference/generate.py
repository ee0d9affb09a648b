"""`m2h generate`: mannequin video file + identity photo -> human video file (paper Fig. 2b, end to end).

    read video -> centre-crop/resize to the model's size (2:1) -> clothing masks (parsing model, or --masks)
    -> body poses (DWPose, or --poses) -> identity: ArcFace embedding + landmark image (insightface), the photo's
    face moved onto the mannequin's head (identity.py) -> sample_video -> write the video at the source fps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..identity import PlacedIdentity, head_from_poses, prepare_identity
from .pipeline import M2HPipeline
from .sampler import SamplerSettings, sample_video
from ..video_io import center_crop_resize, read_image, read_video, write_video

log = logging.getLogger("m2h")


@dataclass
class GenerateReport:
    out: str
    num_frames: int
    fps: float
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def clothing_masks(frames: np.ndarray, masks: str | None, parser: str, search_dirs: list[str]) -> np.ndarray:
    from ..preprocess.masks import load_mask_sequence

    if masks:
        return load_mask_sequence(masks, num_frames=len(frames), size=frames.shape[1:3])
    from ..preprocess.parsing import load_parser

    return load_parser(parser, search_dirs=search_dirs).parse(frames, temporal_window=3).clothing_mask


def body_poses(frames: np.ndarray, poses: str | None, fps: float, search_dirs: list[str],
               notes: list[str]) -> tuple[np.ndarray, list | None]:
    """Pose images p_m at the frames' size, and the keypoints when DWPose produced them (None for a pose video)."""
    h, w = frames.shape[1:3]
    if poses:
        clip = read_video(poses, fps=fps)
        out, _ = center_crop_resize(clip.frames, h, w)
        if len(out) != len(frames):
            raise ValueError(f"the pose video has {len(out)} frames but the mannequin video {len(frames)}")
        return out, None
    from ..preprocess.dwpose import DWPoseDetector, render_poses
    from ..preprocess.smoothing import smooth_pose_sequence

    results = DWPoseDetector(search_dirs=search_dirs).detect(frames)
    found = [r.pose for r in results]
    if all(p is None for p in found):
        raise ValueError("DWPose found no person in any frame of the video")
    smoothed = smooth_pose_sequence(found, fps=fps)
    if smoothed.filled_frames:
        notes.append(f"no person detected in frames {smoothed.filled_frames}: poses filled from neighbours")
    return render_poses(smoothed.poses, h, w), smoothed.poses


def identity_inputs(photo: np.ndarray, h: int, w: int, keypoints: list | None, pack: str, search_dirs: list[str],
                    notes: list[str]) -> PlacedIdentity:
    """x_id placed on the mannequin's head (or centre-cropped without keypoints), p_id and ArcFace."""
    from ..preprocess.face import FaceAnalyzer

    face = FaceAnalyzer(pack, search_dirs=search_dirs).analyze(photo)
    if face.num_faces > 1:
        notes.append(f"{face.num_faces} faces in the identity photo: using the largest")
    head = head_from_poses(keypoints, h, w, h, w)[0] if keypoints else None
    placed = prepare_identity(photo, face, h, w, head)
    notes.append(f"identity photo: {placed.description}")
    return placed


def generate(pipe: M2HPipeline, video: str, identity: str, out: str, *, settings: SamplerSettings,
             masks: str | None = None, poses: str | None = None, max_frames: int | None = None,
             parser: str = "auto", face_pack: str = "antelopev2", search_dirs: list[str] | None = None,
             progress=None) -> GenerateReport:
    dirs = list(search_dirs or [])
    notes: list[str] = []
    clip = read_video(video, max_frames=max_frames)
    h, w = pipe.cfg.height, pipe.cfg.width
    frames, info = center_crop_resize(clip.frames, h, w)
    notes.append(f"video: {info.describe()}")
    m = clothing_masks(frames, masks, parser, dirs)
    p, keypoints = body_poses(frames, poses, clip.fps, dirs, notes)
    ident = identity_inputs(read_image(identity), h, w, keypoints, face_pack, dirs, notes)
    result = sample_video(pipe.model, pipe.encoders, to_tensor(frames), torch.from_numpy(m.astype(np.float32)),
                          to_tensor(p), to_tensor(ident.image[None])[0], to_tensor(ident.landmark_image[None])[0],
                          torch.from_numpy(ident.arcface), settings, progress=progress)
    pixels = (result.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    write_video(out, pixels, clip.fps)
    return GenerateReport(out=out, num_frames=len(pixels), fps=clip.fps, size=(h, w), notes=notes)
