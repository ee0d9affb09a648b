"""The denoising UNet: SD-1.5 `UNet2DConditionModel` + AnimateDiff motion modules + the adapter A.

- conv_in takes concat(z_t, VAE(clothing-masked frame)): `widen_conv_in` adds the clothing channels with zero
  weights, so a loaded SD-1.5 UNet starts out computing exactly what it computed on z_t alone
  (as diffusers' InstructPix2Pix training does).
- temporal layers: diffusers' `MotionAdapter` + `UNetMotionModel.from_unet2d`, optionally initialised from an
  AnimateDiff motion-module file (see `base_weights.load_motion_adapter`).
- every spatial attn2 gets `HeadClothingAdapterProcessor` (adapter.py).
"""

from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn

from ..config import M2HConfig
from .adapter import install_adapter


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Give conv_in `in_channels` inputs; the new input channels get zero weights. No-op if already that wide."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} inputs, more than the {in_channels} asked for")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def build_unet(cfg: M2HConfig, unet2d: UNet2DConditionModel | None = None,
               motion: MotionAdapter | None = None) -> nn.Module:
    """The M2H UNet from an optional loaded 2-D UNet (random if None) and motion adapter (random if None)."""
    if unet2d is None:
        # Built like a loaded SD-1.5 UNet (z_t channels only) and then widened, so a random model starts with
        # zero weights on the clothing channels exactly as a loaded one does.
        kw = cfg.unet.unet_kwargs()
        kw["in_channels"] = cfg.unet.latent_channels
        unet2d = UNet2DConditionModel(**kw)
    widen_conv_in(unet2d, 2 * cfg.unet.latent_channels)
    unet: nn.Module = unet2d
    if cfg.use_motion:
        if motion is None:
            motion = MotionAdapter(**cfg.unet.motion_kwargs())
        from ..base_weights import quiet_empty_fp32_notice

        with quiet_empty_fp32_notice():  # from_unet2d casts and diffusers warns with an empty list
            unet = UNetMotionModel.from_unet2d(unet2d, motion)
    install_adapter(unet, cfg.adapter)
    return unet


def run_unet(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, m2h_kv: dict) -> torch.Tensor:
    """sample (B, F, C, h, w) -> epsilon (B, F, c, h, w), for the motion UNet and the frame-wise 2-D UNet alike."""
    b, f = sample.shape[:2]
    kwargs = {"m2h_kv": m2h_kv}
    if isinstance(unet, UNetMotionModel):
        out = unet(sample.transpose(1, 2), timestep, encoder_hidden_states=None,
                   cross_attention_kwargs=kwargs).sample
        return out.transpose(1, 2)
    t = timestep.repeat_interleave(f) if timestep.ndim else timestep
    out = unet(sample.flatten(0, 1), t, encoder_hidden_states=None, cross_attention_kwargs=kwargs).sample
    return out.unflatten(0, (b, f))
