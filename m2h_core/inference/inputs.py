"""One preprocessing pipeline for `m2h generate` and the ComfyUI nodes (paper Fig. 2b, left half).

(video, identity photo, optional user masks / poses) -> the sampler's typed inputs:

- `VideoInputs`: the clothing video v, its clothing masks M_c and pose images p_m at one working size
  (Algorithm 1, lines 12-13 take v ⊙ M_c and p_m);
- `IdentityInputs`: x_id placed where the mannequin's head is, p_id and the ArcFace embedding (Eq. 2's inputs).

Geometry: frames, masks and pose images are each centre-cropped to the model's aspect and resized to its size from
their own size (`prepare_video`), so masks or poses made at another resolution still line up when they share the
video's framing. The work is done in float32 in [0, 1] whatever the source (uint8 frames of a file, ComfyUI IMAGE
tensors), so the command line and the nodes give bit-identical inputs.

Checks: everything a user can get wrong (counts, sizes, empty masks, NaN) is checked when these objects are made,
before any model runs; `sample_video` only adds `check_pair` (the model's size multiple). The `read_*` helpers turn
a file that cannot be used into one line naming it, what it seems to be and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..frames import to_float, to_nchw, to_uint8  # noqa: F401 - to_uint8 re-exported for generate.py
from ..identity import head_from_poses, prepare_identity
from ..preprocess.model_files import describe_file
from ..video_io import (FrameStream, center_crop_resize, compute_center_crop, crop_resize_masks, read_image,
                        read_video)

FIT_CHUNK = 16  # frames converted to float32 and resized at a time (memory stays at model size)
PLACEMENTS = ("head_from_pose", "fit_photo")


class InputError(ValueError):
    """An input the user must change; the message names it and says what to do."""


# ------------------------------------------------------------------------------------------ the typed inputs


def _wxh(x: torch.Tensor) -> str:
    return f"{x.shape[-1]}x{x.shape[-2]} (WxH)"


@dataclass(frozen=True)
class VideoInputs:
    """v, M_c, p_m at one size, checked on construction (counts, sizes, an empty mask, NaN)."""

    frames: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    clothing_masks: torch.Tensor  # (N, H, W) float32 in [0, 1]
    pose_images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        f, m, p = self.frames, self.clothing_masks, self.pose_images
        if f.ndim != 4 or f.shape[1] != 3 or p.ndim != 4 or p.shape[1] != 3 or m.ndim != 3:
            raise InputError(f"frames {tuple(f.shape)}, masks {tuple(m.shape)} and pose images {tuple(p.shape)} must "
                             "be (N, 3, H, W), (N, H, W) and (N, 3, H, W)")
        n = f.shape[0]
        if n == 0 or m.shape[0] != n or p.shape[0] != n:
            raise InputError(f"{n} clothing frames, {m.shape[0]} clothing masks and {p.shape[0]} pose images: give "
                             "one mask and one pose image per frame (trim or re-extract them)")
        for name, x in (("clothing masks", m), ("pose images", p)):
            if tuple(x.shape[-2:]) != tuple(f.shape[-2:]):
                raise InputError(f"{name} are {_wxh(x)} but the frames are {_wxh(f)}: fit them with the frames' "
                                 "centre crop (inputs.prepare_video)")
        if float(m.amax()) <= 0:
            raise InputError("the clothing mask is empty in every frame, so no clothing would be kept: check the "
                             "segmentation's clothing classes, or your masks (white = clothing)")
        for name, x in (("frames", f), ("clothing masks", m), ("pose images", p)):
            if not torch.isfinite(x).all():
                raise InputError(f"the {name} contain NaN or inf")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[-2])

    @property
    def width(self) -> int:
        return int(self.frames.shape[-1])


@dataclass(frozen=True)
class IdentityInputs:
    """x_id and p_id (3, H, W) in [0, 1] at the video's size, the ArcFace embedding, and what was done."""

    image: torch.Tensor
    landmarks: torch.Tensor
    arcface: torch.Tensor  # (512,)
    description: str = ""
    face_box: tuple[float, float, float, float] | None = None  # in the placed image
    preview: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (H, W, 3) box + landmarks

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[0] != 3 or self.landmarks.shape != self.image.shape:
            raise InputError(f"the identity image {tuple(self.image.shape)} and landmark image "
                             f"{tuple(self.landmarks.shape)} must both be (3, H, W)")
        if self.arcface.ndim != 1:
            raise InputError(f"the ArcFace embedding must be a vector, got shape {tuple(self.arcface.shape)}")
        for name, x in (("identity image", self.image), ("ArcFace embedding", self.arcface)):
            if not torch.isfinite(x).all():
                raise InputError(f"the {name} contains NaN or inf")

    @property
    def height(self) -> int:
        return int(self.image.shape[-2])

    @property
    def width(self) -> int:
        return int(self.image.shape[-1])

    def at_size(self, height: int, width: int) -> "IdentityInputs":
        """The same identity centre-cropped/resized to another working size (the sampler node's 'keep' mode)."""
        if (height, width) == (self.height, self.width):
            return self
        both = torch.stack([self.image, self.landmarks]).permute(0, 2, 3, 1).numpy()
        out, _ = fit_frames(both, height, width)
        img, lmk = torch.from_numpy(out).permute(0, 3, 1, 2)
        box = self.face_box
        if box is not None:  # the face box follows the same crop (the zero-shot model crops the face with it)
            info = compute_center_crop(self.height, self.width, height, width)
            box = tuple(float(v) for v in info.map_points(np.asarray(box, np.float64).reshape(2, 2)).ravel())
        return IdentityInputs(img.contiguous(), lmk.contiguous(), self.arcface, self.description, box)


def check_pair(video: VideoInputs, identity: IdentityInputs, multiple: int) -> None:
    """What only the model knows: the size must be a multiple of its VAE factor, x_id at the frames' size."""
    h, w = video.height, video.width
    if h % multiple or w % multiple:
        raise InputError(f"frame size {w}x{h} (WxH) is not a multiple of {multiple}; resize or crop the video "
                         f"(e.g. to {w - w % multiple}x{h - h % multiple})")
    if (identity.height, identity.width) != (h, w):
        raise InputError(f"the identity image is {_wxh(identity.image)}; it must be at the frames' size {w}x{h} "
                         "(IdentityInputs.at_size)")


# ------------------------------------------------------------------------------------------ fitting


def fit_frames(frames: Any, height: int, width: int) -> tuple[np.ndarray, str]:
    """(N, H, W, C) frames (uint8, or float in [0, 1]) -> float32 (N, height, width, C) in [0, 1] by centre crop
    to width:height and resize, FIT_CHUNK frames at a time; returns the frames and a note for the log."""
    n, src_h, src_w = frames.shape[:3]
    if (src_h, src_w) == (height, width):
        return np.clip(to_float(frames), 0, 1), f"{width}x{height} (WxH): already the working size"
    out = np.empty((n, height, width, frames.shape[3]), np.float32)
    info = None
    for i in range(0, n, FIT_CHUNK):
        out[i: i + FIT_CHUNK], info = center_crop_resize(to_float(frames[i: i + FIT_CHUNK]), height, width)
    return np.clip(out, 0, 1, out=out), info.describe()


def fit_masks(masks: Any, height: int, width: int) -> tuple[np.ndarray, str]:
    """(N, H, W) masks (bool / uint8 / float) -> float32 (N, height, width) in [0, 1], the frames' crop."""
    m = to_float(masks) if np.asarray(masks).dtype != bool else np.asarray(masks, np.float32)
    if tuple(m.shape[1:3]) == (height, width):
        return np.clip(m, 0, 1), f"{width}x{height} (WxH): already the working size"
    info = compute_center_crop(m.shape[1], m.shape[2], height, width)
    return np.clip(crop_resize_masks(m, info), 0, 1), info.describe()


def check_counts(frames: int, masks: int | None = None, poses: int | None = None) -> None:
    """One mask and one pose image per frame (a single mask stands for every frame)."""
    bad = [(k, v) for k, v in (("clothing masks", masks), ("pose images", poses))
           if v is not None and v != frames and not (k == "clothing masks" and v == 1)]
    if bad:
        desc = ", ".join(f"{v} {k}" for k, v in bad)
        raise InputError(f"the video has {frames} frames but there are {desc}: give one per frame (a single mask "
                         f"is used for every frame); trim them or the video to {min([frames] + [v for _, v in bad])}"
                         " frames")


def prepare_video(frames: Any, masks: Any, poses: Any, height: int, width: int) -> VideoInputs:
    """The one fitting of v, M_c and p_m to (height, width): each centre-cropped from its own size.

    frames (N, H, W, 3) and poses (N, H', W', 3): uint8, or float in [0, 1] (numpy or torch, ComfyUI's layout);
    masks (N, H'', W'') or (1, H'', W'') (one for all frames): bool, uint8 or float in [0, 1].
    """
    n = int(frames.shape[0])  # counts and an empty mask: checked once, by VideoInputs
    f, n1 = fit_frames(frames, height, width)
    m, n2 = fit_masks(masks, height, width)
    p, n3 = fit_frames(poses, height, width)
    if m.shape[0] == 1 and n > 1:
        m = np.repeat(m, n, axis=0)
    return VideoInputs(to_nchw(f), torch.from_numpy(np.ascontiguousarray(m)), to_nchw(p),
                       (f"frames: {n1}", f"clothing masks: {n2}", f"pose images: {n3}"))


# ------------------------------------------------------------------------------------------ identity


def analyze_face(photo: np.ndarray, analyzer: Any, name: str = "the identity photo") -> tuple[Any, list[str]]:
    """`analyzer.analyze(photo)` with the photo's name in the no-face message; notes (several faces)."""
    from ..preprocess.face import NoFaceError

    try:
        face = analyzer.analyze(photo)
    except NoFaceError as e:
        raise NoFaceError(f"{name}: {e}") from None
    n = getattr(face, "num_faces", 1)
    return face, ([f"{n} faces in {name}: using the largest"] if n > 1 else [])


MAX_PHOTOS = 8
PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class PhotoSet:
    """Several photos of one person combined (issue 16): the face to place (the best photo's geometry with the
    averaged ArcFace embedding), which photo that is, every photo's cosine to the mean, and a preview strip."""

    photo: np.ndarray  # the chosen photo (uint8 RGB), x_id / p_id come from it
    face: Any  # its FaceResult, embedding replaced by the set's mean
    best: int
    names: tuple[str, ...]
    similarity: tuple[float, ...]
    kept: tuple[bool, ...]
    preview: np.ndarray | None  # (112, N * 112, 3) uint8; None for a single photo
    notes: tuple[str, ...] = ()


def identity_photo_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """`--identity` as given: one file, several files, or a folder (its images, sorted); 1-8 photos."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths: list[str] = []
    for item in items:
        s = os.fspath(item)
        if os.path.isdir(s):
            found = sorted(os.path.join(s, f) for f in os.listdir(s) if f.lower().endswith(PHOTO_EXTENSIONS))
            if not found:
                raise InputError(f"{s}: the identity folder holds no photos ({', '.join(PHOTO_EXTENSIONS)})")
            paths += found
        else:
            must_exist(s, "the identity photo")
            paths.append(s)
    if not paths:
        raise InputError("no identity photo given")
    if len(paths) > MAX_PHOTOS:
        raise InputError(f"{len(paths)} identity photos given; use 1 to {MAX_PHOTOS} photos of the same person")
    return paths


def combine_photos(photos: Sequence[np.ndarray], analyzer: Any, names: Sequence[str]) -> PhotoSet:
    """Analyse every photo's face; ArcFace embeddings L2-normalised and averaged, outliers (cosine < 0.4 to the
    mean of the others) dropped and reported; x_id / p_id from the most frontal, sharpest kept face. A set whose
    mean pairwise cosine is below `face.SAME_PERSON_COSINE` shows different people: refused, naming each photo."""
    from dataclasses import replace

    from ..preprocess import face as fc

    if not 1 <= len(photos) <= MAX_PHOTOS:
        raise InputError(f"{len(photos)} identity photos given; use 1 to {MAX_PHOTOS} photos of the same person")
    faces, notes = [], []
    for photo, name in zip(photos, names):
        f, more = analyze_face(photo, analyzer, name)
        faces.append(f)
        notes += more
    if len(faces) == 1:  # as before: the photo's own face and embedding, untouched
        small = fc.small_face_note(faces, names, 0)
        notes += [small] if small else []
        return PhotoSet(photos[0], faces[0], 0, (os.fspath(names[0]),), (1.0,), (True,), None, tuple(notes))
    emb = fc.mean_embedding(np.stack([f.embedding for f in faces]))
    if emb.mean_pairwise < fc.SAME_PERSON_COSINE:
        sims = ", ".join(f"{os.path.basename(n)} {s:.2f}" for n, s in zip(names, emb.similarity))
        raise InputError(f"the {len(faces)} identity photos seem to show different people (mean pairwise face "
                         f"similarity {emb.mean_pairwise:.2f} < {fc.SAME_PERSON_COSINE}; similarity to the mean: "
                         f"{sims}); give photos of one person only")
    best, why = fc.best_photo(faces, emb.kept)
    dropped = [f"{os.path.basename(n)} ({s:.2f})" for n, s, k in zip(names, emb.similarity, emb.kept) if not k]
    notes.append(f"identity from {int(emb.kept.sum())} of {len(faces)} photos (ArcFace embeddings averaged); "
                 f"x_id and p_id from {os.path.basename(names[best])}: {why}")
    if dropped:
        notes.append(f"dropped as outliers (cosine to the others' mean < {fc.OUTLIER_COSINE}): {', '.join(dropped)}")
    small = fc.small_face_note(faces, names, best)
    notes += [small] if small else []
    face = replace(faces[best], embedding=emb.mean.copy())
    return PhotoSet(photos[best], face, best, tuple(os.fspath(n) for n in names),
                    tuple(float(x) for x in emb.similarity), tuple(bool(k) for k in emb.kept),
                    fc.faces_preview(faces, emb, best), tuple(notes))


def place_identity(photo: np.ndarray, face: Any, height: int, width: int, *, placement: str = "head_from_pose",
                   poses: Sequence[Any] | None = None, pose_size: tuple[int, int] | None = None,
                   reference_frame: int = 0, face_scale: float = 1.0, identity_input: str = "full"
                   ) -> tuple[IdentityInputs, list[str]]:
    """x_id, p_id and ArcFace at (height, width) from the photo (uint8 RGB) and its analysed face.

    head_from_pose: the face is moved onto the head that `poses` (keypoints at `pose_size` = (H, W) of the video
    they were found in, mapped through the frames' centre crop) put in the reference frame, or the nearest frame
    with one; without a head anywhere it falls back to fit_photo. fit_photo: the photo centre-cropped.
    """
    if placement not in PLACEMENTS:
        raise InputError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    notes: list[str] = []
    head = None
    if placement == "head_from_pose":
        if poses is None:
            raise InputError("placement 'head_from_pose' needs the pose input (the body keypoints): connect M2H "
                             "DWPose's keypoints, or set placement to fit_photo")
        if not len(poses):
            raise InputError("the pose input has no frames")
        ph, pw = pose_size or (height, width)
        head, used = head_from_poses(poses, ph, pw, height, width, reference_frame)
        if head is None:
            notes.append("no head position could be estimated from the pose (no neck/shoulders found): the photo "
                         "is centre-cropped instead (fit_photo)")
        elif used != min(max(int(reference_frame), 0), len(poses) - 1):
            notes.append(f"no head position in frame {reference_frame}; used frame {used}")
    placed = prepare_identity(photo, face, height, width, head, face_scale, identity_input)
    notes.append(f"identity photo: {placed.description}")
    ident = IdentityInputs(to_nchw(to_float(placed.image)), to_nchw(to_float(placed.landmark_image)),
                           torch.from_numpy(placed.arcface), placed.description, placed.face_box,
                           torch.from_numpy(to_float(placed.preview)))
    return ident, notes


# ------------------------------------------------------------------------------------------ files


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unreadable(path: str | os.PathLike, what: str, e: BaseException, fix: str) -> InputError:
    return InputError(f"{os.fspath(path)}: cannot read it as {what} ({describe_file(path)}: {_first_line(e)}); "
                      f"{fix}")


def must_exist(path: str | os.PathLike, what: str) -> None:
    s = os.fspath(path)
    if not os.path.exists(s) and not any(c in s for c in "*?["):
        raise FileNotFoundError(f"{what} not found: {s}")


@dataclass
class FittedClip:
    """A video read at the working size: float32 (N, H, W, 3) frames in [0, 1], fps, what was done."""

    frames: np.ndarray
    fps: float
    notes: list[str] = field(default_factory=list)


def read_fitted(path: str | os.PathLike, size: tuple[int, int], max_frames: int | None = None,
                fps: float | None = None) -> FittedClip:
    """Decode one frame at a time and fit FIT_CHUNK frames at a time to `size` (height, width) with `fit_frames`:
    the same pixels as fitting the whole decoded video, but only working-size frames are ever kept."""
    stream = FrameStream(path, max_frames=max_frames, fps=fps)
    chunks, buf, note = [], [], ""
    for frame in stream:
        buf.append(frame)
        if len(buf) == FIT_CHUNK:
            fitted, note = fit_frames(np.stack(buf), *size)
            chunks.append(fitted)
            buf = []
    if buf:
        fitted, note = fit_frames(np.stack(buf), *size)
        chunks.append(fitted)
    if not chunks:
        raise ValueError("no frame could be decoded")
    return FittedClip(np.concatenate(chunks), stream.fps, [note] + list(stream.notes))


def read_video_file(path: str | os.PathLike, max_frames: int | None = None, fps: float | None = None,
                    what: str = "the mannequin video", size: tuple[int, int] | None = None):
    """`video_io.read_video` (or, with `size`, `read_fitted`: frames streamed and fitted to the working size) with
    a one-line message for a file that does not decode."""
    must_exist(path, what)
    try:
        if size is not None:
            return read_fitted(path, size, max_frames=max_frames, fps=fps)
        return read_video(path, max_frames=max_frames, fps=fps)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV / OpenCV raise many types for a bad file
        raise _unreadable(path, f"{what} (a video)", e, "give an .mp4/.webm/.mov/.gif file or a folder of "
                          "frames; re-export it if it plays elsewhere") from None


def read_photo(path: str | os.PathLike, what: str = "the identity photo") -> np.ndarray:
    """`video_io.read_image` (uint8 RGB) with a one-line message for a file that does not decode."""
    must_exist(path, what)
    try:
        return read_image(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _unreadable(path, f"{what} (an image)", e, "give a .png/.jpg/.webp photo") from None


def read_mask_file(path: str | os.PathLike, num_frames: int, capped: bool = False) -> np.ndarray:
    """User clothing masks (folder of images, .npy, image, video) at their own size as float32 (N, H, W).

    capped: the video was cut to its first `num_frames` frames (--frames): longer mask sequences are cut too."""
    from ..preprocess.masks import load_mask_sequence

    must_exist(path, "the clothing masks")
    try:
        masks = load_mask_sequence(path, num_frames=None)
    except Exception as e:  # noqa: BLE001
        raise _unreadable(path, "clothing masks", e, "give a folder of mask images, a .npy (N, H, W) array, one "
                          "image or a video (white = clothing)") from None
    if capped and len(masks) > num_frames:
        masks = masks[:num_frames]
    check_counts(num_frames, masks=len(masks))
    return masks.astype(np.float32)


def read_pose_file(path: str | os.PathLike, num_frames: int, fps: float, capped: bool = False,
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """User pose images (video or folder): uint8 (N, H, W, 3) at their own size, or with `size` float32 fitted to
    it (their own centre crop, as `prepare_video` would); `capped` as in read_mask_file."""
    clip = read_video_file(path, max_frames=num_frames if capped else None, fps=fps, what="the pose video",
                           size=size)
    check_counts(num_frames, poses=clip.frames.shape[0])
    return clip.frames
