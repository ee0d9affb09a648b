"""`m2h regen-mask` and `m2h composite`: the pack's garment lock and keep-background around any generator, on files.

    m2h regen-mask --video mannequin.mp4 --out regen.mp4 --lock-out lock.mp4    # what to redraw / what to keep
    (any generator: Wan2.2 Animate, VACE, AnimateDiff inpainting, M2H zero-shot ... -> gen.mp4)
    m2h composite --generated gen.mp4 --source mannequin.mp4 --lock-masks lock.mp4 --out out.mp4 --garment-lock

The same functions as the M2H Regenerate Mask / M2H Composite nodes (`regen_mask.mannequin_masks` +
`regen_mask.regenerate_mask`, `compositing.composite_generated`); outputs keep the source video's frame rate.
`composite_files` streams both videos CHUNK frames at a time, so long videos stay at flat memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from ..frames import to_float
from ..video_io import AudioSource, FrameStream, VideoWriter, check_output_path
from . import inputs
from .compositing import CompositeSettings, composite_generated
from .regen_mask import RegenMaskSettings, mannequin_masks, preview, regenerate_mask

CHUNK = 16  # frames composited at a time (a multiple of the parser's batch of 4)


@dataclass
class FilesReport:
    out: str
    num_frames: int
    fps: float
    width: int
    height: int
    notes: list[str] = field(default_factory=list)


def _stream(path: str | os.PathLike, what: str) -> FrameStream:
    if not os.path.exists(os.fspath(path)):
        raise FileNotFoundError(f"{what} not found: {os.fspath(path)}")
    return FrameStream(path)


def _write(path: str | os.PathLike, fps: float, audio: AudioSource | None = None) -> VideoWriter:
    """The one place the standalone commands open their output (the source's fps and, for a composite, its sound)."""
    return VideoWriter(path, fps, audio=audio)


def _survey(path: str | os.PathLike) -> tuple[int, float]:
    """Frame count and fps of a video as the reader will give them (a decoding pass that keeps no frame): the
    writer needs the fps, and the sound's span the count, before the first composited frame is written."""
    s = FrameStream(path)
    for _ in s:
        pass
    return s.count, s.fps


def composite_files(generated: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike,
                    settings: CompositeSettings, parser, lock_masks: str | os.PathLike | None = None,
                    chunk: int = CHUNK) -> FilesReport:
    """Composite the generated video with the source (see `compositing.composite_generated` for the size and count
    rule) and write it at the source's fps. `parser`: a HumanParser (it runs on the generated frames)."""
    check_output_path(out, create=False)
    gen_s, src_s = _stream(generated, "the generated video"), _stream(source, "the source video")
    lock = None
    if lock_masks is not None:
        from ..preprocess.masks import load_mask_sequence

        lock = load_mask_sequence(lock_masks)
    notes: list[str] = []
    done = 0
    writer = None
    try:
        gen_it, src_it = iter(gen_s), iter(src_s)
        while True:
            g, s = list(islice(gen_it, chunk)), list(islice(src_it, chunk))
            n = min(len(g), len(s))
            if n:
                part = None if lock is None else (lock if len(lock) == 1 else lock[done:done + n])
                if part is not None and len(part) < n:
                    raise ValueError(f"{lock_masks}: {len(lock)} lock masks for a video of {done + n} or more frames")
                frames, more = composite_generated(to_float(np.stack(g[:n])), to_float(np.stack(s[:n])), parser,
                                                   settings, lock=part)
                notes += [m for m in more if m not in notes]
                if writer is None:
                    (n_gen, _), (n_src, fps) = _survey(generated), _survey(source)
                    writer = _write(out, fps, AudioSource.for_frames(source, min(n_gen, n_src), fps))
                writer.write(frames)
                done += n
            if len(g) < chunk or len(s) < chunk:
                rest_g, rest_s = len(g) - n + sum(1 for _ in gen_it), len(s) - n + sum(1 for _ in src_it)
                break
        if writer is None:
            raise ValueError(f"no frame could be read from {generated if not g else source}")
        if rest_g or rest_s:
            longer = "generated video" if rest_g else "source video"
            notes.append(f"the {longer} has {rest_g or rest_s} more frames than the other: only the first {done} "
                         "frames of each were composited (frame i with frame i)")
        if abs(gen_s.fps - src_s.fps) > 1e-3:
            notes.append(f"written at the source's {src_s.fps:g} fps (the generated file says {gen_s.fps:g}): frame "
                         "i is source frame i")
        info = writer.close()
        if info.audio:
            notes.append(info.audio)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return FilesReport(os.fspath(out), done, src_s.fps, info.width, info.height, notes)


def regen_mask_files(video: str | os.PathLike, out: str | os.PathLike, settings: RegenMaskSettings | None = None, *,
                     parser=None, clothing_masks: str | os.PathLike | None = None,
                     person_masks: str | os.PathLike | None = None, keypoints: Sequence | None = None,
                     detect_poses=None, groups: Sequence[str] | None = None, lock_out: str | os.PathLike | None = None,
                     preview_out: str | os.PathLike | None = None) -> FilesReport:
    """The regenerate mask of a mannequin video (white = redraw) at its size and fps, and optionally the lock mask
    and a preview. Masks: your own files, else the parser on the frames. Keypoints: per-frame PoseFrames, or
    `detect_poses(frames, fps)` -> PoseFrames (DWPose), or neither (no head region; noted)."""
    from ..preprocess.masks import load_mask_sequence

    for path in (out, lock_out, preview_out):
        if path is not None:
            check_output_path(path, create=False)
    clip = inputs.read_video_file(video)
    frames, n, size = clip.frames, clip.frames.shape[0], clip.frames.shape[1:3]
    user = [None if p is None else load_mask_sequence(p, num_frames=n, size=size)
            for p in (clothing_masks, person_masks)]
    clothing, person = mannequin_masks(frames, parser, *user, groups=groups)
    notes = list(clip.notes)
    if keypoints is None and detect_poses is not None:
        keypoints = detect_poses(frames, clip.fps)
    s = settings or RegenMaskSettings.for_height(size[0])
    masks = regenerate_mask(clothing, person, keypoints, s)
    notes += masks.notes
    for path, data in ((out, masks.regen), (lock_out, masks.lock.astype(np.float32)),
                       (preview_out, None)):
        if path is None:
            continue
        with _write(path, clip.fps) as w:
            for i in range(0, n, CHUNK):
                part = (preview(to_float(frames[i:i + CHUNK]), masks.regen[i:i + CHUNK], masks.lock[i:i + CHUNK])
                        if data is None else np.repeat(data[i:i + CHUNK, ..., None], 3, -1))
                w.write(part)
    return FilesReport(os.fspath(out), n, clip.fps, size[1], size[0], notes)
