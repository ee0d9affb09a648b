"""Training data: the on-disk clip cache written by `train/prepare_data.py`, and datasets that sample from it.

The cache holds one folder per video at the source resolution (frames, clothing / face masks, keypoints, landmark
images, ArcFace embeddings; the layout: `ClipCacheDataset`); cropping happens when sampling.

Sampling (paper Sec. IV-B): `num_frames` = 8 frames, every `stride` = 4th frame, from a random start. Videos
shorter than the 29-frame span get a smaller stride ((N-1)//(F-1), at least 1); videos with fewer than F frames
are refused (looping them, frames 0,1,2,0,1,2,..., would teach a jump every few frames): prepare_data skips them
(`--min-frames`, listed in failed.json) and `ClipCacheDataset` leaves out any that reach it, with a warning.
The identity image x_id (with its landmark image p_id and ArcFace embedding) is a *different* frame of the same
video that has a face - one not among the sampled frames when possible - unless the video has a `reference/`
identity. Frames, masks, poses and the identity are centre-cropped to the 2:1 (H:W)
training aspect and resized with the *same* transform (`m2h_core.video_io` geometry: area/bicubic for images,
nearest for masks). The pose images p_h are *drawn* at the output size from the cached keypoints mapped through
that transform (`CropInfo.map_points` + `draw_pose`, default line width), exactly as inference draws them at
the working size; the stored pose PNGs are cropped/resized only for caches without keypoints. `scale`
multiplies the output size (0.5 = the progressive-resolution half phase).

The split is stable: `write_split` keeps the assignments of an existing split.json (same seed and test
fraction) and assigns only videos that are new, each by a seeded hash of its id.

Randomness is a pure function of (seed, sample position), so a resumed run sees exactly the samples it would
have seen (`ResumableSampler`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from torch.utils.data import Dataset, Sampler

from ..frames import to_float, to_nchw
from ..inference.inputs import IdentityInputs, VideoInputs
from ..pose_render import PoseFrame, draw_pose, load_openpose_json
from ..video_io import CropInfo, apply_crop, compute_center_crop, crop_resize_keypoints, crop_resize_masks

CACHE_VERSION = 1
log = logging.getLogger("m2h")
SUBDIRS = ("frames", "clothing_masks", "face_masks", "poses", "landmarks")


class CacheError(ValueError):
    """A clip cache that cannot be used, with what is wrong and how to fix it."""


# ------------------------------------------------------------------------------------------------- sampling


def sample_frame_indices(num_video_frames: int, num_frames: int, stride: int, rng: np.random.Generator
                         ) -> np.ndarray:
    """`num_frames` indices, `stride` apart, from a random start (see module docstring for short videos)."""
    n = int(num_video_frames)
    if n < 1:
        raise ValueError("a video needs at least one frame")
    if n < num_frames:
        raise ValueError(f"a clip of {n} frames is shorter than the {num_frames}-frame training window (looping it "
                         "would jump back every few frames); use longer clips or fewer frames")
    stride = max(1, min(int(stride), (n - 1) // max(1, num_frames - 1)))
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, n - span + 1))
    return start + stride * np.arange(num_frames)


def pick_identity_frame(has_face: np.ndarray, exclude: Sequence[int], rng: np.random.Generator) -> int:
    """A frame with a face that is not in `exclude` if there is one, else any frame with a face."""
    faces = np.flatnonzero(np.asarray(has_face).astype(bool))
    if faces.size == 0:
        raise CacheError("no frame of this video has a face; prepare_data should have skipped it")
    others = np.setdiff1d(faces, np.asarray(exclude))
    pool = others if others.size else faces
    return int(pool[rng.integers(0, pool.size)])


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class ResumableSampler(Sampler):
    """Endless (clip, position) stream: position p is the p-th sample of the run, the clip a seeded permutation
    per epoch. `start` resumes at a position; `rank`/`world` shard positions across processes (p ≡ rank mod world).
    """

    def __init__(self, num_clips: int, seed: int = 0, start: int = 0, rank: int = 0, world: int = 1):
        if num_clips < 1:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self.start, self.rank, self.world = num_clips, seed, start, rank, world

    def clip_at(self, position: int) -> int:
        epoch, k = divmod(position, self.n)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(perm[k])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p = self.start + self.rank
        while True:
            yield self.clip_at(p), p
            p += self.world


def _index(idx) -> tuple[int, int]:
    if isinstance(idx, (tuple, list)):
        return int(idx[0]), int(idx[1])
    return int(idx), int(idx)


# ------------------------------------------------------------------------------------------------- transforms


def _mask_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.float32))


def map_pose(pose: PoseFrame | None, info: CropInfo) -> PoseFrame | None:
    """A source-pixel pose through the crop + resize `info`, as a pose of the output frame."""
    if pose is None:
        return None

    def tf(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else crop_resize_keypoints(a, info).astype(np.float32)

    return PoseFrame(body=tf(pose.body), hands=tf(pose.hands), face=tf(pose.face), feet=tf(pose.feet),
                     width=info.out_width, height=info.out_height)


def draw_poses(keypoints: Sequence[PoseFrame | None], info: CropInfo) -> np.ndarray:
    """(N, out_h, out_w, 3) uint8 body-pose images drawn at the output size (what inference feeds the model)."""
    out = np.zeros((len(keypoints), info.out_height, info.out_width, 3), np.uint8)
    for i, p in enumerate(keypoints):
        if p is not None:
            out[i] = draw_pose(map_pose(p, info), info.out_height, info.out_width)
    return out


def sampler_inputs(item: dict) -> tuple[VideoInputs, IdentityInputs]:
    """One dataset item (one clip, no batch dimension) as the sampler's typed inputs (validation, evaluation)."""
    masks = item["clothing_masks"]
    masks = masks[:, 0] if masks.ndim == 4 else masks
    return (VideoInputs(item["frames"], masks.float(), item["pose_images"]),
            IdentityInputs(item["identity_image"], item["identity_landmarks"], item["arcface"].reshape(-1)))


def transform_sample(frames: np.ndarray, clothing: np.ndarray, face: np.ndarray, poses: np.ndarray | None,
                     id_image: np.ndarray, id_landmarks: np.ndarray, height: int, width: int,
                     keypoints: Sequence[PoseFrame | None] | None = None
                     ) -> tuple[dict[str, torch.Tensor], CropInfo]:
    """Centre-crop to width:height and resize, the same transform for frames (N,H,W,3), masks (N,H,W) bool and
    poses (N,H,W,3); the identity image/landmarks get the same transform computed for their own size.
    With `keypoints` (per frame, source pixels) the pose images are drawn from them at the output size instead
    of cropping/resizing `poses`."""
    info = compute_center_crop(frames.shape[1], frames.shape[2], height, width)
    id_info = compute_center_crop(id_image.shape[0], id_image.shape[1], height, width)
    if keypoints is None and poses is None:
        raise ValueError("transform_sample needs pose images or keypoints")
    out = {
        "frames": to_nchw(to_float(apply_crop(frames, info))),
        "clothing_masks": _mask_tensor(crop_resize_masks(clothing.astype(bool), info)),
        "face_masks": _mask_tensor(crop_resize_masks(face.astype(bool), info)),
        "pose_images": to_nchw(to_float(draw_poses(keypoints, info) if keypoints is not None
                                        else apply_crop(poses, info))),
        "identity_image": to_nchw(to_float(apply_crop(id_image, id_info))),
        "identity_landmarks": to_nchw(to_float(apply_crop(id_landmarks, id_info))),
    }
    return out, info


# ------------------------------------------------------------------------------------------------- on-disk cache


def _read_png(path: Path, gray: bool = False) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise CacheError(f"{path} is missing or unreadable; re-run prepare_data for this video "
                         f"(delete the folder {path.parent.parent} first)")
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_png(path: Path, img: np.ndarray) -> None:
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    elif img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def frame_name(i: int) -> str:
    return f"{i:05d}.png"


@dataclass
class CachedVideo:
    id: str
    path: Path
    num_frames: int
    has_face: np.ndarray
    arcface: np.ndarray
    reference: dict | None
    has_keypoints: bool = False  # keypoints.json present: pose images are drawn from it
    src_size: tuple[int, int] = (0, 0)  # (height, width) of the cached frames


def list_complete(root: str | os.PathLike) -> list[str]:
    """Ids of the complete video folders of a cache (those with meta.json)."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "meta.json").is_file())


def read_split(root: str | os.PathLike) -> dict:
    path = Path(root) / "split.json"
    if not path.is_file():
        raise CacheError(f"{path} does not exist: run train/prepare_data.py --out {root} first")
    return json.loads(path.read_text())


class ClipCacheDataset(Dataset):
    """Samples from a prepare_data cache. Items: dict of tensors (see `transform_sample`) plus `arcface` (512,),
    `frame_indices` (F,), `identity_index`, `clip` and `position`. Index with an int or a (clip, position) pair
    (from `ResumableSampler`). Clips shorter than `num_frames` are left out with a warning (their ids in
    `short`); `num_frames=None`: only `window` is used (evaluation), every clip is kept.

    Cache layout (one folder per video; everything at the source resolution, cropping happens when sampling)::

        CACHE/
          split.json                    {"seed": s, "train": [ids...], "test": [ids...]}   (90/10, seeded; or
                                        fixed by a list of test video names: "test_names", "test_list")
          failed.json                   [{"video": path, "reason": "..."}]                (videos that were skipped)
          <id>/
            meta.json                   {"version": 1, "source": path, "num_frames": N, "height": H, "width": W,
                                         "fps": f, "frames_with_face": K, "has_reference": bool}
            frames/00000.png            v_h, RGB human frames
            clothing_masks/00000.png    M_c, 8-bit grey (0 / 255)
            face_masks/00000.png        M_id, 8-bit grey (0 / 255)
            poses/00000.png             p_h, rendered OpenPose-18 body pose (RGB, black background; only used when
                                        keypoints.json is absent)
            keypoints.json              per-frame keypoints (`m2h_core.pose_render.save_openpose_json` layout)
            landmarks/00000.png         p_id of every frame: the face-landmark image (black where no face)
            identity.safetensors        arcface (N, 512) float32 (L2-normalised ArcFace of each frame's face),
                                        face_boxes (N, 4) float32 x1, y1, x2, y2 (source pixels), has_face (N,) uint8
            reference/                  optional: a separate identity photo used instead of another frame
              image.png, landmarks.png, identity.safetensors {arcface (512,), face_box (4,)}

    A video folder is written under a temporary name and renamed into place when complete, so a folder with a
    `meta.json` is always whole (what makes `prepare_data` resumable).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train", *, num_frames: int | None = 8,
                 stride: int = 4, height: int = 512, width: int = 256, scale: float = 1.0, seed: int = 0,
                 ids: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CacheError(f"clip cache {self.root} does not exist: run train/prepare_data.py --out {self.root}")
        if ids is None:
            ids = read_split(self.root)[split] if split else list_complete(self.root)
        missing = [i for i in ids if not (self.root / i / "meta.json").is_file()]
        which = f"the '{split}' split" if split else "the given list"
        if missing:
            raise CacheError(f"{len(missing)} videos of {which} are not in {self.root} "
                             f"(e.g. {missing[:3]}); re-run prepare_data")
        if not ids:
            raise CacheError(f"{which} of {self.root} is empty")
        self.videos = [self._load(i) for i in ids]
        self.short = [v.id for v in self.videos if num_frames is not None and v.num_frames < num_frames]
        if self.short:
            listed = ", ".join(f"{v.id} ({v.num_frames})" for v in self.videos if v.id in self.short[:5])
            what = (f"{len(self.short)} of {len(self.videos)} clips of {which} have fewer frames than the "
                    f"{num_frames}-frame training window: {listed}{', ...' if len(self.short) > 5 else ''}")
            if len(self.short) == len(self.videos):
                raise CacheError(f"{what}; use longer clips or fewer frames (train config num_frames)")
            log.warning("%s; left out (prepare_data --min-frames %d skips them)", what, num_frames)
            self.videos = [v for v in self.videos if v.id not in self.short]
        self.num_frames, self.stride = num_frames, stride
        self.height, self.width, self.scale, self.seed = height, width, scale, seed

    def _load(self, vid: str) -> CachedVideo:
        d = self.root / vid
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            raise CacheError(f"{d} was written by cache version {meta.get('version')}; this code reads "
                             f"{CACHE_VERSION}: re-run prepare_data into a new folder")
        ident = load_np(str(d / "identity.safetensors"))
        ref = None
        if meta.get("has_reference"):
            r = load_np(str(d / "reference" / "identity.safetensors"))
            ref = {"arcface": r["arcface"].astype(np.float32)}
        return CachedVideo(vid, d, int(meta["num_frames"]), ident["has_face"].astype(bool),
                           ident["arcface"].astype(np.float32), ref, (d / "keypoints.json").is_file(),
                           (int(meta["height"]), int(meta["width"])))

    @staticmethod
    def _keypoints(v: CachedVideo, ind: np.ndarray) -> list[PoseFrame] | None:
        """The keypoints (source pixels) of frames `ind`; read per item, not kept in memory."""
        if not v.has_keypoints:
            return None
        kps = load_openpose_json(v.path / "keypoints.json")
        if len(kps) != v.num_frames:
            raise CacheError(f"{v.path}/keypoints.json has {len(kps)} frames, meta.json says {v.num_frames}; "
                             f"re-run prepare_data for this video (delete the folder {v.path} first)")
        out = [kps[int(i)] for i in ind]
        for k in out:  # the source frame size (a frame without a person is saved with canvas 0 x 0)
            k.height, k.width = v.src_size
        return out

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, idx) -> dict:
        clip, position = _index(idx)
        if self.num_frames is None:
            raise TypeError("this ClipCacheDataset was made with num_frames=None (evaluation): use window()")
        v = self.videos[clip % len(self.videos)]
        rng = np.random.default_rng([self.seed, position, clip])
        ind = sample_frame_indices(v.num_frames, self.num_frames, self.stride, rng)
        return self._build(v, ind, rng, clip, position)

    def window(self, clip: int, num_frames: int | None = None, start: int = 0, stride: int = 1) -> dict:
        """A deterministic window (evaluation): frames start, start+stride, ... (clamped to the video)."""
        v = self.videos[clip]
        n = min(num_frames or v.num_frames, max(1, (v.num_frames - start + stride - 1) // stride))
        ind = start + stride * np.arange(n)
        return self._build(v, ind, np.random.default_rng([self.seed, clip]), clip, -1)

    def _build(self, v: CachedVideo, ind: np.ndarray, rng: np.random.Generator, clip: int, position: int) -> dict:
        def read(sub: str, gray: bool = False) -> np.ndarray:
            return np.stack([_read_png(v.path / sub / frame_name(i), gray) for i in ind])

        frames = read("frames")
        keypoints = self._keypoints(v, ind)
        poses = read("poses") if keypoints is None else None
        clothing, face = read("clothing_masks", True) > 127, read("face_masks", True) > 127
        if v.reference is not None:
            id_img = _read_png(v.path / "reference" / "image.png")
            id_lmk = _read_png(v.path / "reference" / "landmarks.png")
            arcface, id_index = v.reference["arcface"], -1
        else:
            id_index = pick_identity_frame(v.has_face, ind, rng)
            id_img = _read_png(v.path / "frames" / frame_name(id_index))
            id_lmk = _read_png(v.path / "landmarks" / frame_name(id_index))
            arcface = v.arcface[id_index]
        h, w = output_size(self.height, self.width, self.scale)
        out, _ = transform_sample(frames, clothing, face, poses, id_img, id_lmk, h, w, keypoints=keypoints)
        out.update(arcface=torch.from_numpy(np.array(arcface, np.float32)), frame_indices=torch.from_numpy(ind),
                   identity_index=id_index, clip=clip, position=position, id=v.id)
        return out


# ------------------------------------------------------------------------------------------------- in memory


def _clip_field(clip, *names):
    for n in names:
        if hasattr(clip, n):
            return getattr(clip, n)
    raise AttributeError(f"SyntheticClip has none of {names}")


class SyntheticClipDataset(Dataset):
    """The same sampling and transform over in-memory `m2h_core.demo.synthetic.SyntheticClip`s (demo, tests).

    The human frames are v_h; the clip's separate identity image / landmarks / embedding are x_id, p_id, Arc."""

    def __init__(self, clips: Sequence, *, num_frames: int = 8, stride: int = 4, height: int = 64, width: int = 32,
                 scale: float = 1.0, seed: int = 0):
        if not clips:
            raise ValueError("no synthetic clips given")
        self.clips = list(clips)
        self.num_frames, self.stride = num_frames, stride
        self.height, self.width, self.scale, self.seed = height, width, scale, seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, idx) -> dict:
        clip_i, position = _index(idx)
        c = self.clips[clip_i % len(self.clips)]
        frames = np.asarray(_clip_field(c, "human_frames", "human", "frames"))
        rng = np.random.default_rng([self.seed, position, clip_i])
        ind = sample_frame_indices(len(frames), self.num_frames, self.stride, rng)
        h, w = output_size(self.height, self.width, self.scale)
        out, _ = transform_sample(frames[ind], np.asarray(c.clothing_mask)[ind], np.asarray(c.face_mask)[ind],
                                  np.asarray(c.pose_images)[ind], np.asarray(c.identity_image),
                                  np.asarray(c.identity_landmarks), h, w)
        out.update(arcface=torch.from_numpy(np.asarray(c.identity_embedding, np.float32).copy()),
                   frame_indices=torch.from_numpy(ind), identity_index=-1, clip=clip_i, position=position)
        return out


# ------------------------------------------------------------------------------------------------- writing


def mask_box(mask: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 (exclusive) of a bool mask's bounding box; zeros when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.zeros(4, np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def write_cached_video(root: str | os.PathLike, vid: str, *, frames: np.ndarray, clothing_masks: np.ndarray,
                       face_masks: np.ndarray, pose_images: np.ndarray, poses: Sequence, landmarks: np.ndarray,
                       arcface: np.ndarray, face_boxes: np.ndarray, has_face: np.ndarray, fps: float,
                       source: str, reference: dict | None = None) -> Path:
    """Write one video folder of the cache layout (see module docstring) atomically: everything goes into a
    temporary folder that is renamed to `<root>/<vid>` at the end. `poses`: per-frame `PoseFrame` or None.
    `reference`: optional {"image", "landmarks" (H,W,3) uint8, "arcface" (512,), "face_box" (4,)}."""
    import shutil

    from safetensors.numpy import save_file as save_np

    from ..pose_render import save_openpose_json

    root = Path(root)
    n = len(frames)
    for name, arr in (("clothing_masks", clothing_masks), ("face_masks", face_masks), ("pose_images", pose_images),
                      ("landmarks", landmarks), ("arcface", arcface), ("face_boxes", face_boxes),
                      ("has_face", has_face), ("poses", poses)):
        if len(arr) != n:
            raise ValueError(f"{vid}: {n} frames but {len(arr)} {name}")
    final = root / vid
    tmp = root / f".tmp-{vid}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in SUBDIRS:
        (tmp / sub).mkdir(parents=True)
    for i in range(n):
        write_png(tmp / "frames" / frame_name(i), np.asarray(frames[i], np.uint8))
        write_png(tmp / "clothing_masks" / frame_name(i), np.asarray(clothing_masks[i]).astype(bool))
        write_png(tmp / "face_masks" / frame_name(i), np.asarray(face_masks[i]).astype(bool))
        write_png(tmp / "poses" / frame_name(i), np.asarray(pose_images[i], np.uint8))
        write_png(tmp / "landmarks" / frame_name(i), np.asarray(landmarks[i], np.uint8))
    save_openpose_json(list(poses), tmp / "keypoints.json")
    save_np({"arcface": np.ascontiguousarray(arcface, np.float32),
             "face_boxes": np.ascontiguousarray(face_boxes, np.float32),
             "has_face": np.ascontiguousarray(has_face, np.uint8)}, str(tmp / "identity.safetensors"))
    if reference is not None:
        (tmp / "reference").mkdir()
        write_png(tmp / "reference" / "image.png", np.asarray(reference["image"], np.uint8))
        write_png(tmp / "reference" / "landmarks.png", np.asarray(reference["landmarks"], np.uint8))
        save_np({"arcface": np.ascontiguousarray(reference["arcface"], np.float32),
                 "face_box": np.ascontiguousarray(reference.get("face_box", np.zeros(4)), np.float32)},
                str(tmp / "reference" / "identity.safetensors"))
    h, w = np.asarray(frames[0]).shape[:2]
    meta = {"version": CACHE_VERSION, "source": str(source), "num_frames": n, "height": int(h), "width": int(w),
            "fps": float(fps), "frames_with_face": int(np.asarray(has_face).astype(bool).sum()),
            "has_reference": reference is not None}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _hash_unit(seed: int, vid: str) -> float:
    """A uniform number in [0, 1) from (seed, video id) - stable across runs and machines."""
    import hashlib

    h = hashlib.sha256(f"{int(seed)}:{vid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def name_key(name: str) -> str:
    """The file stem of a video name, path or URL ('https://x/y/91BjuE6irxS.mp4?dl=1' -> '91BjuE6irxS')."""
    base = str(name).strip().split("?")[0].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def match_test_names(root: str | os.PathLike, ids: Sequence[str], names: Sequence[str]
                     ) -> tuple[list[str], list[str]]:
    """(cache ids in the list, names that match no video): a name matches a video whose id equals it or whose
    source file (meta.json "source") has the same stem (`name_key`)."""
    wanted = {name_key(n): n for n in names if str(n).strip()}
    matched, seen = [], set()
    for vid in ids:
        try:
            source = json.loads((Path(root) / vid / "meta.json").read_text()).get("source", "")
        except (OSError, ValueError):
            source = ""
        for key in (vid, name_key(source) if source else None):
            if key in wanted:
                matched.append(vid)
                seen.add(key)
                break
    return sorted(matched), [n for k, n in wanted.items() if k not in seen]


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Video names from a text file, one a line (file names, paths or URLs; blank lines and # comments skipped)."""
    p = Path(path)
    if not p.is_file():
        raise CacheError(f"test list {p} does not exist")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def write_split(root: str | os.PathLike, seed: int = 0, test_fraction: float = 0.1,
                test_names: Sequence[str] | None = None, test_list: str | None = None) -> dict:
    """Seeded train/test split over the cache's complete videos.

    A fresh split is a seeded permutation (exactly round(fraction * n) test videos, at least one of each when
    there are two or more). When split.json exists with the same seed and test fraction, its assignments are
    kept (videos no longer in the cache are dropped) and only new videos are assigned, each to 'test' when a
    seeded hash of its id is below `test_fraction` - adding videos never moves a video between the splits.

    `test_names` (e.g. the lines of UBC Fashion's fashion_test.txt; `test_list` names the file) fix the test set
    instead: the videos they match (`match_test_names`) are 'test', all others 'train'. The names are stored in
    split.json ("test_names", "test_list", "unmatched") and reused by later calls that give none."""
    ids = list_complete(root)
    old = None
    path = Path(root) / "split.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
    if test_names is None and old and old.get("test_names") is not None:
        test_names, test_list = old["test_names"], old.get("test_list")
    if test_names is not None:
        test, unmatched = match_test_names(root, ids, test_names)
        split = {"seed": seed, "test_fraction": None, "test_list": test_list, "test_names": list(test_names),
                 "unmatched": unmatched, "train": sorted(set(ids) - set(test)), "test": test}
        tmp = Path(root) / ".split.json.tmp"
        tmp.write_text(json.dumps(split, indent=1))
        os.replace(tmp, path)
        return split
    if old and old.get("seed") == seed and old.get("test_fraction") == test_fraction:
        present = set(ids)
        old_test = set(old.get("test", [])) & present
        old_train = set(old.get("train", [])) & present
        new = [i for i in ids if i not in old_test and i not in old_train]
        test = sorted(old_test | {i for i in new if _hash_unit(seed, i) < test_fraction})
    else:
        perm = np.random.default_rng(seed).permutation(len(ids))
        n_test = int(round(test_fraction * len(ids)))
        if len(ids) >= 2 and test_fraction > 0:
            n_test = max(1, min(len(ids) - 1, n_test))
        test = sorted(ids[i] for i in perm[:n_test])
    split = {"seed": seed, "test_fraction": test_fraction, "train": sorted(set(ids) - set(test)), "test": test}
    tmp = Path(root) / ".split.json.tmp"
    tmp.write_text(json.dumps(split, indent=1))
    os.replace(tmp, Path(root) / "split.json")
    return split
