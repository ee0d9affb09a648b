"""IP-Adapter's image-projection models (FaceID, FaceID-Plus(v2), Plus / Plus-Face): identity -> tokens.

In the zero-shot mode these replace the head encoder H: their tokens go through adapter A's identity branch
(`to_k_id` / `to_v_id` = the file's `to_k_ip` / `to_v_ip`, see `inference/zero_shot.py`). The state-dict keys of
each module are exactly the file's `image_proj.*` keys without the prefix, so a file loads with
`load_state_dict(strict=True)` and a renamed or missing key is an error, never a silent random layer:
- FaceID:        proj.0 (Linear 512->1024), proj.2 (Linear 1024->T*D), norm (LayerNorm D)  -> T tokens (T = 4).
- FaceID-Plus:   the FaceID keys + perceiver_resampler.{proj_in, layers.i.0 (attention), layers.i.1 (FF), proj_out,
                 norm_out}: the FaceID tokens attend to CLIP ViT-H's penultimate hidden states of the face crop;
                 v2 adds the FaceID tokens back (`shortcut`, out = x + s * perceiver(x, clip)). "v2" is not in the
                 keys (cubiq reads it from the file name): the caller says which.
- Plus / Plus-Face: Resampler with learnt `latents` queries (16 tokens) over the same CLIP hidden states.
Attention scale 1/sqrt(head_dim) (the original scales q and k by head_dim^-1/4 each: the same product).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FACEID_VARIANTS = ("faceid", "faceid_plus", "faceid_plusv2", "plus_face", "plus")


class FeedForward(nn.Sequential):
    """LayerNorm -> Linear (x mult, no bias) -> GELU -> Linear (no bias): keys 0, 1, 3."""

    def __init__(self, dim: int, inner: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Queries (the latents) attend to [image features; latents] (keys norm1, norm2, to_q, to_kv, to_out)."""

    def __init__(self, dim: int, inner: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q = split(self.to_q(latents))
        k, v = (split(t) for t in self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class Resampler(nn.Module):
    """Perceiver resampler: queries refined by `depth` attention + FF layers over projected CLIP features.

    queries: number of learnt query tokens (Plus / Plus-Face: a `latents` parameter); 0 = the queries are given
    (FaceID-Plus: the FaceID tokens)."""

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, embedding_dim: int, output_dim: int,
                 ff_inner: int, queries: int = 0):
        super().__init__()
        if queries:
            self.latents = nn.Parameter(torch.randn(1, queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, heads * head_dim, heads),
                                                   FeedForward(dim, ff_inner)]) for _ in range(depth))

    def forward(self, features: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        if latents is None:
            latents = self.latents.expand(features.shape[0], -1, -1)
        x = self.proj_in(features)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class ImageProjection(nn.Module):
    """FaceID / FaceID-Plus(v2): `forward(arcface, clip_hidden)` -> (B, T, D) identity tokens.

    arcface: (B, id_dim) L2-normalised ArcFace embeddings; clip_hidden: (B, L, C) CLIP ViT-H penultimate hidden
    states of the face crop (Plus variants only). `needs_arcface` / `needs_clip` say which are used."""

    needs_arcface = True

    def __init__(self, variant: str = "faceid", *, id_dim: int = 512, id_hidden: int = 1024, dim: int = 768,
                 tokens: int = 4, resampler: dict | None = None, shortcut_scale: float = 1.0):
        super().__init__()
        if variant not in ("faceid", "faceid_plus", "faceid_plusv2"):
            raise ValueError(f"not a FaceID variant: {variant!r}")
        self.variant = variant
        self.tokens, self.dim = tokens, dim
        self.needs_clip = variant != "faceid"
        self.shortcut = variant == "faceid_plusv2"
        self.shortcut_scale = float(shortcut_scale)
        self.proj = nn.Sequential(nn.Linear(id_dim, id_hidden), nn.GELU(), nn.Linear(id_hidden, dim * tokens))
        self.norm = nn.LayerNorm(dim)
        if self.needs_clip:
            self.perceiver_resampler = Resampler(**resampler)

    def forward(self, arcface: torch.Tensor | None = None, clip_hidden: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(self, arcface, clip_hidden)
        x = self.norm(self.proj(arcface.to(self.norm.weight.dtype)).unflatten(-1, (self.tokens, self.dim)))
        if not self.needs_clip:
            return x
        out = self.perceiver_resampler(clip_hidden.to(x.dtype), x)
        return x + self.shortcut_scale * out if self.shortcut else out


class PlusProjection(Resampler):
    """Plus / Plus-Face: learnt queries over CLIP ViT-H hidden states of the face crop; ArcFace is not used."""

    needs_arcface = False
    needs_clip = True

    def __init__(self, variant: str = "plus_face", **resampler):
        super().__init__(**resampler)
        self.variant = variant

    def forward(self, arcface: torch.Tensor | None = None, clip_hidden: torch.Tensor | None = None) -> torch.Tensor:
        _check_inputs(self, arcface, clip_hidden)
        return super().forward(clip_hidden.to(self.proj_in.weight.dtype))


def _check_inputs(module: nn.Module, arcface, clip_hidden) -> None:
    if module.needs_arcface and arcface is None:
        raise ValueError(f"IP-Adapter {module.variant} needs the ArcFace embedding of the identity photo")
    if module.needs_clip and clip_hidden is None:
        raise ValueError(f"IP-Adapter {module.variant} needs CLIP ViT-H hidden states of the face crop: give a CLIP "
                         "ViT-H image encoder (models/clip_vision, CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)")


def _resampler_kwargs(sd: dict[str, torch.Tensor], prefix: str, head_dim: int) -> dict:
    depth = len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + "layers.")})
    q = sd[f"{prefix}layers.0.0.to_q.weight"]
    return {"dim": q.shape[1], "depth": depth, "heads": max(1, q.shape[0] // head_dim),
            "head_dim": min(head_dim, q.shape[0]), "embedding_dim": sd[prefix + "proj_in.weight"].shape[1],
            "output_dim": sd[prefix + "proj_out.weight"].shape[0],
            "ff_inner": sd[f"{prefix}layers.0.1.1.weight"].shape[0],
            "queries": sd[prefix + "latents"].shape[1] if prefix + "latents" in sd else 0}


def detect_variant(image_proj: dict[str, torch.Tensor], plusv2: bool = True) -> str:
    """The variant an image_proj state dict holds (FaceID-Plus v1 vs v2 is not in the keys: `plusv2`)."""
    if "perceiver_resampler.proj_in.weight" in image_proj:
        return "faceid_plusv2" if plusv2 else "faceid_plus"
    if "latents" in image_proj:
        return "plus_face"
    if "norm.weight" in image_proj and "proj.0.weight" in image_proj:
        return "faceid"
    raise ValueError("this IP-Adapter's image projection is not FaceID, FaceID-Plus(v2) or Plus(-Face) (keys: "
                     f"{', '.join(sorted(image_proj)[:6])}...); the zero-shot mode needs one of those")


def build_image_projection(image_proj: dict[str, torch.Tensor], variant: str | None = None, head_dim: int = 64,
                           shortcut_scale: float = 1.0) -> ImageProjection | PlusProjection:
    """The projection module for a file's image_proj state dict (sizes read from its shapes), weights loaded strictly.

    head_dim: the resampler's attention head width (64 in every released file; tiny test files may use less)."""
    variant = variant or detect_variant(image_proj)
    sd = dict(image_proj)
    kw: dict = {}
    if variant.startswith("faceid"):
        w0, w2 = sd["proj.0.weight"], sd["proj.2.weight"]
        dim = sd["norm.weight"].shape[0]
        kw = {"id_dim": w0.shape[1], "id_hidden": w0.shape[0], "dim": dim, "tokens": w2.shape[0] // dim}
        if variant != "faceid":
            kw["resampler"] = _resampler_kwargs(sd, "perceiver_resampler.", head_dim)
    else:
        if variant not in FACEID_VARIANTS:
            raise ValueError(f"unknown IP-Adapter variant {variant!r}; one of {', '.join(FACEID_VARIANTS)}")
        if "latents" not in sd:
            raise ValueError(f"IP-Adapter {variant}: no 'latents' in the image projection (not a Plus file)")
    module = (ImageProjection(variant, shortcut_scale=shortcut_scale, **kw) if variant.startswith("faceid")
              else PlusProjection(variant, **_resampler_kwargs(sd, "", head_dim)))
    dtype = next(iter(sd.values())).dtype
    module.load_state_dict(sd, strict=True)
    return module.to(dtype).eval().requires_grad_(False)
