"""Dynamic pose-aware head encoder H (paper Eq. 2).

    f_pi = H( concat( E(x_id) + E_id(p_id), Arc(x_id) ), E_pose(p_h) )

Token layout (the paper says "concat in the channel dimension" of a spatial latent and a 512-d vector, which
has no unique meaning; this is how we resolve it):
- identity tokens: E(x_id) + E_id(p_id) (c x h x w) is cut into p x p patches -> hw/p^2 tokens (Linear to `dim`);
- ArcFace tokens: the 512-d embedding -> `arcface_tokens` tokens (Linear + LayerNorm, as IP-Adapter-FaceID);
- queries = the two token sets concatenated along the sequence, the same for every frame (the paper's
  "temporal duplication"); keys/values = the frame's body-pose features pooled to the same p x p grid.
- both grids carry the same 2-D sinusoidal position code, computed for the actual size, so half-resolution
  training (Algorithm 1, lines 6-9) and any test size share the weights.
Each of the 4 layers is pre-norm cross-attention + feed-forward with residuals. The output, one token set per
frame, is projected to the UNet's cross-attention width.

`fuse=False` is the "w/o H" ablation (Table III): identity tokens + pose tokens of the same grid are simply
added (ArcFace tokens get the mean pose token), no attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import HeadEncoderConfig


def sincos_2d(h: int, w: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(h*w, dim) 2-D sine-cosine position code (half the channels for y, half for x)."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        ang = coord[:, None] * freqs[None]
        parts += [ang.sin(), ang.cos()]
    code = torch.cat(parts, dim=1)
    if code.shape[1] < dim:
        code = F.pad(code, (0, dim - code.shape[1]))
    return code.to(dtype)


def pad_to_multiple(x: torch.Tensor, p: int) -> torch.Tensor:
    """Replicate-pad the last two dims up to a multiple of p (any latent size multiple of 1 works)."""
    ph, pw = -x.shape[-2] % p, -x.shape[-1] % p
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention (queries attend to pose tokens) + feed-forward, both residual."""

    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * ff_mult), nn.GELU(), nn.Linear(dim * ff_mult, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.to_q(self.norm_q(x)), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(self.norm_kv(context)), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        x = x + self.to_out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))
        return x + self.ff(self.norm_ff(x))


class HeadEncoder(nn.Module):
    def __init__(self, cfg: HeadEncoderConfig, latent_channels: int, pose_channels: int, out_dim: int,
                 fuse: bool = True):
        super().__init__()
        self.cfg = cfg
        self.fuse = fuse
        p = cfg.token_patch
        self.id_in = nn.Linear(latent_channels * p * p, cfg.dim)
        self.arc_in = nn.Linear(cfg.arcface_dim, cfg.arcface_tokens * cfg.dim)
        self.arc_norm = nn.LayerNorm(cfg.dim)
        self.pose_in = nn.Linear(pose_channels, cfg.dim)
        # "w/o H" builds no attention layers: parameters that never get a gradient would break DDP
        self.layers = nn.ModuleList(
            [CrossAttentionLayer(cfg.dim, cfg.num_heads, cfg.ff_mult) for _ in range(cfg.num_layers if fuse else 0)]
        )
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, out_dim)

    def num_tokens(self, latent_hw: tuple[int, int]) -> int:
        p = self.cfg.token_patch
        return -(-latent_hw[0] // p) * -(-latent_hw[1] // p) + self.cfg.arcface_tokens

    def queries(self, id_latent: torch.Tensor, arcface: torch.Tensor) -> torch.Tensor:
        """id_latent (B, c, h, w) = E(x_id) + E_id(p_id); arcface (B, 512) -> query tokens (B, Tq, dim)."""
        p = self.cfg.token_patch
        id_latent = pad_to_multiple(id_latent, p)
        h, w = id_latent.shape[-2:]
        tok = self.id_in(rearrange(id_latent, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p))
        tok = tok + sincos_2d(h // p, w // p, self.cfg.dim, tok.device, tok.dtype)
        arc = self.arc_norm(rearrange(self.arc_in(arcface.to(tok.dtype)), "b (n d) -> b n d",
                                      n=self.cfg.arcface_tokens))
        return torch.cat([tok, arc], dim=1)

    def pose_tokens(self, pose_features: torch.Tensor) -> torch.Tensor:
        """pose_features (N, C, h, w) -> (N, hw/p^2, dim), pooled to the identity token grid."""
        p = self.cfg.token_patch
        pooled = F.avg_pool2d(pad_to_multiple(pose_features, p), p)
        tok = self.pose_in(rearrange(pooled, "n c h w -> n (h w) c"))
        return tok + sincos_2d(pooled.shape[-2], pooled.shape[-1], self.cfg.dim, tok.device, tok.dtype)

    def forward(self, id_latent: torch.Tensor, arcface: torch.Tensor, pose_features: torch.Tensor) -> torch.Tensor:
        """id_latent (B, c, h, w), arcface (B, 512), pose_features (B, F, C, h, w) -> f_pi (B, F, T, out_dim)."""
        b, f = pose_features.shape[:2]
        q = self.queries(id_latent, arcface)
        q = q.repeat_interleave(f, dim=0)  # temporal duplication: one query set per frame
        kv = self.pose_tokens(pose_features.flatten(0, 1))
        if self.fuse:
            x = q
            for layer in self.layers:
                x = layer(x, kv)
        else:
            n_grid = kv.shape[1]
            x = torch.cat([q[:, :n_grid] + kv, q[:, n_grid:] + kv.mean(dim=1, keepdim=True)], dim=1)
        out = self.proj_out(self.norm_out(x))
        return rearrange(out, "(b f) t d -> b f t d", b=b, f=f)
