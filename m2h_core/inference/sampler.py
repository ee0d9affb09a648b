"""The M2H sampler (paper Fig. 2b): clothing frames + masks + body poses + identity -> human video.

One engine for the ComfyUI sampler node, `m2h generate` and the trainer's validation videos. Its inputs are the
typed, already-checked `VideoInputs` and `IdentityInputs` of `inputs.py`; defaults live in `defaults.py`.

- What does not depend on the timestep (VAE of the clothing frames, CLIP tokens, E_pose, E_id, H, the adapter's
  key/value projections) is computed once per video by `M2HModel.encode_conditions`.
- Classifier-free guidance (default 7.5) drops the identity tokens f_pi and the CLIP clothing tokens; whether it runs
  is decided once (`SamplerSettings.classifier_free`) and `guided_epsilon` checks the batch agrees. `batch_cfg`
  runs both branches as one UNet call or as two (half the activations, the same numbers).
- Any number of frames: overlapping windows of `context_frames` (the last aligned to the end) are blended with linear
  ramps, so there is no seam; consecutive windows are grouped into chunks of at most `chunk_frames` (one UNet call
  each, motion modules per window: `chunk_plan`), so memory is O(chunk), not O(video).
- Deterministic for a seed on a device: the initial noise is drawn on the CPU from `torch.Generator(seed)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from ..config import M2HConfig
from ..models.m2h import M2HConditioning, M2HModel
from ..models.unet import MotionWindows
from . import defaults
from .encoders import FrozenEncoders
from .inputs import IdentityInputs, InputError, VideoInputs, check_pair

SCHEDULERS = defaults.SCHEDULERS


class SamplingCancelled(RuntimeError):
    """Raised when the host's cancel check returns True; no partial video is returned."""


class SamplingError(RuntimeError):
    """The model produced something unusable (NaN/inf), with what to try."""


@dataclass
class SamplerSettings:
    """How to sample (paper IV-B defaults). context_frames 0 = the model's trained clip length (cfg.num_frames)."""

    steps: int = defaults.STEPS
    guidance_scale: float = defaults.GUIDANCE_SCALE
    scheduler: str = defaults.SCHEDULER
    seed: int = defaults.SEED
    context_frames: int = defaults.CONTEXT_FRAMES_AUTO
    context_overlap: int = defaults.CONTEXT_OVERLAP
    # at most this many frames per UNet call (a chunk of windows: spatial layers once per frame, motion modules per
    # window); <= context_frames (0 included) = one window per call, the per-window path
    chunk_frames: int = defaults.CHUNK_FRAMES
    # classifier-free guidance's two passes as one batched UNet call (2x the activations per call); False: two calls
    # of chunk_frames each, the unconditional one with a single zero token per adapter layer (same numbers)
    batch_cfg: bool = defaults.BATCH_CFG
    pose_strength: float = defaults.POSE_STRENGTH  # scales E_pose's residual (paper: 1)
    identity_strength: float = defaults.IDENTITY_STRENGTH  # scales A's re-normalised identity branch (paper: 1)

    @property
    def classifier_free(self) -> bool:
        """The one CFG decision: True builds the [conditional; unconditional] batch and blends the two."""
        return self.guidance_scale != 1.0

    def __post_init__(self) -> None:
        """The one check of the settings, where they are made (node widgets, CLI options, the trainer's)."""
        if self.steps < 1:
            raise InputError(f"steps must be at least 1, got {self.steps}")
        if self.guidance_scale < 1.0:
            raise InputError(f"the guidance scale (cfg) must be >= 1 (1 = off), got {self.guidance_scale}")
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.context_frames < 0 or self.context_overlap < 0:
            raise InputError(f"context frames and overlap must be >= 0, got {self.context_frames} and "
                             f"{self.context_overlap}")
        if self.chunk_frames < 0:
            raise InputError(f"chunk frames must be >= 0 (<= the context window: one window per UNet call), "
                             f"got {self.chunk_frames}")
        for name in ("pose_strength", "identity_strength"):
            v = getattr(self, name)
            if not 0.0 <= v <= defaults.STRENGTH_MAX:
                raise InputError(f"{name.replace('_', ' ')} must be between 0 and {defaults.STRENGTH_MAX:g} "
                                 f"(paper: 1), got {v}")

    def for_video(self, cfg: M2HConfig, num_frames: int) -> tuple["SamplerSettings", list[str]]:
        """The settings for a video of `num_frames` frames of this model: the context window defaults to the
        model's trained frame count and is clamped to the video; returns them and what was adjusted (for the log)."""
        asked = self.context_frames or cfg.num_frames
        cf = max(1, min(asked, num_frames))
        co = min(self.context_overlap, cf - 1)
        notes = []
        if (cf, co) != (asked, self.context_overlap):
            notes.append(f"context {asked}/{self.context_overlap} (frames/overlap) adjusted to {cf}/{co} for a "
                         f"{num_frames}-frame video")
        return replace(self, context_frames=cf, context_overlap=co), notes


@dataclass
class SampleResult:
    frames: torch.Tensor | None  # (N, 3, H, W) in [0, 1], float32 on the CPU (None: sample_video(decode=False))
    latents: torch.Tensor  # (N, c, h, w) scaled latents, float32 on the CPU
    notes: list[str] = field(default_factory=list)  # what `SamplerSettings.for_video` adjusted, for the log


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


def context_chunks(windows: list[torch.Tensor], max_frames: int) -> list[list[int]]:
    """Consecutive windows grouped into chunks spanning at most `max_frames` frames (at least one window each),
    as few chunks as greedy packing needs, with the windows spread evenly over them. Returns window positions."""
    greedy: list[list[int]] = []
    for k, w in enumerate(windows):
        if greedy and int(w[-1]) - int(windows[greedy[-1][0]][0]) + 1 <= max_frames:
            greedy[-1].append(k)
        else:
            greedy.append([k])
    q, r = divmod(len(windows), len(greedy))
    even, start = [], 0
    for c in range(len(greedy)):
        size = q + (c < r)
        even.append(list(range(start, start + size)))
        start += size
    fits = all(int(windows[g[-1]][-1]) - int(windows[g[0]][0]) + 1 <= max_frames for g in even)
    return even if fits else greedy


@dataclass
class Chunk:
    """One UNet call: the frames `index` of the video, its output's blend weight per frame (the sum of its
    windows' ramps, (1, F, 1, 1, 1)), and its windows (None: the chunk is one window)."""

    index: torch.Tensor
    weight: torch.Tensor
    motion: MotionWindows | None


def chunk_plan(num_frames: int, length: int, overlap: int, max_frames: int,
               device: torch.device | str = "cpu") -> list[Chunk]:
    """The UNet calls of one step: context windows (`context_windows`, ramps `window_weights`) grouped into chunks
    (`context_chunks`). Inside a chunk each frame's windows are normalised to sum 1 (the motion modules' blend);
    between chunks the outputs are weighted by the sum of their windows' ramps and normalised per frame."""
    windows = context_windows(num_frames, length, overlap)
    ramps = [window_weights(w, num_frames, overlap) for w in windows]
    plan = []
    for group in context_chunks(windows, max_frames):
        first, last = int(windows[group[0]][0]), int(windows[group[-1]][-1])
        index = torch.arange(first, last + 1)
        weight = torch.zeros(index.numel())
        for k in group:
            weight[windows[k] - first] += ramps[k]
        motion = None
        if len(group) > 1:
            local = torch.stack([windows[k] - first for k in group])
            per_window = torch.stack([ramps[k] for k in group]) / weight[local]
            motion = MotionWindows(local.to(device), per_window.to(device), index.numel())
        plan.append(Chunk(index.to(device), weight.to(device).view(1, -1, 1, 1, 1), motion))
    return plan


def classifier_free_batch(cond: M2HConditioning, batch: int) -> bool:
    """Whether `cond` was built with the unconditional branch (`encode_conditions(classifier_free=True)`)."""
    uncond = getattr(cond.kv, "uncond", None)  # adapter key/values that append the zero tokens per window
    return bool(uncond) if uncond is not None else cond.unet_input.shape[0] == 2 * batch


def guided_epsilon(model: M2HModel, z: torch.Tensor, t: torch.Tensor, cond: M2HConditioning,
                   index: torch.Tensor | None, guidance_scale: float,
                   motion_windows: MotionWindows | None = None, batch_cfg: bool = True) -> torch.Tensor:
    """Epsilon for a window (or a chunk of windows: `motion_windows`). CFG runs exactly when `cond` is a 2B
    classifier-free batch (built from `SamplerSettings.classifier_free`); a scale that disagrees with the batch is
    an error. batch_cfg: both branches in one UNet call; False: one call each (`M2HConditioning.branches`)."""
    paired = classifier_free_batch(cond, z.shape[0])
    if paired != (guidance_scale != 1.0):
        raise ValueError(f"guidance scale {guidance_scale} but the conditioning was built "
                         f"{'with' if paired else 'without'} the unconditional branch: build it with "
                         "classifier_free=SamplerSettings.classifier_free")
    if not paired:
        return _denoise(model, z, t, cond, index, motion_windows).float()
    if batch_cfg:
        eps_c, eps_u = _denoise(model, torch.cat([z, z]), t, cond, index, motion_windows).float().chunk(2)
    else:
        conditional, unconditional = cond.branches()
        shared: dict = {}  # the first spatial self-attention, computed once for both (adapter.SHARED_FIRST)
        eps_c = _denoise(model, z, t, conditional, index, motion_windows, shared).float()
        eps_u = _denoise(model, z, t, unconditional, index, motion_windows, shared).float()
    return eps_u + guidance_scale * (eps_c - eps_u)


def _denoise(model, z, t, cond, index, motion_windows, shared_first=None):
    kw = {} if shared_first is None else {"shared_first": shared_first}
    if motion_windows is None:  # (stand-in models of the tests take no motion_windows)
        return model.denoise(z, t, cond, frames=index, **kw)
    return model.denoise(z, t, cond, frames=index, motion_windows=motion_windows, **kw)


@torch.no_grad()
def denoise_latents(model: M2HModel, cond: M2HConditioning, latent_shape: tuple[int, ...], settings: SamplerSettings,
                    progress: Callable[[int, int], None] | None = None,
                    cancel: Callable[[], bool] | None = None,
                    preview: Callable[[int, int, torch.Tensor], None] | None = None,
                    blend: Callable[[torch.Tensor, object, int], torch.Tensor] | None = None) -> torch.Tensor:
    """The reverse process over context windows. latent_shape = (B, N, c, h, w). Returns float32 latents.

    preview(step, total, x0): after each step, the scheduler's predicted clean latents (B, N, c, h, w) (scaled; the
    current latents for solvers that do not predict x0), for a host's live preview.
    blend(latents, scheduler, step) -> latents: called before each step and once after the last (step = number of
    steps), e.g. to keep known latents outside a mask (`zero_shot.LatentBlend`)."""
    device = next(model.parameters()).device
    scheduler = make_scheduler(settings.scheduler, prediction_type=model.cfg.prediction_type)
    scheduler.set_timesteps(settings.steps, device=device)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32).to(device)
    latents = latents * scheduler.init_noise_sigma
    n = latent_shape[1]
    plan = chunk_plan(n, settings.context_frames, settings.context_overlap, settings.chunk_frames, device)
    total = torch.zeros(1, n, 1, 1, 1, device=device)  # the blend's normaliser: the same at every step
    for chunk in plan:
        total[:, chunk.index] += chunk.weight
    for step, t in enumerate(scheduler.timesteps):
        if blend is not None:
            latents = blend(latents, scheduler, step)
        model_in = scheduler.scale_model_input(latents, t)
        if len(plan) == 1:  # the video is one window, or one chunk of windows
            eps = guided_epsilon(model, model_in, t, cond, None, settings.guidance_scale, plan[0].motion,
                                 settings.batch_cfg)
        else:
            eps = torch.zeros_like(latents)
            for chunk in plan:
                if cancel is not None and cancel():
                    raise SamplingCancelled(f"cancelled at step {step + 1}/{len(scheduler.timesteps)}")
                idx = chunk.index
                eps[:, idx] += chunk.weight * guided_epsilon(model, model_in[:, idx], t, cond, idx,
                                                             settings.guidance_scale, chunk.motion,
                                                             settings.batch_cfg)
            eps = eps / total
        if not torch.isfinite(eps).all():
            raise SamplingError(f"the model produced NaN/inf at step {step + 1}; in fp16 try bf16 or fp32, "
                                "and check the checkpoint")
        out = scheduler.step(eps, t, latents)
        latents = out.prev_sample
        if preview is not None:
            x0 = getattr(out, "pred_original_sample", None)
            preview(step, len(scheduler.timesteps), latents if x0 is None else x0)
        if progress is not None:
            progress(step + 1, len(scheduler.timesteps))
        if cancel is not None and cancel():
            raise SamplingCancelled(f"cancelled after step {step + 1}/{len(scheduler.timesteps)}")
    if blend is not None:
        latents = blend(latents, scheduler, len(scheduler.timesteps))
    return latents


def sample_video(model: M2HModel, encoders: FrozenEncoders, video: VideoInputs, identity: IdentityInputs,
                 settings: SamplerSettings | None = None, *, progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 offload_device: str | torch.device | None = None,
                 preview: Callable[[int, int, torch.Tensor], None] | None = None,
                 decode: bool = True) -> SampleResult:
    """Generate the human video from checked inputs (`inputs.prepare_video`, `inputs.place_identity`).

    settings are fitted to the video here (`SamplerSettings.for_video`; what changed is in the result's notes).
    offload_device (e.g. "cpu"): keep only the stage that runs on the accelerator — the VAE and CLIP are moved
    there while the UNet denoises, and the UNet while the VAE decodes. preview: see `denoise_latents`.
    decode=False: latents only (frames None), for a caller that decodes chunks of frames straight into its writer
    (`encoders.decode`, `m2h generate`).
    """
    check_pair(video, identity, model.cfg.vae.downscale)
    settings, notes = (settings or SamplerSettings()).for_video(model.cfg, video.num_frames)
    with torch.no_grad():
        inputs = encoders.make_inputs(video.frames[None], video.clothing_masks[None], video.pose_images[None],
                                      identity.image[None], identity.landmarks[None], identity.arcface[None])
        dtype = next(model.parameters()).dtype
        inputs = inputs.to(next(model.parameters()).device, dtype)
        cond = model.encode_conditions(inputs, classifier_free=settings.classifier_free,
                                       pose_strength=settings.pose_strength,
                                       identity_strength=settings.identity_strength)
        latent_shape = tuple(inputs.clothing_latents.shape)
        del inputs  # full-resolution pose images are not needed any more
    device = encoders.device
    if offload_device is not None:
        encoders.to(offload_device)
    latents = denoise_latents(model, cond, latent_shape, settings, progress, cancel, preview)
    del cond
    if not decode:
        return SampleResult(frames=None, latents=latents[0].float().cpu(), notes=notes)
    if offload_device is not None:
        model.to(offload_device)
        encoders.to(device)
    pixels = encoders.decode(latents[0])
    return SampleResult(frames=pixels.float().cpu(), latents=latents[0].float().cpu(), notes=notes)
