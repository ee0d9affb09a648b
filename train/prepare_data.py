"""Preprocess human videos into the clip cache that training reads (layout: `m2h_core/training/dataset.py`).

    python train/prepare_data.py --videos DIR --out CACHE [--models DIR] [--max-side 768] [--max-frames 300]
                                 [--min-frames 8]
    python train/prepare_data.py --synthetic 50 --out CACHE [--size 128x64] [--frames 32]

Per video: human parsing (clothing mask M_c), DWPose (body pose images p_h + keypoints), insightface on every
frame (ArcFace embedding, face box, face mask M_id, landmark image p_id). Model files are found locally
(`--models`, $M2H_MODELS, ComfyUI's models folder; see `m2h doctor`); nothing is downloaded.

Resumable: videos whose folder is complete are skipped, so re-running after a crash or with new videos only
does the missing work. A video that fails (unreadable, shorter than --min-frames, no person, no face) is skipped
and listed with the reason in CACHE/failed.json; the run goes on. A missing model file stops the run at once (it
would fail every video).
At the end CACHE/split.json gets a seeded 90/10 train/test split of all complete videos (the paper's Sec. IV-A;
stable when videos are added), or, with `--test-list FILE` (e.g. UBC Fashion's fashion_test.txt: file names,
paths or URLs, one a line), exactly the videos that file names; the list is kept in split.json for later runs.
train/evaluate.py evaluates CACHE/split.json's "test" videos by default and records their SHA-256, so runs on the
same cache are comparable. Re-running with only a new --test-list re-writes the split without re-processing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.training.dataset import (
    CacheError,
    list_complete,
    mask_box,
    read_name_list,
    write_cached_video,
    write_split,
)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v")


class SkipVideo(Exception):
    """This video cannot be used (the reason is recorded in failed.json)."""


def video_id(path: Path, root: Path) -> str:
    """A folder-safe id: the relative path's stem plus a short hash (two 'a.mp4' in different folders differ)."""
    rel = path.relative_to(root).as_posix()
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60]
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def find_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


@dataclass
class Preprocessors:
    """The three analyses; each takes (N, H, W, 3) uint8 RGB frames.

    parse(frames) -> (clothing_masks (N,H,W) bool, person_masks (N,H,W) bool)
    pose(frames) -> (pose_images (N,H,W,3) uint8, poses: list of PoseFrame | None)
    face(frame) -> None (no face) or dict(embedding (512,), bbox (4,), mask (H,W) bool, landmark_image (H,W,3))
    """

    parse: Callable
    pose: Callable
    face: Callable

    @classmethod
    def from_models(cls, models: str | None = None, parser: str = "auto", face_pack: str = "antelopev2",
                    device: str = "cpu") -> Preprocessors:
        """The project's preprocessors from local model files (clear MissingModelError naming each file)."""
        from m2h_core.preprocess.dwpose import DWPoseDetector
        from m2h_core.preprocess.face import FaceAnalyzer, NoFaceError
        from m2h_core.preprocess.parsing import load_parser

        dirs = [models] if models else None
        hp = load_parser(parser, search_dirs=dirs, device=device)
        dw = DWPoseDetector(search_dirs=dirs) if dirs else DWPoseDetector()
        fa = FaceAnalyzer(face_pack, search_dirs=dirs)

        def parse(frames):
            r = hp.parse(frames)
            return r.clothing_mask, r.person_mask

        def pose(frames):
            res = dw.detect(frames)
            return dw.render(res), [r.pose for r in res]

        def face(frame):
            try:
                r = fa.analyze(frame)
            except NoFaceError:
                return None
            return {"embedding": r.embedding, "bbox": r.bbox, "mask": r.mask, "landmark_image": r.landmark_image}

        return cls(parse, pose, face)


def downscale(frames: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    h, w = frames.shape[1:3]
    if not max_side or max(h, w) <= max_side:
        return frames
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


MIN_FRAMES = 8  # the paper's training window: shorter clips would loop (a jump every few frames)


def process_video(path: Path, vid: str, out: Path, pre: Preprocessors, max_side: int | None = 768,
                  max_frames: int | None = None, min_face_frames: int = 1, min_frames: int = MIN_FRAMES) -> Path:
    from m2h_core.video_io import VideoReadError, read_video

    try:
        clip = read_video(path, max_frames=max_frames)
    except (VideoReadError, OSError, ValueError) as e:
        raise SkipVideo(f"unreadable: {e}") from e
    except Exception as e:
        raise SkipVideo(f"unreadable: {type(e).__name__}: {e}") from e
    if clip.num_frames < max(2, min_frames):
        raise SkipVideo(f"too short: {clip.num_frames} frame(s), fewer than the {max(2, min_frames)}-frame training "
                        "window (--min-frames); looping it would teach a jump every few frames")
    frames = downscale(clip.frames, max_side)
    n, h, w = frames.shape[:3]
    clothing, person = pre.parse(frames)
    if np.asarray(person).reshape(n, -1).any(axis=1).mean() < 0.5:
        raise SkipVideo("no person: the human parser finds a person in fewer than half of the frames")
    if not np.asarray(clothing).any():
        raise SkipVideo("no clothing found by the human parser")
    pose_images, poses = pre.pose(frames)
    if all(p is None for p in poses):
        raise SkipVideo("no person: DWPose finds no body in any frame")
    arc = np.zeros((n, 512), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    has = np.zeros(n, bool)
    fmask = np.zeros((n, h, w), bool)
    lmk = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        r = pre.face(frames[i])
        if r is None:
            continue
        arc[i], boxes[i], has[i] = np.asarray(r["embedding"], np.float32)[:512], np.asarray(r["bbox"])[:4], True
        fmask[i], lmk[i] = r["mask"], r["landmark_image"]
    if has.sum() < min_face_frames:
        raise SkipVideo(f"no face: insightface finds a face in {int(has.sum())} frames (need {min_face_frames})")
    return write_cached_video(out, vid, frames=frames, clothing_masks=clothing, face_masks=fmask,
                              pose_images=pose_images, poses=poses, landmarks=lmk, arcface=arc, face_boxes=boxes,
                              has_face=has, fps=clip.fps, source=str(path))


def prepare_videos(videos: Path, out: Path, pre: Preprocessors | None = None, *, max_side: int | None = 768,
                   max_frames: int | None = None, seed: int = 0, test_fraction: float = 0.1,
                   log: Callable[[str], None] = print, make_pre: Callable[[], Preprocessors] | None = None,
                   test_list: Path | None = None, min_frames: int = MIN_FRAMES) -> dict:
    """Process every video under `videos` into `out` (resumable; failures listed in out/failed.json)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):  # a crash mid-video leaves its temp folder behind
        shutil.rmtree(stale, ignore_errors=True)
    paths = find_videos(videos)
    if not paths:
        raise SystemExit(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under {videos}")
    done = set(list_complete(out))
    failed_path = out / "failed.json"
    failed = {f["video"]: f for f in (json.loads(failed_path.read_text()) if failed_path.is_file() else [])}
    todo = [(p, video_id(p, videos)) for p in paths]
    todo = [(p, v) for p, v in todo if v not in done]
    log(f"{len(paths)} videos, {len(paths) - len(todo)} already done, {len(todo)} to process")
    if todo and pre is None:  # models are loaded only when there is work to do
        pre = (make_pre or Preprocessors.from_models)()
    for k, (p, vid) in enumerate(todo, 1):
        t0 = time.time()
        try:
            process_video(p, vid, out, pre, max_side, max_frames, min_frames=min_frames)
            failed.pop(str(p), None)
            log(f"[{k}/{len(todo)}] {p.name}: ok ({time.time() - t0:.1f}s)")
        except SkipVideo as e:
            failed[str(p)] = {"video": str(p), "id": vid, "reason": str(e)}
            log(f"[{k}/{len(todo)}] {p.name}: skipped - {e}")
        tmp = failed_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(failed.values(), key=lambda f: f["video"]), indent=1))
        os.replace(tmp, failed_path)
    split = finish_split(out, seed, test_fraction, test_list, log)
    log(f"{len(split['train'])} train / {len(split['test'])} test videos; {len(failed)} skipped (see {failed_path})")
    return {"split": split, "failed": sorted(failed.values(), key=lambda f: f["video"])}


def prepare_synthetic(n: int, out: Path, *, seed: int = 0, height: int = 128, width: int = 64, frames: int = 32,
                      test_fraction: float = 0.1, log: Callable[[str], None] = print,
                      test_list: Path | None = None) -> dict:
    """Write `n` synthetic clips (m2h_core.demo.synthetic) in the cache layout; each keeps its separate identity photo
    as `reference/` (resumable like real videos)."""
    from m2h_core.demo.synthetic import generate_clip

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    done = set(list_complete(out))
    seeds = np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint32)
    for i, s in enumerate(seeds):
        vid = f"synthetic-{i:05d}"
        if vid in done:
            continue
        c = generate_clip(int(s), n_frames=frames, height=height, width=width)
        has = c.face_mask.reshape(len(c.human), -1).any(1)
        emb = np.where(has[:, None], c.identity_embedding[None], 0).astype(np.float32)
        lmk_box = mask_box(c.identity_landmarks.any(-1))
        write_cached_video(out, vid, frames=c.human, clothing_masks=c.clothing_mask, face_masks=c.face_mask,
                           pose_images=c.pose_images, poses=c.poses, landmarks=np.zeros_like(c.human),
                           arcface=emb, face_boxes=np.stack([mask_box(m) for m in c.face_mask]), has_face=has,
                           fps=c.fps, source=f"synthetic:{int(s)}",
                           reference={"image": c.identity_image, "landmarks": c.identity_landmarks,
                                      "arcface": c.identity_embedding, "face_box": lmk_box})
    split = finish_split(out, seed, test_fraction, test_list, log)
    log(f"{n} synthetic clips in {out}: {len(split['train'])} train / {len(split['test'])} test")
    return {"split": split, "failed": []}


def finish_split(out: Path, seed: int, test_fraction: float, test_list: Path | None,
                 log: Callable[[str], None]) -> dict:
    """Write CACHE/split.json (seeded, or fixed by `test_list`) and report names of the list that match nothing."""
    names = read_name_list(test_list) if test_list is not None else None
    split = write_split(out, seed, test_fraction, test_names=names, test_list=str(test_list) if test_list else None)
    if split.get("test_names") is not None:
        log(f"test split from {split.get('test_list')}: {len(split['test'])} of {len(split['test_names'])} listed "
            f"videos are in the cache")
        if split["unmatched"]:
            log(f"warning: {len(split['unmatched'])} listed videos are not in the cache (not downloaded or "
                f"skipped, see failed.json), e.g. {split['unmatched'][:3]}")
    return split


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x64, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", type=Path, help="folder of human videos (searched recursively)")
    src.add_argument("--synthetic", type=int, metavar="N", help="write N synthetic clips instead")
    ap.add_argument("--out", type=Path, required=True, help="cache folder")
    ap.add_argument("--models", help="folder holding the preprocessing models (default: $M2H_MODELS, ComfyUI)")
    ap.add_argument("--parser", default="auto", help="human parser: auto, segformer_b2_clothes, parsing_atr.onnx")
    ap.add_argument("--face-pack", default="antelopev2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-side", type=int, default=768, help="downscale frames so the long side is at most this")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--min-frames", type=int, default=MIN_FRAMES,
                    help=f"skip videos with fewer frames (default {MIN_FRAMES}: the training window, train config "
                         "num_frames; shorter clips would loop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--test-list", type=Path, help="text file naming the test videos (file names, paths or URLs, one "
                    "a line, e.g. UBC Fashion's fashion_test.txt) instead of the seeded 90/10 split")
    ap.add_argument("--size", type=parse_size, default=(128, 64), help="synthetic frame size HxW")
    ap.add_argument("--frames", type=int, default=32, help="synthetic frames per clip")
    a = ap.parse_args(argv)
    if a.max_frames is not None and a.max_frames < a.min_frames:
        ap.error(f"--max-frames {a.max_frames} is below --min-frames {a.min_frames}: every video would be skipped")
    if a.test_list is not None and not a.test_list.is_file():
        ap.error(f"--test-list {a.test_list} is not a file")
    if a.synthetic is not None:
        if a.synthetic < 1:
            ap.error("--synthetic needs N >= 1")
        try:
            prepare_synthetic(a.synthetic, a.out, seed=a.seed, height=a.size[0], width=a.size[1], frames=a.frames,
                              test_fraction=a.test_fraction, test_list=a.test_list)
        except CacheError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if not a.videos.is_dir():
        ap.error(f"--videos {a.videos} is not a folder")
    from m2h_core.preprocess.model_files import MissingModelError

    try:
        prepare_videos(a.videos, a.out, None, max_side=a.max_side, max_frames=a.max_frames, seed=a.seed,
                       test_fraction=a.test_fraction, test_list=a.test_list, min_frames=a.min_frames,
                       make_pre=lambda: Preprocessors.from_models(a.models, a.parser, a.face_pack, a.device))
    except (MissingModelError, ImportError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
