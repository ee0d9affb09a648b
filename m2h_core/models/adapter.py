"""Distribution-aware head-clothing adapter A (paper Eq. 3), as diffusers attention processors.

In every *spatial* cross-attention block (attn2 of the UNet's transformer blocks; motion modules are left alone)
the self-attention output z attends to two token sets:
- the CLIP clothing tokens f_clip through the UNet's own to_k / to_v  ->  z_clip;
- the pose-aware identity tokens f_pi through new to_k_id / to_v_id (initialised from to_k / to_v) -> z_pi;
then (Eq. 3)   z_pi' = (z_pi - mu_pi) / sigma_pi * sigma_clip + mu_clip,   out = to_out(z_clip + z_pi').

mu and sigma are taken per sample (per frame) over tokens and channels, i.e. dims 1 and 2 of (B*F, HW, C),
as in StableAnimator's normalised attention: the paper only says "mean and standard deviation of the feature
embeddings"; per-channel statistics would also erase the identity branch's channel pattern.

Switches (Table III ablation): `normalize=False` -> plain addition z_clip + z_pi; `enabled=False` -> no separate
identity branch: one cross-attention over the concatenation [f_clip; f_pi] with the UNet's own projections.

Keys/values depend only on the conditioning, never on the timestep: `project_kv` computes them once per video
(`AdapterKV`), and the processors read them from `cross_attention_kwargs["m2h_kv"]` at every step. Training
(one step per conditioning) passes the tokens instead (`project_all(..., lazy=True)`) and each processor projects
them inside its attention module's forward: under FSDP a module's weights are only whole during its own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from einops import rearrange
from torch import nn

from ..config import AdapterConfig


def match_distribution(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 3: re-normalise x (N, L, C) to ref's mean / std, statistics per sample over dims (1, 2)."""
    mu_x, sd_x = x.mean(dim=(1, 2), keepdim=True), x.std(dim=(1, 2), keepdim=True, unbiased=False)
    mu_r, sd_r = ref.mean(dim=(1, 2), keepdim=True), ref.std(dim=(1, 2), keepdim=True, unbiased=False)
    return (x - mu_x) / (sd_x + eps) * sd_r + mu_r


@dataclass
class AdapterKV:
    """Per-layer keys/values for the whole video: name -> tensors of shape (B, F, heads, T, head_dim)."""

    kv: dict[str, tuple[torch.Tensor, ...]]
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None  # lazy: (f_clip, f_pi) (B, F, T, D), projected per layer

    def frames(self, index: torch.Tensor | slice | None) -> dict[str, tuple[torch.Tensor, ...]]:
        """Select frames (a window) and flatten to the UNet's (B*F, heads, T, d) layout."""
        out = {}
        for name, tensors in self.kv.items():
            out[name] = tuple((t if index is None else t[:, index]).flatten(0, 1) for t in tensors)
        if self.tokens is not None:
            out[TOKENS] = tuple(t if index is None else t[:, index] for t in self.tokens)
        return out


TOKENS = "__tokens__"  # m2h_kv key of the lazy (f_clip, f_pi) tokens


class PassThroughProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor that accepts (and ignores) `m2h_kv`, so self-attention stays silent."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 m2h_kv=None, *args, **kwargs):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class HeadClothingAdapterProcessor(nn.Module):
    """attn2 processor implementing A. Holds the identity branch's own key/value projections."""

    def __init__(self, name: str, attn: Attention, cfg: AdapterConfig):
        super().__init__()
        self.name = name
        self.cfg = cfg
        if cfg.enabled:
            self.to_k_id = nn.Linear(attn.to_k.in_features, attn.to_k.out_features, bias=attn.to_k.bias is not None)
            self.to_v_id = nn.Linear(attn.to_v.in_features, attn.to_v.out_features, bias=attn.to_v.bias is not None)
            self.to_k_id.load_state_dict(attn.to_k.state_dict())
            self.to_v_id.load_state_dict(attn.to_v.state_dict())

    def project_kv(self, attn: Attention, clip_tokens: torch.Tensor, id_tokens: torch.Tensor):
        """clip_tokens (B, F, Tc, D), id_tokens (B, F, Ti, D) -> keys/values (B, F, heads, T, d)."""
        split = lambda t: rearrange(t, "b f t (h d) -> b f h t d", h=attn.heads)  # noqa: E731
        if not self.cfg.enabled:
            tokens = torch.cat([clip_tokens, id_tokens], dim=2)
            return split(attn.to_k(tokens)), split(attn.to_v(tokens))
        return (split(attn.to_k(clip_tokens)), split(attn.to_v(clip_tokens)),
                split(self.to_k_id(id_tokens)), split(self.to_v_id(id_tokens)))

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, m2h_kv: dict | None = None, *args, **kwargs) -> torch.Tensor:
        if m2h_kv is not None and self.name not in m2h_kv and TOKENS in m2h_kv:
            kv = tuple(t.flatten(0, 1) for t in self.project_kv(attn, *m2h_kv[TOKENS]))
        elif m2h_kv is None or self.name not in m2h_kv:
            raise RuntimeError(f"{self.name}: no M2H keys/values passed; call the UNet through M2HModel")
        else:
            kv = m2h_kv[self.name]
        q = rearrange(attn.to_q(hidden_states), "n l (h d) -> n h l d", h=attn.heads)
        attend = lambda k, v: rearrange(  # noqa: E731
            F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype)), "n h l d -> n l (h d)")
        if not self.cfg.enabled:
            z = attend(*kv)
        else:
            z_clip, z_pi = attend(kv[0], kv[1]), attend(kv[2], kv[3])
            if self.cfg.normalize:
                z_pi = match_distribution(z_pi.float(), z_clip.float(), self.cfg.eps).to(z_clip.dtype)
            z = z_clip + z_pi
        return attn.to_out[1](attn.to_out[0](z)) / attn.rescale_output_factor


def is_spatial_cross_attention(name: str, module: nn.Module) -> bool:
    return isinstance(module, Attention) and name.endswith("attn2") and "motion_modules" not in name


def install_adapter(unet: nn.Module, cfg: AdapterConfig) -> dict[str, HeadClothingAdapterProcessor]:
    """Put A on every spatial attn2 and the pass-through processor everywhere else. Returns name -> processor."""
    installed: dict[str, HeadClothingAdapterProcessor] = {}
    for name, module in list(unet.named_modules()):
        if not isinstance(module, Attention):
            continue
        if is_spatial_cross_attention(name, module):
            proc = HeadClothingAdapterProcessor(name, module, cfg)
            installed[name] = proc
        else:
            proc = PassThroughProcessor()
        module.set_processor(proc)
    if not installed:
        raise ValueError("the UNet has no spatial cross-attention blocks to install the head-clothing adapter in")
    return installed


def project_all(unet: nn.Module, clip_tokens: torch.Tensor, id_tokens: torch.Tensor, lazy: bool = False
                ) -> AdapterKV:
    """Keys/values of every adapter layer for the whole video (computed once, reused at every step).

    lazy: keep the tokens and let each layer project them in its own forward (training, FSDP)."""
    if lazy:
        return AdapterKV({}, (clip_tokens, id_tokens))
    kv = {}
    for name, module in unet.named_modules():
        if is_spatial_cross_attention(name, module):
            kv[name] = module.processor.project_kv(module, clip_tokens, id_tokens)
    return AdapterKV(kv)
