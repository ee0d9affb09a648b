"""ComfyUI's VAE and CLIP_VISION objects as the encoder interface of m2h_core (inference/encoders.py).

`ComfyVAE` satisfies `VAECodec` (raw latents, ComfyUI's LATENT convention), `ComfyClipVision` satisfies
`ImageEmbedder`. ComfyUI moves their weights itself (each call loads its own patcher through load_models_gpu).
Imported only inside ComfyUI (the objects come from core loader nodes); no ComfyUI import at module level.
"""

from __future__ import annotations

import torch


class ComfyVAE:
    """comfy.sd.VAE -> VAECodec: pixels (N, 3, H, W) in [0, 1] <-> raw latents (N, c, h, w)."""

    def __init__(self, vae):
        self.vae = vae
        self.latent_channels = int(getattr(vae, "latent_channels", 4))
        ratio = getattr(vae, "downscale_ratio", 8)
        video = getattr(vae, "latent_dim", 2) != 2 or not isinstance(ratio, (int, float))
        self.downscale = -1 if video else int(ratio)  # a video VAE never fits: check_codec names it
        self.describe = "a video VAE" if video else f"{self.latent_channels}-channel {self.downscale}x VAE"

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels.float().permute(0, 2, 3, 1).cpu()).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        out = self.vae.decode(latents.float().cpu())  # [N, H, W, 3] in [0, 1]
        return out.float().permute(0, 3, 1, 2)


def _projection_dim(clip_vision) -> int:
    proj = getattr(getattr(clip_vision, "model", None), "visual_projection", None)
    weight = getattr(proj, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    probe = clip_vision.encode_image(torch.zeros(1, clip_vision.image_size, clip_vision.image_size, 3), crop=False)
    return int(probe["image_embeds"].shape[-1])


class ComfyClipVision:
    """comfy.clip_vision.ClipVisionModel -> ImageEmbedder: square pixels (N, 3, S, S) -> image_embeds (N, D).

    ComfyUI resizes to its input size (bicubic, antialiased, as the pack's own encoder) and quantises to 8 bits
    before CLIP's normalisation; `crop=False` since the pack already padded the frame to a square."""

    def __init__(self, clip_vision):
        self.clip_vision = clip_vision
        self.projection_dim = _projection_dim(clip_vision)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.clip_vision.encode_image(pixels.float().permute(0, 2, 3, 1), crop=False)
        return out["image_embeds"].float()
