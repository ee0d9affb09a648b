"""Head-only identity input (`identity.head_region` / `head_only`, `M2HConfig.identity_input`)."""

from __future__ import annotations

import numpy as np
import torch

from m2h_core.config import tiny
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.identity import head_only, head_region

from tests.fixtures import synthetic_sample


def _identity(seed: int):
    return synthetic_sample(seed)


def test_head_region_covers_the_landmarks_and_the_hair_above_them():
    for seed in range(6):
        c, s = _identity(seed)
        masks, found = head_region(s["identity_landmarks"][None])
        assert found.all()
        m = masks[0, 0] > 0.5
        pts = np.asarray(c.identity_pose.face)[:, :2] * 0.5  # 128x64 -> 64x32
        cols, rows = np.clip(pts[:, 0].astype(int), 0, 31), np.clip(pts[:, 1].astype(int), 0, 63)
        assert m[rows, cols].all()  # every landmark (jaw to brows) is inside
        box_h = pts[:, 1].max() - pts[:, 1].min()
        top = int(torch.nonzero(m.any(1)).flatten()[0])
        assert top <= pts[:, 1].min() - 0.5 * box_h  # and the forehead / hair above the brows
        frac = float(m.float().mean())
        assert 0.01 < frac < 0.12, frac  # a head, not the frame and not a dot
        assert int(torch.nonzero(m.any(1)).flatten()[-1]) < 64 * 0.35  # top third of a standing figure


def test_head_only_blacks_out_everything_but_the_head():
    _, s = _identity(3)
    x, p = s["identity_image"][None], s["identity_landmarks"][None]
    out = head_only(x, p)
    masks, _ = head_region(p)
    inside = masks[0, 0] > 0.5
    assert torch.equal(out[0][:, inside], x[0][:, inside])
    assert out[0][:, ~inside].abs().max() == 0
    assert x[0][:, ~inside].abs().max() > 0.3  # there was something to black out (clothes, background)
    # no landmarks (e.g. a missing p_id): the image is kept whole instead of blacked out entirely
    blank = torch.zeros_like(p)
    m, found = head_region(blank)
    assert not found.any() and torch.equal(head_only(x, blank), x)


def test_model_sees_only_the_head_when_the_config_says_so():
    """The identity latent depends on clothing pixels of x_id with identity_input='full', and not with 'head'."""
    _, s = _identity(5)
    x, p = s["identity_image"][None], s["identity_landmarks"][None]
    masks, _ = head_region(p)
    repainted = x * masks + (1 - masks) * torch.tensor([0.1, 0.8, 0.2]).view(1, 3, 1, 1)  # other clothes/scene
    frames = torch.rand(1, 2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    cm = torch.zeros(1, 2, 64, 32)
    for mode, same in (("head", True), ("full", False)):
        cfg = tiny()
        cfg.identity_input = mode
        enc = FrozenEncoders.random(cfg, seed=0)
        a = enc.make_inputs(frames, cm, frames, x, p, torch.zeros(1, 512)).identity_latent
        b = enc.make_inputs(frames, cm, frames, repainted, p, torch.zeros(1, 512)).identity_latent
        assert torch.allclose(a, b) == same, mode
