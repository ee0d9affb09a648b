"""The frozen encoders around M2HModel: the VAE (E, D) and the CLIP image encoder (paper Fig. 2).

`FrozenEncoders` turns pixels into the tensors `M2HInputs` holds and latents back into pixels, in chunks so
memory does not grow with video length. Pixel tensors are (..., 3, H, W) in [0, 1].

The VAE and the CLIP image encoder are reached through two small interfaces, `VAECodec` and `ImageEmbedder`: the
pack's own diffusers / transformers modules satisfy them through `DiffusersVAE` / `HFImageEmbedder`, and a host
can hand in its own objects (the ComfyUI nodes pass ComfyUI's VAE and CLIP_VISION, see nodes/comfy_encoders.py).
Latents cross the interface raw (unscaled: ComfyUI's LATENT convention); `FrozenEncoders` applies the model's
`cfg.vae.scaling_factor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPVisionModelWithProjection

from ..base_weights import hf_clip_config
from ..config import M2HConfig

def backdrop_colour(frames: torch.Tensor, border: int = 1) -> torch.Tensor:
    """(..., 3, H, W) frames in [0, 1] -> (..., 3, 1, 1): each frame's backdrop colour, the per-channel median of its
    top rows and left / right columns (`border` px wide; not the bottom, where the feet and the floor are). A studio
    shot's border is backdrop; the median ignores the odd hand or hair strand that reaches it."""
    top = frames[..., :border, :].flatten(-2)
    sides = torch.cat([frames[..., border:, :border], frames[..., border:, -border:]], -1).flatten(-2)
    return torch.cat([top, sides], -1).median(-1).values[..., None, None]


def clothing_frame(frames: torch.Tensor, clothing_masks: torch.Tensor, fill: str = "black") -> torch.Tensor:
    """The clothing frame E and CLIP see (paper Fig. 2: v ⊙ M_c). frames (..., 3, H, W), masks (..., 1, H, W).

    fill "black": v ⊙ M_c, the paper's. "backdrop": v ⊙ M_c + b ⊙ (1 - M_c), b = `backdrop_colour(v)`, so the model
    is told the scene's backdrop colour, which v ⊙ M_c hides (`M2HConfig.clothing_fill`)."""
    m = clothing_masks.to(frames.dtype)
    if fill == "black":
        return frames * m
    if fill == "backdrop":
        return frames * m + backdrop_colour(frames) * (1 - m)
    raise ValueError(f"unknown clothing fill {fill!r}")


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class VAECodec(Protocol):
    """E and D of paper Fig. 2: pixels (N, 3, H, W) in [0, 1] <-> raw (unscaled) VAE latents (N, c, H/s, W/s)."""

    latent_channels: int
    downscale: int

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ImageEmbedder(Protocol):
    """The CLIP image encoder: square pixels (N, 3, S, S) in [0, 1] (any S) -> image embeddings (N, projection_dim);
    resizing to its input size and CLIP's mean/std normalisation are its own."""

    projection_dim: int

    def embed(self, pixels: torch.Tensor) -> torch.Tensor: ...


class DiffusersVAE:
    """diffusers' AutoencoderKL as a `VAECodec` (the posterior's mode, or a sample for training)."""

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae
        self.latent_channels = int(vae.config.latent_channels)
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode_pixels(self, pixels: torch.Tensor, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.vae.parameters())
        dist = self.vae.encode(pixels.to(p.device, p.dtype) * 2 - 1).latent_dist
        return dist.sample(generator) if sample else dist.mode()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        return (self.vae.decode(latents.to(p.device, p.dtype)).sample.float() + 1) / 2


class HFImageEmbedder:
    """transformers' CLIPVisionModelWithProjection as an `ImageEmbedder` (bicubic antialiased resize, CLIP norm)."""

    def __init__(self, clip: CLIPVisionModelWithProjection):
        self.clip = clip
        self.projection_dim = int(clip.config.projection_dim)
        self.image_size = int(clip.config.image_size)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        p = next(self.clip.parameters())
        mean = torch.tensor(CLIP_MEAN, device=p.device, dtype=p.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=p.device, dtype=p.dtype).view(1, 3, 1, 1)
        # bicubic antialiased resize has no fp16/bf16 kernel on the CPU: resize in float32, cast back
        x = F.interpolate(pixels.to(p.device).float(), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False, antialias=True)
        return self.clip(pixel_values=(x.to(p.dtype) - mean) / std).image_embeds


class EncoderMismatch(ValueError):
    """A VAE or CLIP image encoder that does not fit the model (names what was given and what fits)."""


def check_codec(codec: VAECodec, cfg: M2HConfig, what: str = "the VAE") -> None:
    """The VAE must give the model's latent channels at its downscale (an SD-1.5 model needs SD-1.5's 4-channel
    8x VAE: an SD3/Flux 16-channel or a video VAE is refused)."""
    want = (cfg.unet.latent_channels, cfg.vae.downscale)
    got = (int(codec.latent_channels), int(codec.downscale))
    if got != want:
        raise EncoderMismatch(f"{what} gives {got[0]}-channel latents at 1/{got[1]} size, but this {cfg.name} model "
                              f"needs {want[0]} channels at 1/{want[1]} (an SD-1.5 VAE for sd15 models): connect the "
                              "VAE of the model's base checkpoint, or leave the input empty to use the model's own")


def check_embedder(embedder: ImageEmbedder, cfg: M2HConfig, what: str = "the CLIP image encoder") -> None:
    if int(embedder.projection_dim) != cfg.unet.cross_attention_dim:
        raise EncoderMismatch(f"{what} gives {embedder.projection_dim}-wide image embeddings, but this {cfg.name} "
                              f"model needs {cfg.unet.cross_attention_dim} (CLIP ViT-L/14 for sd15 models): connect "
                              "the matching CLIP vision file, or leave the input empty to use the model's own")


@dataclass
class FrozenEncoders:
    vae: AutoencoderKL | None
    clip: CLIPVisionModelWithProjection | None
    cfg: M2HConfig
    chunk: int = 8  # frames per VAE / CLIP call
    codec: VAECodec | None = None  # a host's VAE used instead of `vae` (e.g. ComfyUI's)
    embedder: ImageEmbedder | None = None  # a host's CLIP image encoder used instead of `clip`

    def __post_init__(self) -> None:
        if self.codec is None and self.vae is None or self.embedder is None and self.clip is None:
            raise ValueError("FrozenEncoders needs a VAE (vae or codec) and a CLIP image encoder (clip or embedder)")
        if self.codec is not None:
            check_codec(self.codec, self.cfg)
        if self.embedder is not None:
            check_embedder(self.embedder, self.cfg)

    @property
    def vae_codec(self) -> VAECodec:
        return self.codec if self.codec is not None else DiffusersVAE(self.vae)

    @property
    def image_embedder(self) -> ImageEmbedder:
        return self.embedder if self.embedder is not None else HFImageEmbedder(self.clip)

    @classmethod
    def random(cls, cfg: M2HConfig, seed: int = 0) -> "FrozenEncoders":
        """Randomly initialised VAE and CLIP of the config's sizes (tests; the tiny demo trains its VAE)."""
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            vae = AutoencoderKL(**cfg.vae.vae_kwargs())
            clip = CLIPVisionModelWithProjection(hf_clip_config(cfg))
        return cls(vae.eval().requires_grad_(False), clip.eval().requires_grad_(False), cfg)

    def _module(self):
        return self.vae if self.vae is not None else self.clip

    @property
    def device(self) -> torch.device:
        m = self._module()
        return next(m.parameters()).device if m is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        m = self._module()
        return next(m.parameters()).dtype if m is not None else torch.float32

    def to(self, device=None, dtype=None) -> "FrozenEncoders":
        """Move the pack's own modules (a host's codec / embedder manage their own devices)."""
        # torch's own Module.to: diffusers' override warns "modules ... kept in float32: []" on every dtype cast
        if self.vae is not None:
            torch.nn.Module.to(self.vae, device=device, dtype=dtype)
        if self.clip is not None:
            self.clip.to(device=device, dtype=dtype)
        return self

    def _chunks(self, x: torch.Tensor):
        for i in range(0, x.shape[0], self.chunk):
            yield x[i: i + self.chunk].to(self.device, self.dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """(..., 3, H, W) in [0,1] -> scaled latents (..., c, h, w). The mode of the posterior unless `sample`."""
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:])
        codec = self.vae_codec
        if sample and not isinstance(codec, DiffusersVAE):
            raise ValueError("sampling the posterior needs the pack's own diffusers VAE")
        out = [codec.encode_pixels(x, sample, generator) if sample else codec.encode_pixels(x)
               for x in self._chunks(flat)]
        z = torch.cat([o.to(self.device) for o in out]) * self.cfg.vae.scaling_factor
        return z.reshape(*lead, *z.shape[-3:])

    def decode(self, latents: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Scaled latents (..., c, h, w) -> pixels (..., 3, H, W) in [0, 1], in chunks."""
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:])
        codec = self.vae_codec
        with torch.set_grad_enabled(grad):
            out = [codec.decode_latents(z / self.cfg.vae.scaling_factor).float() for z in self._chunks(flat)]
        x = torch.cat([o.to(self.device) for o in out])
        x = x.clamp(0, 1) if not grad else x
        return x.reshape(*lead, *x.shape[-3:])

    @torch.no_grad()
    def clip_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Clothing frames (..., 3, H, W) in [0,1] -> CLIP tokens (..., 1, projection_dim) (f_clip, one per frame).

        Frames are padded to a square with black (the masked-out colour) so the whole garment is seen, then
        resized to the encoder's input size and normalised with CLIP's mean/std.
        """
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:])
        embedder = self.image_embedder
        out = []
        for x in self._chunks(flat):
            h, w = x.shape[-2:]
            s = max(h, w)
            x = F.pad(x, ((s - w) // 2, s - w - (s - w) // 2, (s - h) // 2, s - h - (s - h) // 2))
            out.append(embedder.embed(x).to(self.device, self.dtype))
        e = torch.cat(out)
        return e.reshape(*lead, 1, e.shape[-1])

    def make_inputs(self, frames: torch.Tensor, clothing_masks: torch.Tensor, pose_images: torch.Tensor,
                    identity_image: torch.Tensor, identity_landmarks: torch.Tensor, arcface: torch.Tensor):
        """Pixels -> `M2HInputs` (paper Algorithm 1, lines 12-13; E(x_id) for Eq. 2).

        frames (B, F, 3, H, W), clothing_masks (B, F, H, W) or (B, F, 1, H, W) in {0,1}, pose_images (B, F, 3, H, W),
        identity_image and identity_landmarks (B, 3, H, W), all in [0, 1]; arcface (B, 512).
        The clothing frame is v ⊙ M_c (`clothing_frame`, with `cfg.clothing_fill`); E and CLIP see it, pose
        images and p_id go in as [-1, 1]. With `cfg.identity_input == "head"` E sees x_id ⊙ M_head
        (`identity.head_only`, M_head from p_id).
        """
        from ..identity import head_only
        from ..models.m2h import M2HInputs

        if clothing_masks.ndim == frames.ndim - 1:
            clothing_masks = clothing_masks.unsqueeze(-3)
        if frames.shape[:2] != clothing_masks.shape[:2] or frames.shape[:2] != pose_images.shape[:2]:
            raise ValueError(f"frames {tuple(frames.shape[:2])}, masks {tuple(clothing_masks.shape[:2])} and poses "
                             f"{tuple(pose_images.shape[:2])} must have the same clips x frames")
        if frames.shape[-2:] != clothing_masks.shape[-2:] or frames.shape[-2:] != pose_images.shape[-2:]:
            raise ValueError(f"frames are {tuple(frames.shape[-2:])} px, masks {tuple(clothing_masks.shape[-2:])}, "
                             f"poses {tuple(pose_images.shape[-2:])}: resize them to one size")
        clothing = clothing_frame(frames, clothing_masks, self.cfg.clothing_fill)
        if self.cfg.identity_input == "head":
            identity_image = head_only(identity_image, identity_landmarks)
        return M2HInputs(
            clothing_latents=self.encode(clothing),
            pose_images=pose_images.to(self.device, self.dtype) * 2 - 1,
            identity_latent=self.encode(identity_image),
            identity_landmarks=identity_landmarks.to(self.device, self.dtype) * 2 - 1,
            arcface=arcface.to(self.device, self.dtype),
            clip_tokens=self.clip_tokens(clothing),
        )
