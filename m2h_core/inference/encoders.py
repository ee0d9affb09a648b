"""The frozen encoders around M2HModel: the VAE (E, D) and the CLIP image encoder (paper Fig. 2).

`FrozenEncoders` turns pixels into the tensors `M2HInputs` holds and latents back into pixels, in chunks so
memory does not grow with video length. Pixel tensors are (..., 3, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPVisionModelWithProjection

from ..base_weights import hf_clip_config
from ..config import M2HConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class FrozenEncoders:
    vae: AutoencoderKL
    clip: CLIPVisionModelWithProjection
    cfg: M2HConfig
    chunk: int = 8  # frames per VAE / CLIP call

    @classmethod
    def random(cls, cfg: M2HConfig, seed: int = 0) -> "FrozenEncoders":
        """Randomly initialised VAE and CLIP of the config's sizes (tests; the tiny demo trains its VAE)."""
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            vae = AutoencoderKL(**cfg.vae.vae_kwargs())
            clip = CLIPVisionModelWithProjection(hf_clip_config(cfg))
        return cls(vae.eval().requires_grad_(False), clip.eval().requires_grad_(False), cfg)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, device=None, dtype=None) -> "FrozenEncoders":
        # torch's own Module.to: diffusers' override warns "modules ... kept in float32: []" on every dtype cast
        torch.nn.Module.to(self.vae, device=device, dtype=dtype)
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
        out = []
        for x in self._chunks(flat):
            dist = self.vae.encode(x * 2 - 1).latent_dist
            out.append(dist.sample(generator) if sample else dist.mode())
        z = torch.cat(out) * self.vae.config.scaling_factor
        return z.reshape(*lead, *z.shape[-3:])

    def decode(self, latents: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Scaled latents (..., c, h, w) -> pixels (..., 3, H, W) in [0, 1], in chunks."""
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:])
        with torch.set_grad_enabled(grad):
            out = [self.vae.decode(z / self.vae.config.scaling_factor).sample for z in self._chunks(flat)]
        x = (torch.cat(out).float() + 1) / 2
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
        size = self.cfg.clip.image_size
        mean = torch.tensor(CLIP_MEAN, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        out = []
        for x in self._chunks(flat):
            h, w = x.shape[-2:]
            s = max(h, w)
            x = F.pad(x, ((s - w) // 2, s - w - (s - w) // 2, (s - h) // 2, s - h - (s - h) // 2))
            # bicubic antialiased resize has no fp16/bf16 kernel on the CPU: resize in float32, cast back
            x = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            out.append(self.clip(pixel_values=((x.to(self.dtype) - mean) / std)).image_embeds)
        e = torch.cat(out)
        return e.reshape(*lead, 1, e.shape[-1])

    def make_inputs(self, frames: torch.Tensor, clothing_masks: torch.Tensor, pose_images: torch.Tensor,
                    identity_image: torch.Tensor, identity_landmarks: torch.Tensor, arcface: torch.Tensor):
        """Pixels -> `M2HInputs` (paper Algorithm 1, lines 12-13; E(x_id) for Eq. 2).

        frames (B, F, 3, H, W), clothing_masks (B, F, H, W) or (B, F, 1, H, W) in {0,1}, pose_images (B, F, 3, H, W),
        identity_image and identity_landmarks (B, 3, H, W), all in [0, 1]; arcface (B, 512).
        The clothing frame is v ⊙ M_c; E and CLIP see it, pose images and p_id go in as [-1, 1]. With
        `cfg.identity_input == "head"` E sees x_id ⊙ M_head (`identity.head_only`, M_head from p_id).
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
        clothing = frames * clothing_masks.to(frames.dtype)
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
