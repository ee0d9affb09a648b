"""The clothing frame's fill outside M_c (`M2HConfig.clothing_fill`, `encoders.clothing_frame` / `backdrop_colour`)."""

from __future__ import annotations

import json

import pytest
import torch

from m2h_core.config import M2HConfig, tiny
from m2h_core.inference.encoders import FrozenEncoders, backdrop_colour, clothing_frame
from m2h_core.training.config import TrainConfig

from tests.fixtures import synthetic_sample


def _clip(seed: int):
    return synthetic_sample(seed, n_frames=4, source="mannequin")


def test_backdrop_colour_is_the_scene_backdrop_of_synthetic_clips():
    for seed in range(4):
        c, s = _clip(seed)
        got = backdrop_colour(s["frames"])[:, :, 0, 0] * 255  # (N, 3)
        assert torch.allclose(got, torch.tensor(c.background, dtype=torch.float32).expand_as(got), atol=2.0)


def test_backdrop_colour_ignores_a_few_foreground_pixels_on_the_border():
    frames = torch.full((2, 3, 16, 8), 0.9)
    frames[:, :, 0, 2:5] = 0.1  # hair reaching the top edge
    frames[:, :, 5:9, 0] = 0.2  # a hand on the left edge
    assert torch.allclose(backdrop_colour(frames), torch.full((2, 3, 1, 1), 0.9))
    frames[1] = 0.3
    assert torch.allclose(backdrop_colour(frames)[1], torch.full((3, 1, 1), 0.3))


def test_clothing_frame_black_is_the_papers_and_backdrop_fills_outside_the_mask():
    _, s = _clip(7)
    v, m = s["frames"], s["clothing_masks"][:, None]
    black = clothing_frame(v, m, "black")
    assert torch.equal(black, v * m)
    filled = clothing_frame(v, m, "backdrop")
    inside = m.expand_as(v) > 0.5
    assert torch.equal(filled[inside], v[inside])  # the garment untouched
    b = backdrop_colour(v).expand_as(v)
    assert torch.allclose(filled[~inside], b[~inside])  # the rest: the backdrop, so no head or arms are left
    assert (filled[~inside] > 0.8).all()  # a light studio backdrop, not black
    with pytest.raises(ValueError, match="fill"):
        clothing_frame(v, m, "grey")


def test_make_inputs_uses_the_models_fill():
    _, s = _clip(11)
    frames, masks = s["frames"][None], s["clothing_masks"][None]
    x, p = s["identity_image"][None], s["identity_landmarks"][None]
    out = {}
    for fill in ("black", "backdrop"):
        cfg = tiny()
        cfg.clothing_fill = fill
        enc = FrozenEncoders.random(cfg, seed=0)
        got = enc.make_inputs(frames, masks, s["pose_images"][None], x, p, torch.zeros(1, 512))
        want = enc.encode(clothing_frame(frames, masks[:, :, None], fill))
        assert torch.allclose(got.clothing_latents, want)
        out[fill] = got
    assert not torch.allclose(out["black"].clothing_latents, out["backdrop"].clothing_latents)
    assert not torch.allclose(out["black"].clip_tokens, out["backdrop"].clip_tokens)


def test_fill_is_part_of_the_config_and_old_configs_load_as_black():
    cfg = tiny()
    assert cfg.clothing_fill == "black"  # the presets keep the paper's v ⊙ M_c
    cfg.clothing_fill = "backdrop"
    assert M2HConfig.from_json(cfg.to_json()).clothing_fill == "backdrop"
    old = json.loads(cfg.to_json())
    del old["clothing_fill"]  # a checkpoint written before the field existed
    assert M2HConfig.from_dict(old).clothing_fill == "black"
    with pytest.raises(ValueError, match="clothing_fill"):
        M2HConfig(clothing_fill="white")


def test_train_config_sets_and_checks_the_fill():
    tc = TrainConfig(preset="tiny", random_init=True, synthetic_clips=1, clothing_fill="backdrop")
    assert tc.model_config().clothing_fill == "backdrop"
    assert TrainConfig(preset="tiny", random_init=True, synthetic_clips=1).model_config().clothing_fill == "black"
    with pytest.raises(ValueError, match="clothing_fill"):
        TrainConfig.from_dict({"preset": "tiny", "random_init": True, "synthetic_clips": 1, "clothing_fill": "x"})
