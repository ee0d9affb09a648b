"""The denoising UNet: SD-1.5 `UNet2DConditionModel` + AnimateDiff motion modules + the adapter A.

- conv_in takes concat(z_t, VAE(clothing-masked frame)): `widen_conv_in` adds the clothing channels with zero
  weights, so a loaded SD-1.5 UNet starts out computing exactly what it computed on z_t alone
  (as diffusers' InstructPix2Pix training does).
- temporal layers: diffusers' `MotionAdapter` + `UNetMotionModel.from_unet2d`, optionally initialised from an
  AnimateDiff motion-module file (see `base_weights.load_motion_adapter`).
- every spatial attn2 gets `HeadClothingAdapterProcessor` (adapter.py).
- long videos (`MotionWindows`, `run_unet(motion_windows=...)`): one UNet call over a chunk of frames runs the
  spatial layers once per frame while every motion module sees the chunk as a batch of context windows (positions
  0..L-1, as in training), its outputs blended back to frames with the sampler's ramp weights.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from ..config import M2HConfig
from .adapter import install_adapter


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Give conv_in `in_channels` inputs; the new input channels get zero weights. No-op if already that wide."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        what = " (an SD inpainting UNet: give a standard SD-1.5 base)" if old.in_channels == 9 else ""
        raise ValueError(f"conv_in already has {old.in_channels} inputs{what}, more than the {in_channels} asked for")
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
    """The M2H UNet from an optional loaded 2-D UNet (random if None) and motion adapter (random if None).
    A given motion adapter sets `cfg.unet.motion_mid_block` (the file decides: AnimateDiff v3 has none)."""
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
        # the loaded file decides whether there is a mid block (AnimateDiff v2: yes, v3: no); the config, saved
        # with the model, must say what was built
        cfg.unet.motion_mid_block = bool(motion.config.use_motion_mid_block)
        from ..base_weights import quiet_empty_fp32_notice

        with quiet_empty_fp32_notice():  # from_unet2d casts and diffusers warns with an empty list
            unet = UNetMotionModel.from_unet2d(unet2d, motion)
    install_adapter(unet, cfg.adapter)
    return unet


@dataclass
class MotionWindows:
    """Context windows inside one UNet call over `num_frames` consecutive frames (a chunk of the video).

    index: (K, L) frame positions within the chunk, one row per window; weight: (K, L) blend weight of each
    window's output at each of its frames, summing to 1 over the windows on a frame.
    """

    index: torch.Tensor
    weight: torch.Tensor
    num_frames: int

    def __post_init__(self):
        k, length = self.index.shape
        if tuple(self.weight.shape) != (k, length):
            raise ValueError(f"weights {tuple(self.weight.shape)} for windows {(k, length)}")
        covered = torch.zeros(self.num_frames, dtype=self.weight.dtype, device=self.weight.device)
        covered.index_add_(0, self.index.reshape(-1), self.weight.reshape(-1))
        if not torch.allclose(covered, torch.ones_like(covered), atol=1e-5):
            raise ValueError("every frame of the chunk needs windows whose weights sum to 1")

    def gather(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B*F, C, h, w) frames -> (B*K*L, C, h, w): the windows as a batch of B*K clips of L frames."""
        x = hidden.unflatten(0, (-1, self.num_frames))
        return x.index_select(1, self.index.reshape(-1)).flatten(0, 1)

    def blend(self, out: torch.Tensor) -> torch.Tensor:
        """(B*K*L, C, h, w) window outputs -> (B*F, C, h, w): per frame the weighted sum over its windows."""
        k, length = self.index.shape
        y = out.unflatten(0, (-1, k * length))
        y = y * self.weight.reshape(1, -1, 1, 1, 1).to(y.dtype)
        frames = y.new_zeros(y.shape[0], self.num_frames, *y.shape[2:])
        return frames.index_add_(1, self.index.reshape(-1), y).flatten(0, 1)


_MOTION_SIGNATURE = inspect.signature(AnimateDiffTransformer3D.forward)


@contextlib.contextmanager
def windowed_motion(unet: nn.Module, windows: MotionWindows):
    """While inside, every AnimateDiff motion module of `unet` runs on the windows of its input frames (its GroupNorm
    statistics and frame positions per window, exactly as a one-window call) and returns their blend. The windows
    go through the module in groups of at most as many frames as the chunk has, so the module's own activations
    (its feed-forward is 8x wider than the features) are no larger than for the chunk's frames themselves."""
    k, length = windows.index.shape
    group = max(1, windows.num_frames // length)  # windows per motion-module call

    def wrap(module: nn.Module):
        plain = module.forward  # the class's (possibly checkpointed) forward, bound

        def forward(*args, **kwargs):
            bound = _MOTION_SIGNATURE.bind(module, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop("self")
            if arguments["num_frames"] != windows.num_frames:
                raise ValueError(f"motion module called on {arguments['num_frames']} frames, the windows are over "
                                 f"{windows.num_frames}")
            x = windows.gather(arguments.pop("hidden_states")).unflatten(0, (-1, k * length))  # (B, K*L, ...)
            arguments["num_frames"] = length
            out = torch.cat([plain(x[:, i: i + group * length].flatten(0, 1), **arguments)
                             .unflatten(0, (x.shape[0], -1)) for i in range(0, k * length, group * length)], dim=1)
            return windows.blend(out.flatten(0, 1))

        return forward

    modules = [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
    try:
        for m in modules:
            m.forward = wrap(m)
        yield
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)


def run_unet(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, m2h_kv: dict,
             motion_windows: MotionWindows | None = None, **unet_kwargs) -> torch.Tensor:
    """sample (B, F, C, h, w) -> epsilon (B, F, c, h, w), for the motion UNet and the frame-wise 2-D UNet alike.

    motion_windows: the F frames are a chunk of several context windows; the spatial layers run once per frame and
    each motion module per window (`windowed_motion`). None: the F frames are one window. unet_kwargs: passed to
    the UNet's forward (the zero-shot model's ControlNet residuals)."""
    b, f = sample.shape[:2]
    kwargs = {"m2h_kv": m2h_kv}
    if isinstance(unet, UNetMotionModel):
        ctx = windowed_motion(unet, motion_windows) if motion_windows is not None else contextlib.nullcontext()
        with ctx:
            out = unet(sample.transpose(1, 2), timestep, encoder_hidden_states=None,
                       cross_attention_kwargs=kwargs, **unet_kwargs).sample
        return out.transpose(1, 2)
    t = timestep.repeat_interleave(f) if timestep.ndim else timestep
    out = unet(sample.flatten(0, 1), t, encoder_hidden_states=None, cross_attention_kwargs=kwargs,
               **unet_kwargs).sample
    return out.unflatten(0, (b, f))
