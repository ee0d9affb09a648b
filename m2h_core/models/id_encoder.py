"""Identity encoder E_id: face-landmark image p_id -> latent-sized features added to VAE(x_id) (paper Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

from .pose_encoder import ConvStack


class IdentityEncoder(nn.Module):
    """Conv stack to latent resolution, then a zero-initialised projection to the VAE's latent channels.

    Zero init makes E(x_id) + E_id(p_id) start as the identity latent alone.
    """

    def __init__(self, channels: tuple[int, ...], latent_channels: int):
        super().__init__()
        self.stack = ConvStack(3, channels)
        self.to_latent = nn.Conv2d(channels[-1], latent_channels, 3, padding=1)
        nn.init.zeros_(self.to_latent.weight)
        nn.init.zeros_(self.to_latent.bias)

    def forward(self, landmark_image: torch.Tensor) -> torch.Tensor:
        """landmark_image: (B, 3, H, W) in [-1, 1] -> (B, latent_channels, h, w)."""
        return self.to_latent(self.stack(landmark_image))
