"""Pose encoder E_pose: body-pose images p_h -> latent-resolution features (paper Sec. III-C, Fig. 2).

Two outputs per frame, both from one conv stack (16-32-64-128 channels, stride-2 stages down to latent size):
- `features` (C_pose x h x w): the body-pose embedding H uses as keys/values (Eq. 2);
- `input_residual` (2*latent_channels x h x w): a zero-initialised 1x1 projection added element-wise to
  concat(z_t, VAE(clothing)) — "added to the unified appearance representation" — so a loaded SD-1.5 UNet
  starts from its own behaviour.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvStack(nn.Module):
    """3x3 conv + SiLU stages; every stage after the first halves the resolution."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1, stride=2),
                       nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PoseEncoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], unet_in_channels: int):
        super().__init__()
        self.stack = ConvStack(3, channels)
        self.to_input = nn.Conv2d(channels[-1], unet_in_channels, 1)
        nn.init.zeros_(self.to_input.weight)
        nn.init.zeros_(self.to_input.bias)

    def forward(self, pose_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pose_images: (B, 3, H, W) in [-1, 1] -> (features (B, C, h, w), input_residual (B, 2*c_lat, h, w))."""
        feats = self.stack(pose_images)
        return feats, self.to_input(feats)
