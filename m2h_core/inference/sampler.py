"""The M2H sampler (paper Fig. 2b): clothing frames + masks + body poses + identity -> human video.

One engine for the ComfyUI sampler node, `m2h generate` and the trainer's validation videos.

- Everything that does not depend on the timestep (VAE of the clothing frames, CLIP tokens, E_pose, E_id, H and
  the adapter's key/value projections) is computed once per video by `M2HModel.encode_conditions`.
- Classifier-free guidance (default 7.5): the conditional and unconditional branches run as one batch; the
  unconditional branch drops the identity tokens f_pi and the CLIP clothing tokens (see `models/m2h.py`).
- Any number of frames: the model sees `context_frames` at a time; overlapping windows (no wrap-around, the
  last window aligned to the end) are blended with linear ramps over the overlap, so memory does not grow with
  video length and there is no seam at window edges. The scheduler then steps the whole video's latents.
- Deterministic for a seed on a device: the initial noise is drawn on the CPU from `torch.Generator(seed)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .encoders import FrozenEncoders
from ..models.m2h import M2HConditioning, M2HModel

SCHEDULERS = ("ddim", "euler", "dpmpp_2m", "unipc")


class SamplingCancelled(RuntimeError):
    """Raised when the host's cancel check returns True; no partial video is returned."""


class SamplingError(RuntimeError):
    """The model produced something unusable (NaN/inf), with what to try."""


@dataclass
class SamplerSettings:
    steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    seed: int = 0
    context_frames: int = 8
    context_overlap: int = 4


@dataclass
class SampleResult:
    frames: torch.Tensor  # (N, 3, H, W) in [0, 1], float32 on the CPU
    latents: torch.Tensor  # (N, c, h, w) scaled latents, float32 on the CPU


def make_scheduler(name: str, num_train_timesteps: int = 1000, prediction_type: str = "epsilon"):
    """SD-1.5's noise schedule (scaled_linear 0.00085..0.012) with the chosen solver; `prediction_type` is the
    model's (M2HConfig.prediction_type: "epsilon", or "v_prediction" for the tiny demo)."""
    common = dict(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", steps_offset=1, prediction_type=prediction_type)
    if name == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading", **common)
    if name == "euler":
        return EulerDiscreteScheduler(timestep_spacing="leading", **common)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    if name == "unipc":
        return UniPCMultistepScheduler(**common)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def context_windows(num_frames: int, length: int, overlap: int) -> list[torch.Tensor]:
    """Frame indices of overlapping windows covering 0..num_frames-1; the last one ends at the last frame."""
    if length < 1 or not 0 <= overlap < length:
        raise ValueError(f"need context_frames >= 1 and 0 <= context_overlap < context_frames, "
                         f"got {length} and {overlap}")
    if num_frames <= length:
        return [torch.arange(num_frames)]
    stride = length - overlap
    starts = list(range(0, num_frames - length, stride)) + [num_frames - length]
    return [torch.arange(s, s + length) for s in starts]


def window_weights(index: torch.Tensor, num_frames: int, overlap: int) -> torch.Tensor:
    """Blend weight per frame of a window: linear ramps over the overlap, 1 at the video's own ends."""
    n = index.numel()
    pos = torch.arange(n, dtype=torch.float32)
    ramp = float(overlap + 1)
    w = torch.ones(n)
    if index[0] > 0:
        w = torch.minimum(w, (pos + 1) / ramp)
    if index[-1] < num_frames - 1:
        w = torch.minimum(w, (n - pos) / ramp)
    return w


def guided_epsilon(model: M2HModel, z: torch.Tensor, t: torch.Tensor, cond: M2HConditioning,
                   index: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """Epsilon for a window; with CFG both branches are one batch (cond is a 2B classifier-free batch)."""
    if guidance_scale == 1.0:
        return model.denoise(z, t, cond, frames=index).float()
    eps_c, eps_u = model.denoise(torch.cat([z, z]), t, cond, frames=index).float().chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


@torch.no_grad()
def denoise_latents(model: M2HModel, cond: M2HConditioning, latent_shape: tuple[int, ...], settings: SamplerSettings,
                    progress: Callable[[int, int], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """The reverse process over context windows. latent_shape = (B, N, c, h, w). Returns float32 latents."""
    device = next(model.parameters()).device
    scheduler = make_scheduler(settings.scheduler, prediction_type=model.cfg.prediction_type)
    scheduler.set_timesteps(settings.steps, device=device)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32).to(device)
    latents = latents * scheduler.init_noise_sigma
    n = latent_shape[1]
    windows = context_windows(n, settings.context_frames, settings.context_overlap)
    weights = [window_weights(w, n, settings.context_overlap).to(device).view(1, -1, 1, 1, 1) for w in windows]
    for step, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(latents, t)
        if len(windows) == 1:
            eps = guided_epsilon(model, model_in, t, cond, None, settings.guidance_scale)
        else:
            eps = torch.zeros_like(latents)
            total = torch.zeros(1, n, 1, 1, 1, device=device)
            for index, weight in zip(windows, weights):
                if cancel is not None and cancel():
                    raise SamplingCancelled(f"cancelled at step {step + 1}/{len(scheduler.timesteps)}")
                idx = index.to(device)
                eps[:, idx] += weight * guided_epsilon(model, model_in[:, idx], t, cond, idx, settings.guidance_scale)
                total[:, idx] += weight
            eps = eps / total
        if not torch.isfinite(eps).all():
            raise SamplingError(f"the model produced NaN/inf at step {step + 1}; in fp16 try bf16 or fp32, "
                                "and check the checkpoint")
        latents = scheduler.step(eps, t, latents).prev_sample
        if progress is not None:
            progress(step + 1, len(scheduler.timesteps))
        if cancel is not None and cancel():
            raise SamplingCancelled(f"cancelled after step {step + 1}/{len(scheduler.timesteps)}")
    return latents


def check_video_inputs(frames: torch.Tensor, clothing_masks: torch.Tensor, pose_images: torch.Tensor,
                       identity_image: torch.Tensor, identity_landmarks: torch.Tensor, multiple: int) -> None:
    """Clear errors for the mistakes users make with video inputs (frame counts, sizes, empty masks)."""
    n, _, h, w = frames.shape
    if clothing_masks.shape[0] != n or pose_images.shape[0] != n:
        raise ValueError(f"{n} clothing frames, {clothing_masks.shape[0]} clothing masks and {pose_images.shape[0]} "
                         "pose images: give one mask and one pose image per frame (trim or re-extract them)")
    if h % multiple or w % multiple:
        raise ValueError(f"frame size {h}x{w} is not a multiple of {multiple}; resize or crop the video "
                         f"(e.g. to {h - h % multiple}x{w - w % multiple})")
    for name, x in (("clothing masks", clothing_masks), ("pose images", pose_images)):
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"{name} are {tuple(x.shape[-2:])} px but the frames are {(h, w)}: resize them")
    for name, x in (("identity image", identity_image), ("identity landmarks", identity_landmarks)):
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"the {name} is {tuple(x.shape[-2:])} px; it must be at the frames' size {(h, w)}")
    if float(clothing_masks.float().amax()) <= 0:
        raise ValueError("the clothing mask is empty in every frame: nothing would carry the clothes. Check the "
                         "segmentation (clothing classes, threshold) or supply masks")
    for name, x in (("frames", frames), ("pose images", pose_images), ("identity image", identity_image)):
        if not torch.isfinite(x).all():
            raise ValueError(f"the {name} contain NaN or inf")


def sample_video(model: M2HModel, encoders: FrozenEncoders, frames: torch.Tensor, clothing_masks: torch.Tensor,
                 pose_images: torch.Tensor, identity_image: torch.Tensor, identity_landmarks: torch.Tensor,
                 arcface: torch.Tensor, settings: SamplerSettings | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 offload_device: str | torch.device | None = None) -> SampleResult:
    """Generate the human video.

    frames (N, 3, H, W) mannequin/clothing frames in [0, 1]; clothing_masks (N, H, W) in {0, 1};
    pose_images (N, 3, H, W) in [0, 1]; identity_image, identity_landmarks (3, H, W) in [0, 1]; arcface (512,).
    offload_device (e.g. "cpu"): keep only the stage that runs on the accelerator — the VAE and CLIP are moved
    there while the UNet denoises, and the UNet while the VAE decodes.
    """
    settings = settings or SamplerSettings()
    if clothing_masks.ndim == 4:
        clothing_masks = clothing_masks[:, 0]
    check_video_inputs(frames, clothing_masks, pose_images, identity_image, identity_landmarks,
                       model.cfg.vae.downscale)
    with torch.no_grad():
        inputs = encoders.make_inputs(frames[None], clothing_masks[None], pose_images[None], identity_image[None],
                                      identity_landmarks[None], arcface.reshape(1, -1))
        dtype = next(model.parameters()).dtype
        inputs = inputs.to(next(model.parameters()).device, dtype)
        cond = model.encode_conditions(inputs, classifier_free=settings.guidance_scale != 1.0)
        latent_shape = tuple(inputs.clothing_latents.shape)
        del inputs  # full-resolution pose images are not needed any more
    device = encoders.device
    if offload_device is not None:
        encoders.to(offload_device)
    latents = denoise_latents(model, cond, latent_shape, settings, progress, cancel)
    del cond
    if offload_device is not None:
        model.to(offload_device)
        encoders.to(device)
    pixels = encoders.decode(latents[0])
    return SampleResult(frames=pixels.float().cpu(), latents=latents[0].float().cpu())
