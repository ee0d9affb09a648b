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
from ..frames import to_nhwc
from .pipeline import M2HPipeline, check_model_files, load_pipeline
from .sampler import SamplerSettings, sample_video
from ..config import M2HConfig
from ..video_io import AudioSource, VideoWriter, check_output_path

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
    identity: str | list[str]  # one photo, several (1-8, one person), or a folder of them
    out: str
    masks: str | None = None  # user clothing masks instead of the parsing model
    poses: str | None = None  # user pose video instead of DWPose
    max_frames: int | None = None
    parser: str = "auto"
    face_pack: str = "antelopev2"
    search_dirs: list[str] = field(default_factory=list)
    garment_lock: bool = False  # the source's garment pixels inside the eroded clothing mask (compositing.py)
    keep_background: bool = False  # the source's pixels outside the generated person


class Preprocessors:
    """The preprocessing models, each loaded on first use and kept: `m2h batch` loads each once for all jobs."""

    def __init__(self, search_dirs: list[str]):
        self.search_dirs = list(search_dirs)
        self._cache: dict[tuple[str, str], object] = {}

    def _get(self, kind: str, name: str, make: Callable[[], object]):
        if (kind, name) not in self._cache:
            self._cache[(kind, name)] = make()
        return self._cache[(kind, name)]

    def parser(self, name: str = "auto"):
        from ..preprocess.parsing import load_parser

        return self._get("parser", name, lambda: load_parser(name, search_dirs=self.search_dirs))

    def dwpose(self):
        from ..preprocess.dwpose import DWPoseDetector

        return self._get("dwpose", "", lambda: DWPoseDetector(search_dirs=self.search_dirs))

    def face(self, pack: str = "antelopev2"):
        from ..preprocess.face import FaceAnalyzer

        return self._get("face", pack, lambda: FaceAnalyzer(pack, search_dirs=self.search_dirs))


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


def detect_poses(frames: np.ndarray, fps: float, search_dirs: list[str], notes: list[str],
                 models: Preprocessors | None = None) -> tuple[np.ndarray, list]:
    """DWPose on uint8 model-size frames: rendered pose images and the smoothed keypoints."""
    from ..preprocess.dwpose import render_poses
    from ..preprocess.smoothing import smooth_pose_sequence

    found = [r.pose for r in (models or Preprocessors(search_dirs)).dwpose().detect(frames)]
    if all(p is None for p in found):
        raise inputs.InputError("DWPose found no person in any frame of the video: check that it shows the whole "
                                "mannequin and is not too dark, or give --poses")
    smoothed = smooth_pose_sequence(found, fps=fps)
    if smoothed.filled_frames:
        notes.append(f"no person detected in frames {smoothed.filled_frames}: poses filled from neighbours")
    h, w = frames.shape[1:3]
    return render_poses(smoothed.poses, h, w), smoothed.poses


@dataclass
class Sources:
    """What `m2h generate` reads from files, before any model: the source-size frames, fps, photo, user inputs."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    fps: float
    photo: np.ndarray  # (H, W, 3) uint8, the first identity photo
    masks: np.ndarray | None  # user masks (N or 1, H', W') float32
    poses: np.ndarray | None  # user pose images (N, H'', W'', 3) uint8
    notes: list[str]
    photos: list[np.ndarray] = field(default_factory=list)  # every identity photo (1-8)
    photo_names: list[str] = field(default_factory=list)


def read_sources(req: GenerateRequest, size: tuple[int, int] | None = None) -> Sources:
    """Read and check every input file (decodable, counts, an empty user mask, a photo big enough for a face).

    With `size` (the model's height, width) the video and pose video are streamed and fitted to it frame by frame,
    so a long 1080p video never exists at its own size; masks are read at theirs and fitted in prepare_video."""
    from ..preprocess.face import MIN_FACE_IMAGE_SIDE

    names = inputs.identity_photo_paths(req.identity)
    clip = inputs.read_video_file(req.video, max_frames=req.max_frames, size=size)
    photos = [inputs.read_photo(name) for name in names]
    for name, photo in zip(names, photos):
        if min(photo.shape[:2]) < MIN_FACE_IMAGE_SIDE:
            raise inputs.InputError(f"{name} is {photo.shape[1]}x{photo.shape[0]} (WxH): too small to hold a "
                                    "detectable face; use a photo with the face at least ~100 px wide")
    n, capped = clip.frames.shape[0], req.max_frames is not None
    masks = inputs.read_mask_file(req.masks, n, capped) if req.masks else None
    if masks is not None and float(masks.max()) <= 0:
        raise inputs.InputError(f"{req.masks}: the clothing mask is empty in every frame (white = clothing)")
    poses = inputs.read_pose_file(req.poses, n, clip.fps, capped, size=size) if req.poses else None
    notes = list(getattr(clip, "notes", []))
    if size is not None and notes:
        notes[0] = f"frames: {notes[0]}"
    return Sources(clip.frames, clip.fps, photos[0], masks, poses, notes, photos, names)


@dataclass
class Preprocessed:
    video: inputs.VideoInputs
    identity: inputs.IdentityInputs
    photos: inputs.PhotoSet  # the photo(s) and the face chosen (the zero-shot mode crops CLIP's face from it)
    keypoints: list | None  # DWPose keypoints at the model's size (None with --poses)
    person_mask: np.ndarray | None  # (N, h, w) bool, the parser's person (only when asked for)


def preprocess(src: Sources, req: GenerateRequest, cfg: M2HConfig, notes: list[str],
               models: Preprocessors | None = None, person_mask: bool = False) -> Preprocessed:
    """The preprocessing models, cheapest check first: parsing (an empty result stops here), DWPose, the face.
    person_mask: also the parser's person mask (the zero-shot mode's regenerate mask), parsing even with --masks."""
    models = models or Preprocessors(req.search_dirs)
    h, w = cfg.height, cfg.width
    fitted = None
    if src.masks is None or src.poses is None or person_mask:  # the models read the frames at the model's size
        fitted = inputs.to_uint8(inputs.fit_frames(src.frames, h, w)[0])
    parsed = None
    if src.masks is None or person_mask:
        parsed = models.parser(req.parser).parse(fitted, temporal_window=3)
    masks = src.masks
    if masks is None:
        masks = parsed.clothing_mask
        if not masks.any():
            raise inputs.InputError(f"{req.video}: the parsing model found no clothing in any frame; check the "
                                    "video or give --masks")
    poses, keypoints = src.poses, None
    if poses is None:
        poses, keypoints = detect_poses(fitted, src.fps, req.search_dirs, notes, models)
    video = inputs.prepare_video(src.frames, masks, poses, h, w)
    photos = src.photos or [src.photo]
    names = src.photo_names or [os.fspath(req.identity)]
    chosen = inputs.combine_photos(photos, models.face(req.face_pack), names)
    face, face_notes = chosen.face, list(chosen.notes)
    ident, id_notes = inputs.place_identity(chosen.photo, face, h, w, poses=keypoints,
                                            identity_input=cfg.identity_input,
                                            placement="head_from_pose" if keypoints else "fit_photo")
    notes += (([video.notes[1]] if req.masks else [])
              + face_notes + id_notes)
    return Preprocessed(video, ident, chosen, keypoints, parsed.person_mask if person_mask else None)


def composite_output(frames: np.ndarray, video: inputs.VideoInputs, req: GenerateRequest, models: Preprocessors,
                     notes: list[str], start: int = 0) -> np.ndarray:
    """Garment lock / keep background (compositing.py) on the generated float (N, H, W, 3) frames, which are the
    video's frames start, start + 1, ... (frame by frame: a chunk gives the same as the whole video)."""
    from .compositing import CompositeSettings, composite_with_parser

    cs = CompositeSettings.for_height(video.height, req.garment_lock, req.keep_background)
    part = slice(start, start + len(frames))
    out, note = composite_with_parser(frames, to_nhwc(video.frames[part]).numpy(),
                                      video.clothing_masks[part].numpy() > 0.5, models.parser(req.parser), cs)
    notes.append(note)
    return out


def generate(files: ModelFiles, req: GenerateRequest, settings: SamplerSettings | None = None,
             progress: Callable[[int, int], None] | None = None, *, models: Preprocessors | None = None,
             pipeline: M2HPipeline | None = None) -> GenerateReport:
    """Checks without models (output, model-file headers, input files), preprocessing models, then M2H.

    `models` / `pipeline`: already loaded ones (m2h batch), else each is loaded here."""
    check_output_path(req.out, create=False)
    cfg = files.check() if pipeline is None else pipeline.model.cfg
    src = read_sources(req, (cfg.height, cfg.width))
    notes: list[str] = []
    models = models or Preprocessors(req.search_dirs)
    pre = preprocess(src, req, cfg, notes, models)
    video, ident = pre.video, pre.identity
    if req.garment_lock or req.keep_background:
        models.parser(req.parser)  # a missing parsing model fails here, before sampling
    pipe = pipeline or files.load()
    sampled = sample_video(pipe.model, pipe.encoders, video, ident, settings, progress=progress, decode=False)
    notes += sampled.notes
    latents = sampled.latents
    written = write_output(latents, pipe.encoders, video, req, models, src.fps, notes)
    return GenerateReport(req.out, written, src.fps, cfg.width, cfg.height, src.notes + notes)


DECODE_CHUNK = 16  # frames decoded, composited and written at a time (a multiple of the parser's batch of 4)


def write_output(latents: torch.Tensor, encoders, video: inputs.VideoInputs, req: GenerateRequest,
                 models: Preprocessors, fps, notes: list[str], chunk: int = DECODE_CHUNK) -> int:
    """Decode `chunk` frames at a time, composite them (garment lock / keep background work frame by frame) and
    write them straight into the video: the decoded video is never held whole; the source's sound over the same
    frames goes with them (a note says why where it cannot). Returns the frames written."""
    compositing = req.garment_lock or req.keep_background
    written, note = 0, []
    audio = AudioSource.for_frames(req.video, latents.shape[0], fps)
    try:
        with VideoWriter(req.out, fps, audio=audio) as out:
            for s in range(0, latents.shape[0], chunk):
                frames = to_nhwc(encoders.decode(latents[s: s + chunk]).float().cpu()).numpy()
                if compositing:
                    frames = composite_output(frames, video, req, models, note, start=s)
                out.write(inputs.to_uint8(frames))
                written += len(frames)
    except OSError as e:
        raise inputs.InputError(f"{req.out}: could not write the video ({e.strerror or e})") from None
    notes += note[:1] + ([out.info.audio] if out.info.audio else [])  # note[:1]: the same note for every chunk
    return written
