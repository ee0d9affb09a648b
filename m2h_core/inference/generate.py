"""`m2h generate`: mannequin video file + identity photo -> human video file (paper Fig. 2b, end to end).

Fail fast: every check that needs no model runs first (output writable, model files' headers and presets, the
video / photo / masks / poses decode, counts, an empty user mask), then the preprocessing models in order of cost
(human parsing -> the empty-mask check at once -> DWPose -> face analysis), then the M2H model and the sampler.
The inputs are built by `inputs.py`, the same code the nodes use.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import inputs
from .pipeline import M2HPipeline, check_model_files, load_pipeline
from .sampler import SamplerSettings, sample_video
from ..config import M2HConfig
from ..video_io import write_video

log = logging.getLogger("m2h")


@dataclass
class ModelFiles:
    """Where the M2H model comes from; `check` reads headers only, `load` builds the pipeline."""

    checkpoint: str
    base: str | None = None
    clip_vision: str | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def check(self) -> M2HConfig:
        return check_model_files(self.checkpoint, self.base, self.clip_vision)

    def load(self) -> M2HPipeline:
        return load_pipeline(self.checkpoint, base=self.base, clip_vision=self.clip_vision, device=self.device,
                             dtype=self.dtype)


@dataclass
class GenerateRequest:
    video: str
    identity: str
    out: str
    masks: str | None = None  # user clothing masks instead of the parsing model
    poses: str | None = None  # user pose video instead of DWPose
    max_frames: int | None = None
    parser: str = "auto"
    face_pack: str = "antelopev2"
    search_dirs: list[str] = field(default_factory=list)


@dataclass
class GenerateReport:
    out: str
    num_frames: int
    fps: float
    width: int
    height: int
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height} (WxH)"


def parse_masks(frames: np.ndarray, parser: str, search_dirs: list[str]) -> np.ndarray:
    """Clothing masks of uint8 model-size frames from the human-parsing model."""
    from ..preprocess.parsing import load_parser

    return load_parser(parser, search_dirs=search_dirs).parse(frames, temporal_window=3).clothing_mask


def detect_poses(frames: np.ndarray, fps: float, search_dirs: list[str], notes: list[str]
                 ) -> tuple[np.ndarray, list]:
    """DWPose on uint8 model-size frames: rendered pose images and the smoothed keypoints."""
    from ..preprocess.dwpose import DWPoseDetector, render_poses
    from ..preprocess.smoothing import smooth_pose_sequence

    found = [r.pose for r in DWPoseDetector(search_dirs=search_dirs).detect(frames)]
    if all(p is None for p in found):
        raise inputs.InputError("DWPose found no person in any frame of the video: check that it shows the whole "
                                "mannequin and is not too dark, or give --poses")
    smoothed = smooth_pose_sequence(found, fps=fps)
    if smoothed.filled_frames:
        notes.append(f"no person detected in frames {smoothed.filled_frames}: poses filled from neighbours")
    h, w = frames.shape[1:3]
    return render_poses(smoothed.poses, h, w), smoothed.poses


def generate(files: ModelFiles, req: GenerateRequest, settings: SamplerSettings | None = None,
             progress: Callable[[int, int], None] | None = None) -> GenerateReport:
    inputs.check_output_path(req.out)
    cfg = files.check()
    h, w = cfg.height, cfg.width
    clip = inputs.read_video_file(req.video, max_frames=req.max_frames)
    photo = inputs.read_photo(req.identity)
    n, capped = clip.frames.shape[0], req.max_frames is not None
    user_masks = inputs.read_mask_file(req.masks, n, capped) if req.masks else None
    user_poses = inputs.read_pose_file(req.poses, n, clip.fps, capped) if req.poses else None
    if user_masks is not None:
        if float(user_masks.max()) <= 0:
            raise inputs.InputError(f"{req.masks}: the clothing mask is empty in every frame (white = clothing)")
    settings, notes = (settings or SamplerSettings()).for_video(cfg, n)
    # --- preprocessing models (the masks first: an empty parse stops before DWPose and the face analysis)
    fitted = inputs.to_uint8(inputs.fit_frames(clip.frames, h, w)[0]) if user_masks is None or user_poses is None \
        else None
    masks = user_masks if user_masks is not None else parse_masks(fitted, req.parser, req.search_dirs)
    if user_masks is None and not masks.any():
        raise inputs.InputError(f"{req.video}: the parsing model found no clothing in any frame; check the video "
                                "or give --masks")
    keypoints = None
    if user_poses is None:
        user_poses, keypoints = detect_poses(fitted, clip.fps, req.search_dirs, notes)
    video = inputs.prepare_video(clip.frames, masks, user_poses, h, w)
    from ..preprocess.face import FaceAnalyzer

    face, face_notes = inputs.analyze_face(photo, FaceAnalyzer(req.face_pack, search_dirs=req.search_dirs),
                                           os.fspath(req.identity))
    ident, id_notes = inputs.place_identity(photo, face, h, w, placement="head_from_pose" if keypoints else
                                            "fit_photo", poses=keypoints, identity_input=cfg.identity_input)
    notes += (list(getattr(clip, "notes", [])) + [video.notes[0]] + ([video.notes[1]] if req.masks else [])
              + ([video.notes[2]] if req.poses else []) + face_notes + id_notes)
    # --- the M2H model
    pipe = files.load()
    result = sample_video(pipe.model, pipe.encoders, video, ident, settings, progress=progress)
    pixels = inputs.to_uint8(result.frames.permute(0, 2, 3, 1))
    try:
        write_video(req.out, pixels, clip.fps)
    except OSError as e:
        raise inputs.InputError(f"{req.out}: could not write the video ({e.strerror or e})") from None
    return GenerateReport(req.out, len(pixels), clip.fps, w, h, notes)
