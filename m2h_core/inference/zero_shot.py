"""Zero-shot mode: mannequin video + identity photo -> human video from public files, with no M2H checkpoint.

SD-1.5 + AnimateDiff (v2/v3) + ControlNet-OpenPose + IP-Adapter FaceID(-PlusV2) / Plus-Face, run by the pack's own
sampler (`sampler.denoise_latents`: context windows, chunks, split CFG, the per-window key/value cache):
- identity: IP-Adapter's decoupled cross-attention IS adapter A with `normalize=False` (models/adapter.py): the
  text tokens take the clothing tokens' place (the UNet's own to_k / to_v), the image-projection tokens
  (models/faceid.py, from the ArcFace embedding the pack computes) go through `to_k_id` / `to_v_id` = the file's
  `to_k_ip` / `to_v_ip`, and `identity_strength` is IP-Adapter's scale. The unconditional branch is the negative
  text with the projection of a zero embedding (IP-Adapter's own negative), so `PairedKV` holds both halves.
- pose: ControlNet residuals (diffusers `ControlNetModel`) of the OpenPose images, times `pose_strength`, added to
  the UNet's skip connections and mid block, computed per chunk of frames like the UNet call itself.
- only the person is redrawn: `LatentBlend` puts the source's latents, noised to the step's level with one fixed
  noise per frame (the sampler's own initial noise), back outside the regenerate mask before every step and the
  clean ones after the last, so outside the mask the result IS the source (soft mask: a soft blend). "differential"
  regenerates a soft mask's weaker parts only in the later steps (differential diffusion).
`sample_zero_shot` is what the ComfyUI node and `m2h generate --zero-shot` run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNetMotionModel
from torch import nn

from ..config import AdapterConfig, M2HConfig
from ..models.adapter import (
    IDENTITY_STRENGTH,
    SHARED_FIRST,
    SHARED_HALVES,
    AdapterKV,
    HeadClothingAdapterProcessor,
    install_adapter,
    is_spatial_cross_attention,
)
from ..models.unet import MotionWindows, run_unet
from .encoders import CLIP_MEAN, CLIP_STD, DiffusersVAE, VAECodec
from .inputs import IdentityInputs, InputError, VideoInputs
from .sampler import SampleResult, SamplerSettings, denoise_latents

MASK_MODES = ("latent_blend", "differential")
CONTEXT_FRAMES = 16  # AnimateDiff's training length: the zero-shot window


def zero_shot_config(base: M2HConfig, motion_mid_block: bool | None = None) -> M2HConfig:
    """The model config of the zero-shot mode: the base preset's UNet with A as plain IP-Adapter attention
    (normalize=False), epsilon prediction, 16-frame windows; `motion_mid_block` from the motion file (v2: True)."""
    unet = base.unet if motion_mid_block is None else replace(base.unet, motion_mid_block=motion_mid_block)
    return replace(base, name=f"{base.name}_zero_shot", unet=unet, adapter=AdapterConfig(normalize=False),
                   prediction_type="epsilon", clothing_skip=False, num_frames=CONTEXT_FRAMES, identity_input="full")


@dataclass
class PairedKV(AdapterKV):
    """A's per-window keys/values when the unconditional branch has its own tokens (negative text, IP-Adapter's
    negative identity tokens) instead of zeros: `tokens` already hold [conditional; unconditional]."""

    def window_tokens(self, index):
        return tuple(t if index is None else t[:, index] for t in self.tokens)

    def branch(self, uncond: bool) -> AdapterKV:
        half = self.tokens[0].shape[0] // 2
        part = slice(half, None) if uncond else slice(0, half)
        return AdapterKV({}, tuple(t[part] for t in self.tokens), self.layers, False, self.cache_bytes)


@dataclass
class ZeroShotConditioning:
    """Timestep-independent conditioning of a video (the sampler's `cond`).

    text: (B', T, D) text tokens (B' = 2B with CFG: [positive; negative]); pose: (N, 3, H, W) uint8 pose images
    (shared by both halves, turned to [0, 1] per chunk); kv: A's tokens, projected per window; inpaint: for a
    9-channel inpainting UNet, (N, 1 + c, h, w) [mask, masked-image latents] per frame, else None."""

    text: torch.Tensor
    pose: torch.Tensor
    kv: AdapterKV
    latent_channels: int
    pose_strength: float = 1.0
    identity_strength: float = 1.0
    inpaint: torch.Tensor | None = None
    _branches: tuple | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return self.pose.shape[0]

    def branches(self) -> tuple[ZeroShotConditioning, ZeroShotConditioning]:
        if self._branches is None:
            b = self.text.shape[0] // 2
            self._branches = tuple(replace(self, text=self.text[part], kv=self.kv.branch(uncond), _branches=None)
                                   for uncond, part in ((False, slice(0, b)), (True, slice(b, None))))
        return self._branches


class ZeroShotModel(nn.Module):
    """UNet (+ motion modules) with A as IP-Adapter attention, ControlNet, the image projection and text tokens.

    unet: a diffusers `UNet2DConditionModel` or `UNetMotionModel` with `install_adapter` done (see `build`);
    controlnet: an SD-1.5 ControlNet (OpenPose) or None (no pose guidance); image_proj: models/faceid.py's module;
    text: (2, T, D) the [positive; negative] prompt tokens (the loader's empty prompt; a host may pass its own);
    None when the base file has no text encoder (then every call must pass text)."""

    def __init__(self, cfg: M2HConfig, unet: nn.Module, controlnet: ControlNetModel | None, image_proj: nn.Module,
                 text: torch.Tensor | None):
        super().__init__()
        self.cfg = cfg
        self.unet = unet
        self.controlnet = controlnet
        self.image_proj = image_proj
        self.register_buffer("text", None if text is None else text.detach().clone(), persistent=False)
        self.kv_cache_bytes = 256 << 20

    @classmethod
    def build(cls, cfg: M2HConfig, unet2d: nn.Module, motion=None, controlnet: ControlNetModel | None = None,
              image_proj: nn.Module | None = None, ip_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
              text: torch.Tensor | None = None) -> ZeroShotModel:
        """Assemble from loaded parts: `ip_kv` maps each spatial attn2's diffusers name to the file's
        (to_k_ip, to_v_ip) weights (public_weights.IPAdapterWeights.ip_kv); every layer must be covered exactly."""
        unet = unet2d
        if motion is not None:
            from ..base_weights import quiet_empty_fp32_notice

            with quiet_empty_fp32_notice():
                unet = UNetMotionModel.from_unet2d(unet2d, motion)
        procs = install_adapter(unet, cfg.adapter)
        load_ip_kv(procs, ip_kv or {})
        if text is not None and text.shape[0] == 1:
            text = torch.cat([text, text])
        dtype = next(unet.parameters()).dtype
        return cls(cfg, unet, controlnet, image_proj, None if text is None else text.to(dtype)).eval().requires_grad_(
            False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def inpainting(self) -> bool:
        """A 9-channel inpainting UNet: it also reads the mask and the masked frame's latents."""
        return int(self.unet.config.in_channels) == 2 * self.cfg.unet.latent_channels + 1

    # -- once per video -------------------------------------------------------------------------------------
    @torch.no_grad()
    def identity_tokens(self, arcface: torch.Tensor | None, clip_hidden: torch.Tensor | None = None,
                        clip_hidden_uncond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) identity tokens (1, T, D): the projection of the embedding and of a zero embedding
        (with the CLIP hidden states of a zero image for the Plus variants), as IP-Adapter does."""
        p = self.image_proj
        dt, dev = self.dtype, self.device
        arc = None if arcface is None else arcface.reshape(1, -1).to(dev, dt)
        pos = p(arc, None if clip_hidden is None else clip_hidden.to(dev, dt))
        neg = p(None if arc is None else torch.zeros_like(arc),
                None if clip_hidden_uncond is None else clip_hidden_uncond.to(dev, dt))
        return pos, neg

    def encode_conditions(self, pose_images: torch.Tensor, id_tokens: tuple[torch.Tensor, torch.Tensor],
                          classifier_free: bool = True, pose_strength: float = 1.0, identity_strength: float = 1.0,
                          text: torch.Tensor | None = None) -> ZeroShotConditioning:
        """pose_images (N, 3, H, W) uint8 (or float in [0, 1]); id_tokens from `identity_tokens`;
        text: (2, T, D) [positive; negative] to use instead of the model's own."""
        if text is None and self.text is None:
            raise InputError("no prompt tokens: the base checkpoint has no text encoder; connect positive and "
                             "negative CONDITIONING (CLIP Text Encode) or use a full SD-1.5 checkpoint")
        text = self.text if text is None else text.to(self.device, self.dtype)
        if text.shape[0] == 1:
            text = torch.cat([text, text])
        n = pose_images.shape[0]
        pos, neg = (t.to(self.device, self.dtype) for t in id_tokens)
        if classifier_free:
            text_b, ids = text[:2], torch.cat([pos, neg])
        else:
            text_b, ids = text[:1], pos
        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t[:, None].expand(t.shape[0], n, *t.shape[1:])

        layers = [(name, m) for name, m in self.unet.named_modules() if is_spatial_cross_attention(name, m)]
        kv = PairedKV({}, (per_frame(text_b), per_frame(ids)), layers, classifier_free, self.kv_cache_bytes)
        if pose_images.dtype != torch.uint8:
            pose_images = (pose_images.clamp(0, 1) * 255).round().to(torch.uint8)
        return ZeroShotConditioning(text_b, pose_images.to(self.device), kv, self.cfg.unet.latent_channels,
                                    float(pose_strength), float(identity_strength))

    # -- once per step ---------------------------------------------------------------------------------------
    def control_residuals(self, sample: torch.Tensor, t: torch.Tensor, cond: ZeroShotConditioning,
                          frames: torch.Tensor | slice | None):
        """ControlNet residuals of the pose images of `frames` for sample (B', F, c, h, w): (down list, mid), each
        (B'*F, C, h', w'), already scaled by pose_strength; None when there is no ControlNet or the strength is 0."""
        if self.controlnet is None or cond.pose_strength == 0.0:
            return None, None
        b, f = sample.shape[:2]
        pose = cond.pose if frames is None else cond.pose[frames]
        hint = (pose.to(self.dtype) / 255.0).repeat(b, 1, 1, 1)
        down, mid = self.controlnet(sample.flatten(0, 1), t.repeat_interleave(f),
                                    encoder_hidden_states=cond.text.repeat_interleave(f, dim=0), controlnet_cond=hint,
                                    conditioning_scale=cond.pose_strength, return_dict=False)
        return list(down), mid

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: ZeroShotConditioning,
                frames: torch.Tensor | slice | None = None, motion_windows: MotionWindows | None = None,
                shared_first: dict | None = None) -> torch.Tensor:
        """ε for z_t (B', Fw, c, h, w), the frames `frames` of the video (the sampler's model interface)."""
        b = z_t.shape[0]
        if b != cond.text.shape[0]:
            raise ValueError(f"z_t has batch {b} but the conditioning {cond.text.shape[0]}")
        kv = cond.kv.frames(frames)
        if cond.identity_strength != 1.0:
            kv = {**kv, IDENTITY_STRENGTH: cond.identity_strength}
        if not torch.is_grad_enabled():
            if b % 2 == 0 and b > 1 and torch.equal(z_t[: b // 2], z_t[b // 2:]):
                kv = {**kv, SHARED_HALVES: True}  # the first spatial self-attention precedes every condition
            if shared_first is not None:
                kv = {**kv, SHARED_FIRST: shared_first}
        sample = z_t.to(self.dtype)
        t = torch.as_tensor(t, device=z_t.device)
        t = t.reshape(()).expand(b) if t.numel() == 1 else t
        down, mid = self.control_residuals(sample, t, cond, frames)
        extra = {} if down is None else {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        if cond.inpaint is not None:  # inpainting UNet: [z_t, mask, masked-image latents] (the ControlNet sees z_t)
            known = cond.inpaint if frames is None else cond.inpaint[frames]
            sample = torch.cat([sample, known[None].to(sample.dtype).expand(b, -1, -1, -1, -1)], dim=2)
        return run_unet(self.unet, sample, t, kv, motion_windows, **extra)


def load_ip_kv(processors: dict[str, HeadClothingAdapterProcessor],
               ip_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy the file's to_k_ip / to_v_ip into A's to_k_id / to_v_id; the layer names must match exactly."""
    missing, extra = sorted(set(processors) - set(ip_kv)), sorted(set(ip_kv) - set(processors))
    if missing or extra:
        raise ValueError(f"the IP-Adapter's layers do not fit this UNet: {len(missing)} attention layers without "
                         f"weights {missing[:3]}, {len(extra)} weights for no layer {extra[:3]}; is it an SD-1.5 "
                         "IP-Adapter for an SD-1.5 base?")
    with torch.no_grad():
        for name, (k, v) in ip_kv.items():
            proc = processors[name]
            for lin, w in ((proc.to_k_id, k), (proc.to_v_id, v)):
                if tuple(w.shape) != tuple(lin.weight.shape):
                    raise ValueError(f"{name}: IP-Adapter weight {tuple(w.shape)}, the layer needs "
                                     f"{tuple(lin.weight.shape)} (an SD-1.5 IP-Adapter for an SD-1.5 base?)")
                lin.weight.copy_(w)
                if lin.bias is not None:
                    lin.bias.zero_()


# ------------------------------------------------------------------------------------------ masked blending


@dataclass
class LatentBlend:
    """Outside the regenerate mask the latents are the source's, noised to each step's level with a fixed noise.

    source: (B, N, c, h, w) scaled source latents; mask: (B, N, 1, h, w) in [0, 1] (1 = regenerate);
    noise: the sampler's initial noise (same seed, same draw: one fixed noise per frame index).
    Called by `denoise_latents` before each step (`step` < total) and after the last (`step` == total)."""

    source: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor
    mode: str = "latent_blend"

    def step_mask(self, step: int, total: int) -> torch.Tensor:
        if self.mode == "latent_blend":
            return self.mask
        # differential diffusion: a soft mask's weaker parts join the regenerated region in later steps
        threshold = 1.0 - min(step + 1, total) / total
        return (self.mask > threshold).to(self.mask.dtype)

    def __call__(self, latents: torch.Tensor, scheduler, step: int) -> torch.Tensor:
        timesteps = scheduler.timesteps
        total = len(timesteps)
        m = self.step_mask(step, total).to(latents.dtype)  # no-op casts: the tensors are on the latents' device
        src = self.source.to(latents.dtype)
        if step >= total:
            known = src
        else:
            t = timesteps[step].reshape(1)
            known = scheduler.add_noise(src, self.noise.to(latents.dtype), t)
        return m * latents + (1 - m) * known


def inpaint_condition(enc: ZeroShotEncoders, frames: torch.Tensor, regen_mask: torch.Tensor, downscale: int
                      ) -> torch.Tensor:
    """(N, 1 + c, h, w) [mask, masked-image latents] as SD inpainting UNets read them: the mask binarised at 0.5 and
    resized to the latents (nearest), the frames with the region set to grey (0 in [-1, 1]) through the VAE."""
    hard = (regen_mask >= 0.5).float()[:, None]
    masked = frames * (1 - hard) + 0.5 * hard
    size = (frames.shape[-2] // downscale, frames.shape[-1] // downscale)
    return torch.cat([F.interpolate(hard, size=size, mode="nearest"), enc.encode(masked)], dim=1)


def latent_mask(regen_mask: torch.Tensor, downscale: int) -> torch.Tensor:
    """(N, H, W) regenerate mask in [0, 1] -> (N, 1, H/s, W/s): a latent pixel is regenerated as much as the most
    regenerated pixel it covers (max-pool), so thin regions (fingers, hair strands) are not lost."""
    m = regen_mask.float().clamp(0, 1)[:, None]
    return F.max_pool2d(m, downscale) if downscale > 1 else m


# ------------------------------------------------------------------------------------------ encoders


@dataclass
class ZeroShotEncoders:
    """The VAE (the pack's diffusers one, or a host's `VAECodec`) and, for the Plus variants, CLIP ViT-H."""

    vae: nn.Module | None
    clip: nn.Module | None = None
    scaling_factor: float = 0.18215
    codec: VAECodec | None = None
    chunk: int = 8

    @property
    def vae_codec(self) -> VAECodec:
        return self.codec if self.codec is not None else DiffusersVAE(self.vae)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> scaled latents (N, c, h, w), float32 on the CPU."""
        codec = self.vae_codec
        return torch.cat([codec.encode_pixels(frames[i: i + self.chunk]).float().cpu()
                          for i in range(0, frames.shape[0], self.chunk)]) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        codec = self.vae_codec
        return torch.cat([codec.decode_latents(latents[i: i + self.chunk] / self.scaling_factor).float().cpu()
                          for i in range(0, latents.shape[0], self.chunk)]).clamp(0, 1)

    @torch.no_grad()
    def clip_hidden(self, pixels: torch.Tensor | None) -> torch.Tensor:
        """CLIP ViT-H penultimate hidden states (1, L, C) of a face crop (3, S, S) in [0, 1]; None: of a zero
        image (IP-Adapter's negative)."""
        if self.clip is None:
            raise InputError("this IP-Adapter (Plus / FaceID-Plus) needs a CLIP ViT-H image encoder: put "
                             "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in models/clip_vision and select it")
        p = next(self.clip.parameters())
        size = int(self.clip.config.image_size)
        if pixels is None:
            x = torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)
        else:
            x = F.interpolate(pixels[None].float(), size=(size, size), mode="bicubic", align_corners=False,
                              antialias=True).to(p.device)
            mean = torch.tensor(CLIP_MEAN, device=p.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=p.device).view(1, 3, 1, 1)
            x = ((x - mean) / std).to(p.dtype)
        return self.clip(pixel_values=x, output_hidden_states=True).hidden_states[-2]


def face_crop(image: torch.Tensor, box: tuple[float, float, float, float] | None) -> torch.Tensor:
    """A square crop (3, S, S) around the face box (x0, y0, x1, y1) widened 1.5x, of an image (3, H, W) in [0, 1]
    (IP-Adapter's face-crop CLIP input); the image's centre square when no box is known."""
    h, w = image.shape[-2:]
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, 1.5 * max(x1 - x0, y1 - y0)
    else:
        cx, cy, s = w / 2, h / 2, min(h, w)
    s = max(2, min(round(s), h, w))
    left = int(min(max(round(cx - s / 2), 0), w - s))
    top = int(min(max(round(cy - s / 2), 0), h - s))
    return image[:, top: top + s, left: left + s]


# ------------------------------------------------------------------------------------------ the sampler


@dataclass
class ZeroShotPipeline:
    model: ZeroShotModel
    encoders: ZeroShotEncoders

    @property
    def cfg(self) -> M2HConfig:
        return self.model.cfg


def check_regen_mask(regen_mask: torch.Tensor, video: VideoInputs) -> torch.Tensor:
    """(N or 1, H, W) in [0, 1] at the frames' size; one mask is used for every frame."""
    m = torch.as_tensor(regen_mask).float()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise InputError(f"the regenerate mask must be (frames, H, W), got shape {tuple(m.shape)}")
    if tuple(m.shape[-2:]) != (video.height, video.width):
        m = F.interpolate(m[:, None], size=(video.height, video.width), mode="bilinear", align_corners=False)[:, 0]
    if m.shape[0] == 1:
        m = m.expand(video.num_frames, -1, -1)
    if m.shape[0] != video.num_frames:
        raise InputError(f"{m.shape[0]} regenerate masks for {video.num_frames} frames: give one per frame (or one)")
    if not torch.isfinite(m).all():
        raise InputError("the regenerate mask contains NaN or inf")
    if float(m.max()) <= 0:
        raise InputError("the regenerate mask is empty in every frame: nothing would be redrawn (white = redraw "
                         "the person: body minus garment, plus the head)")
    return m.clamp(0, 1)


def sample_zero_shot(pipe: ZeroShotPipeline, video: VideoInputs, identity: IdentityInputs, regen_mask: torch.Tensor,
                     settings: SamplerSettings | None = None, mask_mode: str = "latent_blend",
                     text: torch.Tensor | None = None, progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None,
                     preview: Callable[[int, int, torch.Tensor], None] | None = None,
                     decode: bool = True, face: torch.Tensor | None = None) -> SampleResult:
    """Generate the person inside `regen_mask` (N, H, W) of the video; outside it the source latents are kept.

    video: frames + pose images (its clothing masks are not used here: the regenerate mask already excludes the
    garment, and the garment lock finishes it after decoding); identity: its ArcFace embedding (FaceID) and its
    face crop (Plus variants: `face`, a (3, S, S) crop of the photo in [0, 1], else the face box of the placed
    identity image); text: (2, T, D) [positive; negative] tokens instead of the model's empty prompt."""
    if mask_mode not in MASK_MODES:
        raise InputError(f"mask_mode must be one of {', '.join(MASK_MODES)}, got {mask_mode!r}")
    model, enc = pipe.model, pipe.encoders
    settings, notes = (settings or SamplerSettings()).for_video(model.cfg, video.num_frames)
    mask = check_regen_mask(regen_mask, video)
    down = model.cfg.vae.downscale
    if video.height % down or video.width % down:
        raise InputError(f"frame size {video.width}x{video.height} (WxH) is not a multiple of {down}")
    proj = model.image_proj
    with torch.no_grad():
        clip_pos = clip_neg = None
        if proj.needs_clip:
            crop = face if face is not None else face_crop(identity.image, identity.face_box)
            clip_pos, clip_neg = enc.clip_hidden(crop), enc.clip_hidden(None)
        ids = model.identity_tokens(identity.arcface if proj.needs_arcface else None, clip_pos, clip_neg)
        source = enc.encode(video.frames)[None]  # (1, N, c, h, w)
        cond = model.encode_conditions(video.pose_images, ids, classifier_free=settings.classifier_free,
                                       pose_strength=settings.pose_strength,
                                       identity_strength=settings.identity_strength, text=text)
        if model.inpainting:
            cond.inpaint = inpaint_condition(enc, video.frames, mask, down).to(model.device, model.dtype)
    shape = tuple(source.shape)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(settings.seed), dtype=torch.float32)
    dev = model.device  # the blend's tensors live where the latents do (it runs before every step)
    blend = LatentBlend(source.to(dev), latent_mask(mask, down)[None].to(dev), noise.to(dev), mask_mode)
    latents = denoise_latents(model, cond, shape, settings, progress, cancel, preview, blend=blend)[0].float().cpu()
    del cond
    return SampleResult(frames=enc.decode(latents) if decode else None, latents=latents, notes=notes)
