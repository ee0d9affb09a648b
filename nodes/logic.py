"""What the nodes do, as plain functions on tensors and arrays: no ComfyUI import, tested in CI.

ComfyUI conventions: IMAGE is a float tensor [B, H, W, C] in 0..1 (a video is the batch), MASK [B, H, W].
The functions here check ComfyUI's socket values (shapes, a single image wired as a video) and hand them to
`m2h_core.inference.inputs`, the same preprocessing `m2h generate` runs: fitting to the model's size, the
checks with messages that say what to do, and the identity placement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from m2h_core.inference import inputs
from m2h_core.inference.inputs import IdentityInputs, InputError, VideoInputs

log = logging.getLogger("M2HVideo")

SIZE_MULTIPLE = 8
M2HInputError = InputError  # an input the user must change, with what to do
HeadConditioning = IdentityInputs  # the M2H_HEAD_COND value


# ------------------------------------------------------------------------------------------ conversions


def as_image_batch(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check a ComfyUI IMAGE ([B, H, W, C] or [H, W, C]) and return [B, H, W, 3] float32 on the CPU."""
    if not isinstance(images, torch.Tensor):
        raise M2HInputError(f"{name} must be an IMAGE tensor, got {type(images).__name__}")
    x = images if images.ndim == 4 else images[None] if images.ndim == 3 else None
    if x is None or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise M2HInputError(f"{name} is empty or not an image batch (shape {tuple(images.shape)})")
    if x.shape[-1] == 4:
        x = x[..., :3]
    elif x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    elif x.shape[-1] != 3:
        raise M2HInputError(f"{name} has {x.shape[-1]} channels; expected an RGB IMAGE [B, H, W, 3]")
    return x.detach().float().cpu().clamp(0, 1)


def as_mask_batch(masks: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """ComfyUI MASK ([B, H, W], [H, W] or [B, 1, H, W]) -> [B, H, W] float32 on the CPU."""
    if not isinstance(masks, torch.Tensor):
        raise M2HInputError(f"{name} must be a MASK tensor, got {type(masks).__name__}")
    m = masks
    if m.ndim == 2:
        m = m[None]
    elif m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.ndim == 4 and m.shape[-1] in (1, 3, 4):  # an IMAGE wired as mask
        m = m[..., :3].mean(-1)
    if m.ndim != 3 or 0 in m.shape:
        raise M2HInputError(f"{name} has shape {tuple(masks.shape)}; expected a MASK batch [B, H, W]")
    return m.detach().float().cpu().clamp(0, 1)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, H, W, 3] 0..1 -> (B, H, W, 3) uint8 RGB."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def uint8_to_images(frames: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> [B, H, W, 3] float32 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0


def bhwc_to_nchw(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).contiguous()


def nchw_to_bhwc(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------------------------ checks


def check_video_batch(n: int, name: str = "frames") -> None:
    """A video must have at least 2 frames; a single image is almost always a wiring mistake."""
    if n < 2:
        raise M2HInputError(
            f"{name} is a single image (batch of 1), but M2HVideo generates a video. Load the mannequin video "
            "with Load Video -> Get Video Components and connect its 'images' output. To animate one still "
            "image, repeat it first (Repeat Image Batch, amount >= 2).")


def check_frame_counts(**counts: int) -> None:
    """Every per-frame input must have the same number of frames; say which differ and how to fix it."""
    values = {k: int(v) for k, v in counts.items() if v is not None}
    if len(set(values.values())) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in values.items())
        lo = min(values.values())
        raise M2HInputError(
            f"frame counts differ ({desc}). Every input needs one entry per video frame. Make them all come from "
            f"the same video (same Load Video / frame cap), or trim the longer ones to {lo} frames "
            "(e.g. Image From Batch / a frame-load cap).")


def check_size_multiple(height: int, width: int, multiple: int = SIZE_MULTIPLE, name: str = "frames") -> None:
    if height % multiple or width % multiple:
        h2, w2 = height - height % multiple, width - width % multiple
        raise M2HInputError(
            f"{name} are {width}x{height} (WxH), not a multiple of {multiple}. Set the sampler's resize to "
            f"crop_to_model, or crop/resize the video to e.g. {w2}x{h2} first.")


# ------------------------------------------------------------------------------------------ sampler inputs


def fit_masks(masks: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, str]:
    """[B, H, W] masks -> [B, height, width] by the frames' centre crop (inputs.fit_masks); and a note."""
    out, note = inputs.fit_masks(masks.numpy(), height, width)
    return torch.from_numpy(out), note


def prepare_sampler_inputs(frames: torch.Tensor, masks: torch.Tensor, poses: torch.Tensor, model_height: int,
                           model_width: int, resize: str = "crop_to_model") -> VideoInputs:
    """The sampler node's inputs as `VideoInputs` (inputs.prepare_video, as `m2h generate`).

    ``resize='crop_to_model'``: every input is centre-cropped/resized to the model's size (each from its own
    size, so masks or poses made at another resolution still line up when they share the video's framing).
    ``resize='keep'``: the frames' own size is used (must be a multiple of 8); masks and poses are fitted to it.
    """
    frames = as_image_batch(frames, "frames")
    masks = as_mask_batch(masks, "clothing_mask")
    poses = as_image_batch(poses, "pose_images")
    check_frame_counts(frames=frames.shape[0], clothing_mask=masks.shape[0], pose_images=poses.shape[0])
    check_video_batch(frames.shape[0])
    if resize == "keep":
        h, w = int(frames.shape[1]), int(frames.shape[2])
        check_size_multiple(h, w)
    elif resize == "crop_to_model":
        h, w = int(model_height), int(model_width)
    else:
        raise M2HInputError(f"resize must be 'crop_to_model' or 'keep', got {resize!r}")
    return inputs.prepare_video(frames, masks, poses, h, w)


# ------------------------------------------------------------------------------------------ masks


def parse_clothing_classes(text: str) -> tuple[str, ...]:
    """'upper, pants' -> ('upper', 'pants'); validated against m2h_core's groups with a helpful message."""
    from m2h_core.preprocess.parsing import CLOTHING_GROUPS, validate_clothing_groups

    groups = tuple(g.strip().lower() for g in text.replace(";", ",").split(",") if g.strip())
    if not groups:
        raise M2HInputError(f"clothing_classes is empty; use e.g. '{', '.join(CLOTHING_GROUPS)}'")
    try:
        return validate_clothing_groups(groups)
    except ValueError as e:
        raise M2HInputError(str(e)) from None


def refine_masks(masks: np.ndarray, *, grow: int = 0, feather: int = 0, fill_holes: bool = True,
                 temporal_window: int = 1) -> np.ndarray:
    """(N, H, W) masks (bool or 0..1) -> float32 (N, H, W): temporal vote, fill holes, grow/shrink, feather."""
    from m2h_core.preprocess.masks import binarize, refine_mask, temporal_smooth_masks

    m = np.stack([binarize(x) for x in np.asarray(masks)])
    if temporal_window > 1:
        m = temporal_smooth_masks(m, int(temporal_window), "majority")
    out = [refine_mask(x, fill=fill_holes, grow_px=int(grow), feather_px=int(feather)) for x in m]
    return np.stack(out).astype(np.float32)


def segment(frames: torch.Tensor, parser: Any | None, clothing_classes: str, *, grow: int = 0, feather: int = 0,
            fill_holes: bool = True, temporal_window: int = 1, masks: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clothing mask [N,H,W], clothing image [N,H,W,3], person mask [N,H,W]) for the segmentation node.

    With ``masks`` (user-supplied), ``parser`` is not used; masks of another size are centre-crop-resized.
    """
    images = as_image_batch(frames, "frames")
    n, h, w = images.shape[:3]
    if masks is not None:
        user = as_mask_batch(masks, "masks")
        if user.shape[0] == 1 and n > 1:
            log.info("M2H Segmentation: one mask given for %d frames; using it for every frame", n)
            user = user.expand(n, -1, -1)
        check_frame_counts(frames=n, masks=user.shape[0])
        if tuple(user.shape[1:]) != (h, w):
            user, note = fit_masks(user, h, w)
            log.info("M2H Segmentation: masks resized to the frames: %s", note)
        cloth = refine_masks((user.numpy() > 0.5), grow=grow, feather=feather, fill_holes=fill_holes,
                             temporal_window=temporal_window)
        person = cloth.copy()
    else:
        if parser is None:
            raise M2HInputError("no human-parsing model and no masks: connect your own masks or put a parsing "
                                "model in ComfyUI/models/human_parsing/")
        groups = parse_clothing_classes(clothing_classes)
        res = parser.parse(images_to_uint8(images), groups, fill_holes=False, grow_px=0, temporal_window=1)
        cloth = refine_masks(res.clothing_mask, grow=grow, feather=feather, fill_holes=fill_holes,
                             temporal_window=temporal_window)
        person = res.person_mask.astype(np.float32)
    cloth_t = torch.from_numpy(cloth).float()
    person_t = torch.from_numpy(np.ascontiguousarray(person)).float()
    if float(cloth_t.amax()) <= 0:
        log.warning("M2H Segmentation: the clothing mask is empty in every frame (classes: %s)", clothing_classes)
    return cloth_t, images * cloth_t[..., None], person_t


# ------------------------------------------------------------------------------------------ poses


@dataclass
class PoseSequence:
    """The M2H_POSE value: one PoseFrame (or None) per frame, the frame size and per-frame status."""

    poses: list
    width: int
    height: int
    status: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.poses)


def estimate_poses(frames: torch.Tensor, detector: Any, *, smoothing: str = "one_euro", fill_missing: str =
                   "interpolate", fps: float = 30.0, progress=None) -> PoseSequence:
    """Run a DWPoseDetector-like object on [N, H, W, 3] frames; fill gaps and smooth."""
    from m2h_core.preprocess.smoothing import smooth_pose_sequence

    images = as_image_batch(frames, "frames")
    n, h, w = images.shape[:3]
    results = detector.detect(images_to_uint8(images), progress=progress)
    poses = [r.pose for r in results]
    found = sum(p is not None for p in poses)
    if found == 0:
        raise M2HInputError(f"no person was found in any of the {n} frames. Check that the video shows the whole "
                            "mannequin (not cropped at the shoulders) and is not too dark.")
    if found < n:
        log.info("M2H DWPose: no person in %d of %d frames (%s)", n - found, n, fill_missing)
    sm = smooth_pose_sequence(poses, fps=float(fps), fill=fill_missing if fill_missing != "none" else "none",
                              smooth=smoothing == "one_euro")
    return PoseSequence(sm.poses, w, h, sm.status)


def render_pose_images(seq: PoseSequence, *, hands: bool = False, face: bool = False, feet: bool = False
                       ) -> torch.Tensor:
    from m2h_core.pose_render import draw_pose_sequence

    arr = draw_pose_sequence(seq.poses, seq.height, seq.width, body=True, hands=hands, face=face, feet=feet)
    return uint8_to_images(arr)


# ------------------------------------------------------------------------------------------ identity


def encode_identity(photo: torch.Tensor, analyzer: Any, height: int, width: int, *, placement: str =
                    "head_from_pose", pose: PoseSequence | None = None, reference_frame: int = 0,
                    face_scale: float = 1.0, identity_input: str = "full") -> tuple[IdentityInputs, torch.Tensor]:
    """The identity-photo node: analyse the face (``analyzer.analyze``), place it (inputs.place_identity, as
    `m2h generate`); returns the M2H_HEAD_COND value and the preview IMAGE."""
    images = as_image_batch(photo, "identity")
    photos = list(images_to_uint8(images))  # 1-8 photos of one person (inputs.combine_photos, as m2h generate)
    names = ["the identity image"] if len(photos) == 1 else [f"identity image {i + 1}" for i in range(len(photos))]
    chosen = inputs.combine_photos(photos, analyzer, names)
    notes = list(chosen.notes)
    ident, more = inputs.place_identity(
        chosen.photo, chosen.face, height, width, placement=placement, poses=None if pose is None else pose.poses,
        pose_size=None if pose is None else (pose.height, pose.width), reference_frame=reference_frame,
        face_scale=face_scale, identity_input=identity_input)
    for note in notes + more:
        (log.warning if note.startswith("small face") else log.info)("M2H Identity Photo: %s", note)
    preview = ident.preview[None]
    if chosen.preview is not None:  # several photos: then every face with its similarity to the mean
        preview = torch.cat([preview, face_tiles(chosen.preview, len(photos), height, width)])
    return ident, preview


def face_tiles(strip: np.ndarray, n: int, height: int, width: int) -> torch.Tensor:
    """The (s, n * s, 3) uint8 strip of labelled faces -> n preview images [n, height, width, 3], letterboxed."""
    import cv2

    s = strip.shape[0]
    k = min(height, width) / s
    size = (max(1, round(s * k)), max(1, round(s * k)))
    out = torch.zeros(n, height, width, 3)
    for i in range(n):
        tile = cv2.resize(np.ascontiguousarray(strip[:, i * s:(i + 1) * s]), size, interpolation=cv2.INTER_AREA)
        y, x = (height - size[1]) // 2, (width - size[0]) // 2
        out[i, y:y + size[1], x:x + size[0]] = torch.from_numpy(tile).float() / 255.0
    return out


# ------------------------------------------------------------------------------------------ sampling


def precision_dtype(precision: str, fp16_ok: bool = False, bf16_ok: bool = False) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.float16 if fp16_ok else torch.bfloat16 if bf16_ok else torch.float32
    raise M2HInputError(f"precision must be one of auto, fp32, fp16, bf16; got {precision!r}")


def sampler_settings(model_cfg: Any, num_frames: int, *, seed: int, steps: int, cfg: float, scheduler: str,
                     context_frames: int, context_overlap: int):
    """The sampler node's widgets as checked `SamplerSettings` for this model and video (context 0 = the model's
    trained frame count; clamped to the video, logged)."""
    from m2h_core.inference.sampler import SamplerSettings

    settings, notes = SamplerSettings(steps=steps, guidance_scale=cfg, scheduler=scheduler, seed=seed,
                                      context_frames=context_frames,
                                      context_overlap=context_overlap).for_video(model_cfg, num_frames)
    for note in notes:
        log.info("M2H Sampler: %s", note)
    return settings


def comfy_latent(latents: torch.Tensor, scaling_factor: float) -> dict:
    """The sampler's scaled latents (N, c, h, w) as a ComfyUI LATENT: the VAE's raw latent (ComfyUI's model
    latent_format applies the scaling), so core VAE Decode of it gives the sampler's frames."""
    return {"samples": latents.float() / float(scaling_factor)}


def composite_frames(images: torch.Tensor, video: VideoInputs, parser: Any | None, *, garment_lock: bool = False,
                     keep_background: bool = False) -> torch.Tensor:
    """The sampler's garment_lock / keep_background on its IMAGE [N, H, W, 3] (at the video's working size):
    compositing.composite_with_parser, as `m2h generate` (the parser finds the generated person's body parts)."""
    if not (garment_lock or keep_background):
        return images
    if parser is None:
        raise M2HInputError("garment_lock / keep_background need a human-parsing model (ComfyUI/models/"
                            "human_parsing/) to find the generated person's body: add one or turn them off")
    from m2h_core.inference.compositing import CompositeSettings, composite_with_parser

    cs = CompositeSettings.for_height(video.height, garment_lock, keep_background)
    out, note = composite_with_parser(images.detach().cpu().float().numpy(), video.frames.permute(0, 2, 3, 1).numpy(),
                                      video.clothing_masks.numpy() > 0.5, parser, cs)
    log.info("M2H Sampler: %s", note)
    return torch.from_numpy(out)


def run_sampler(pipeline: Any, video: VideoInputs, head: IdentityInputs, settings: Any, progress=None, cancel=None):
    """sample_video on the prepared inputs; returns (IMAGE [N,H,W,3], latents (N,c,h,w))."""
    from m2h_core.inference.sampler import sample_video

    res = sample_video(pipeline.model, pipeline.encoders, video, head.at_size(video.height, video.width), settings,
                       progress=progress, cancel=cancel)
    return nchw_to_bhwc(res.frames), res.latents


# ------------------------------------------------------------------------------------------ any generator


def _masks_at(masks: torch.Tensor | None, n: int, h: int, w: int, name: str) -> np.ndarray | None:
    """An optional MASK input as (n, h, w) bool: one mask for all frames repeated, another size fitted."""
    if masks is None:
        return None
    m = as_mask_batch(masks, name)
    if m.shape[0] == 1 and n > 1:
        m = m.expand(n, -1, -1)
    check_frame_counts(frames=n, **{name: m.shape[0]})
    if tuple(m.shape[1:]) != (h, w):
        m, note = fit_masks(m.contiguous(), h, w)
        log.info("M2H Regenerate Mask: %s fitted to the frames: %s", name, note)
    return m.numpy() > 0.5


def regenerate_mask(frames: torch.Tensor, parser: Any | None, clothing_classes: str, *, head_scale: float = 1.3,
                    hair_margin: float = 0.35, grow_into_garment: int = 4, feather: int = 0, temporal_window: int = 3,
                    clothing_mask: torch.Tensor | None = None, person_mask: torch.Tensor | None = None,
                    pose: PoseSequence | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Regenerate Mask node: (regen_mask, lock_mask [N, H, W], preview [N, H, W, 3]) via
    regen_mask.mannequin_masks + regenerate_mask, as `m2h regen-mask`."""
    from m2h_core.inference import regen_mask as rm

    images = as_image_batch(frames, "frames")
    n, h, w = images.shape[:3]
    cloth, person = _masks_at(clothing_mask, n, h, w, "clothing_mask"), _masks_at(person_mask, n, h, w, "person_mask")
    if pose is not None:
        check_frame_counts(frames=n, keypoints=len(pose))
    try:
        groups = parse_clothing_classes(clothing_classes) if cloth is None else None
        cloth, person = rm.mannequin_masks(images_to_uint8(images), parser, cloth, person, groups)
        settings = rm.RegenMaskSettings.for_height(h, head_scale=float(head_scale), hair_margin=float(hair_margin),
                                                   grow_into_garment=int(grow_into_garment), feather=int(feather),
                                                   temporal_window=int(temporal_window))
        masks = rm.regenerate_mask(cloth, person, None if pose is None else pose.poses, settings)
    except ValueError as e:
        raise M2HInputError(str(e)) from None
    for note in masks.notes:
        log.info("M2H Regenerate Mask: %s", note)
    prev = rm.preview(images.detach().cpu().float().numpy(), masks.regen, masks.lock)
    return torch.from_numpy(masks.regen), torch.from_numpy(masks.lock.astype(np.float32)), torch.from_numpy(prev)


def composite_any(generated: torch.Tensor, source: torch.Tensor, parser: Any | None, *, garment_lock: bool = True,
                  keep_background: bool = False, seam: str = "poisson", lock_mask: torch.Tensor | None = None,
                  mannequin_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Composite node: compositing.composite_generated (as `m2h composite`) on IMAGE batches."""
    from m2h_core.inference.compositing import CompositeSettings, composite_generated

    gen, src = as_image_batch(generated, "generated"), as_image_batch(source, "source")
    masks = [None if m is None else as_mask_batch(m, name).numpy()
             for m, name in ((lock_mask, "lock_mask"), (mannequin_mask, "mannequin_mask"))]
    settings = CompositeSettings.for_height(gen.shape[1], bool(garment_lock), bool(keep_background), seam)
    try:
        out, notes = composite_generated(gen.detach().cpu().float().numpy(), src.detach().cpu().float().numpy(),
                                         parser, settings, lock=masks[0], mannequin=masks[1])
    except ValueError as e:
        raise M2HInputError(str(e)) from None
    for note in notes:
        log.info("M2H Composite: %s", note)
    return torch.from_numpy(np.ascontiguousarray(out))
