"""Distribution-aware head-clothing adapter A (paper Eq. 3), as diffusers attention processors.

In every *spatial* cross-attention block (attn2; motion modules are left alone) the self-attention output z attends
to the CLIP clothing tokens f_clip through the UNet's own to_k / to_v (-> z_clip) and to the pose-aware identity
tokens f_pi through new to_k_id / to_v_id (-> z_pi); then (Eq. 3)
z_pi' = (z_pi - mu_pi) / sigma_pi * sigma_clip + mu_clip and out = to_out(z_clip + z_pi'). mu and sigma are taken
per sample (per frame) over tokens and channels, as StableAnimator's normalised attention (the paper only says "mean
and standard deviation"; per-channel statistics would also erase the identity branch's channel pattern).

Table III's switches: `normalize=False` adds z_clip + z_pi plainly; `enabled=False` has no identity branch (one
cross-attention over [f_clip; f_pi] with the UNet's projections). Keys/values depend only on the conditioning:
`AdapterKV` holds them and hands the processors a window's through `cross_attention_kwargs["m2h_kv"]`, together
with the flags of two exact shortcuts of the classifier-free batch (`UNCOND_HALF`, `SHARED_HALVES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """A's keys/values for a video; `frames(index)` gives a window's in the UNet's (B*F, heads, T, d) layout.

    kv: name -> (B, F, heads, T, head_dim) tensors for the whole video (whole-video mode), else empty.
    tokens: (f_clip, f_pi), each (B, F, T, D) — kept in per-window and lazy mode.
    layers: (name, attention module) of every adapter layer — set in per-window mode, None in lazy mode.
    uncond: the windows include the unconditional batch (zero tokens): B -> 2B (classifier-free guidance);
        appended per window to `tokens`, already part of `kv` in whole-video mode.
    cache_bytes: per-window mode keeps projected windows, reused at every step, up to this many bytes.

    The three modes (`project_all`): per window (sampling) - `frames(window)` projects the window's tokens for every
    layer and keeps the result for the next steps while `cache_bytes` allows, so memory is O(window), not O(video),
    and a video that fits one window (or the budget) is projected once; whole video (`per_window=False`) - every
    frame projected once up front (O(video) memory; the reference); lazy (training, `lazy=True`) - each processor
    projects the tokens inside its attention module's forward (under FSDP a module's weights are only whole during
    its own forward). With `uncond` only the conditional tokens are stored; the unconditional batch (zero tokens,
    paper Sec. III-C's dropped condition) is appended per window.
    """

    kv: dict[str, tuple[torch.Tensor, ...]] = field(repr=False)
    tokens: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    layers: list[tuple[str, Attention]] | None = field(default=None, repr=False)
    uncond: bool = False
    cache_bytes: int = 0
    cache: dict[tuple, dict[str, tuple[torch.Tensor, ...]]] = field(default_factory=dict, repr=False)

    @property
    def num_frames(self) -> int:
        return next(iter(self.kv.values()))[0].shape[1] if self.kv else self.tokens[0].shape[1]

    def window_tokens(self, index: torch.Tensor | slice | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_clip, f_pi) of the frames `index`, with the unconditional (zero) batch appended if `uncond`."""
        toks = tuple(t if index is None else t[:, index] for t in self.tokens)
        if self.uncond:  # (tokens are only kept in per-window / lazy mode)
            toks = tuple(torch.cat([t, torch.zeros_like(t)]) for t in toks)
        return toks

    def frames(self, index: torch.Tensor | slice | None) -> dict[str, tuple[torch.Tensor, ...]]:
        """Select frames (a window) and flatten to the UNet's (B*F, heads, T, d) layout."""
        if self.kv:
            return {name: tuple((t if index is None else t[:, index]).flatten(0, 1) for t in tensors)
                    for name, tensors in self.kv.items()}
        if self.layers is None:  # lazy: the processors project
            return {TOKENS: self.window_tokens(index)}
        key = _window_key(index, self.num_frames)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        toks = self.window_tokens(index)
        out = {name: tuple(t.flatten(0, 1) for t in attn.processor.project_kv(attn, *toks))
               for name, attn in self.layers}
        size = sum(t.numel() * t.element_size() for ts in out.values() for t in ts)
        if size + self.cached_bytes <= self.cache_bytes:
            self.cache[key] = out
        return out

    def branch(self, uncond: bool) -> "AdapterKV":
        """One half of a classifier-free pair as its own batch (the sampler's separate CFG passes): the conditional
        tokens, or the unconditional branch as ONE zero token per set. Zero tokens all have the same key and value,
        so attention over one of them gives exactly what attention over all of them gives (the value); its
        projections are a few bytes per frame. In whole-video mode the stored halves are sliced instead."""
        if not self.uncond:
            raise ValueError("branch() splits a classifier-free pair; these keys/values have no unconditional half")
        if self.kv:
            half = next(iter(self.kv.values()))[0].shape[0] // 2
            part = slice(half, None) if uncond else slice(0, half)
            return AdapterKV({n: tuple(t[part] for t in ts) for n, ts in self.kv.items()})
        toks = self.tokens
        if uncond:
            toks = tuple(t.new_zeros(*t.shape[:2], 1, t.shape[3]) for t in toks)
        return AdapterKV({}, toks, self.layers, False, self.cache_bytes)

    @property
    def cached_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for win in self.cache.values() for ts in win.values() for t in ts)

    def nbytes(self) -> int:
        """Bytes held for the whole video (keys/values or tokens), not counting the window cache."""
        held = [t for ts in self.kv.values() for t in ts] + list(self.tokens or ())
        return sum(t.numel() * t.element_size() for t in held)


def _window_key(index: torch.Tensor | slice | None, num_frames: int) -> tuple:
    if index is None:
        return tuple(range(num_frames))
    if isinstance(index, slice):
        return tuple(range(*index.indices(num_frames)))
    return tuple(torch.as_tensor(index).reshape(-1).tolist())


TOKENS = "__tokens__"  # m2h_kv key of the lazy (f_clip, f_pi) tokens
# m2h_kv key: the batch's second half is the unconditional (zero-token) branch. Its keys are all to_k(0) and its
# values all to_v(0), so softmax is uniform and the output is that value for every query: attention runs on the
# conditional half only (likewise a single key, as f_clip's one token: the output is its value; without grad)
UNCOND_HALF = "__uncond_half__"
# m2h_kv key: the batch's two halves have the same UNet input (z_t, f_c, pose, timestep: a CFG pair), so everything
# before the first cross-attention is the same for both: the first spatial self-attention runs on one half
SHARED_HALVES = "__shared_halves__"
# m2h_kv key: a dict shared by the two calls of a CFG pair run separately (same UNet input): the first call leaves the
# first spatial self-attention's output in it, the second takes it instead of recomputing
SHARED_FIRST = "__shared_first__"
IDENTITY_STRENGTH = "__identity_strength__"  # m2h_kv key: scale of z_pi after Eq. 3 (default 1)


class PassThroughProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor that accepts (and ignores) `m2h_kv`, so self-attention stays silent.

    first_spatial: this is the UNet's first spatial self-attention (nothing before it sees the tokens): with
    `SHARED_HALVES` it runs on the batch's first half and repeats the result; with `SHARED_FIRST` it runs in the
    first of two calls and the second reuses its output."""

    def __init__(self, first_spatial: bool = False):
        super().__init__()
        self.first_spatial = first_spatial

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 m2h_kv=None, *args, **kwargs):
        if (self.first_spatial and m2h_kv is not None and m2h_kv.get(SHARED_HALVES) and encoder_hidden_states is None
                and attention_mask is None and temb is None and hidden_states.shape[0] % 2 == 0):
            out = super().__call__(attn, hidden_states[: hidden_states.shape[0] // 2])
            return torch.cat([out, out])
        shared = m2h_kv.get(SHARED_FIRST) if self.first_spatial and m2h_kv is not None else None
        if shared is not None and encoder_hidden_states is None and attention_mask is None and temb is None:
            out = shared.pop("out", None)
            if out is None or out.shape != hidden_states.shape:
                out = shared["out"] = super().__call__(attn, hidden_states)
            return out
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
        half = q.shape[0] // 2 if m2h_kv.get(UNCOND_HALF) and q.shape[0] % 2 == 0 else None

        def attend(k, v):
            k, v = k.to(q.dtype), v.to(q.dtype)
            # one key: softmax is 1, the output is its value (sampling only: in training to_q / to_k keep their
            # (zero) gradients, so every trainable parameter has optimizer state, as resumes and FSDP expect)
            if k.shape[2] == 1 and not torch.is_grad_enabled():
                out = v.expand(-1, -1, q.shape[2], -1)
            elif half is not None:  # unconditional half: equal keys and values (zero tokens), output = the value
                out = torch.cat([F.scaled_dot_product_attention(q[:half], k[:half], v[:half]),
                                 v[half:, :, :1].expand(-1, -1, q.shape[2], -1)])
            else:
                out = F.scaled_dot_product_attention(q, k, v)
            return rearrange(out, "n h l d -> n l (h d)")
        if not self.cfg.enabled:
            z = attend(*kv)
        else:
            z_clip, z_pi = attend(kv[0], kv[1]), attend(kv[2], kv[3])
            if self.cfg.normalize:
                z_pi = match_distribution(z_pi.float(), z_clip.float(), self.cfg.eps).to(z_clip.dtype)
            # identity strength (sampling knob, paper = 1): scales the re-normalised identity branch
            z = z_clip + z_pi * float(m2h_kv.get(IDENTITY_STRENGTH, 1.0))
        return attn.to_out[1](attn.to_out[0](z)) / attn.rescale_output_factor


def is_spatial_cross_attention(name: str, module: nn.Module) -> bool:
    return isinstance(module, Attention) and name.endswith("attn2") and "motion_modules" not in name


def install_adapter(unet: nn.Module, cfg: AdapterConfig) -> dict[str, HeadClothingAdapterProcessor]:
    """Put A on every spatial attn2 and the pass-through processor everywhere else. Returns name -> processor."""
    installed: dict[str, HeadClothingAdapterProcessor] = {}
    first = True  # the first spatial self-attention of the down path: no cross-attention runs before it
    for name, module in list(unet.named_modules()):
        if not isinstance(module, Attention):
            continue
        if is_spatial_cross_attention(name, module):
            proc = HeadClothingAdapterProcessor(name, module, cfg)
            installed[name] = proc
        else:
            spatial_self = name.endswith("attn1") and "motion_modules" not in name and name.startswith("down_blocks.")
            proc = PassThroughProcessor(first_spatial=first and spatial_self and not installed)
            first = first and not spatial_self
        module.set_processor(proc)
    if not installed:
        raise ValueError("the UNet has no spatial cross-attention blocks to install the head-clothing adapter in")
    return installed


def project_all(unet: nn.Module, clip_tokens: torch.Tensor, id_tokens: torch.Tensor, lazy: bool = False,
                per_window: bool = False, uncond: bool = False, cache_bytes: int = 0) -> AdapterKV:
    """A's keys/values for a video: clip_tokens (B, F, Tc, D), id_tokens (B, F, Ti, D).

    default: every frame projected now, once (whole-video mode);
    per_window: keep the tokens and project each window when it is asked for (`AdapterKV.frames`), keeping
    projected windows up to `cache_bytes` for the next steps (sampling: memory O(window));
    lazy: keep the tokens and let each layer project them in its own forward (training, FSDP);
    uncond: the unconditional (zero-token) batch is appended: B -> 2B (classifier-free guidance)."""
    if lazy or per_window:
        layers = None if lazy else [(n, m) for n, m in unet.named_modules() if is_spatial_cross_attention(n, m)]
        return AdapterKV({}, (clip_tokens, id_tokens), layers, uncond, cache_bytes)
    if uncond:
        clip_tokens = torch.cat([clip_tokens, torch.zeros_like(clip_tokens)])
        id_tokens = torch.cat([id_tokens, torch.zeros_like(id_tokens)])
    kv = {}
    for name, module in unet.named_modules():
        if is_spatial_cross_attention(name, module):
            kv[name] = module.processor.project_kv(module, clip_tokens, id_tokens)
    return AdapterKV(kv, uncond=uncond)
