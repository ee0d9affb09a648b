"""`M2HConfig.clothing_skip`: x̂_0 = UNet(...) + f_c (the tiny demo's parameterisation, issue 12).

A model built from random init with the skip starts as "copy the given garment" (conv_out zeroed); a trained one
adds its UNet output to the clothing latents of exactly the frames it denoises (whole video, context window,
classifier-free batch); the trainer scores x̂_0 against z_0 and hands the mirror loss the ε̂ that gives x̂_0 back;
the config round-trips through a checkpoint and refuses the skip without x0-prediction."""

from __future__ import annotations

import pytest
import torch

from m2h_core.checkpoint import load_checkpoint, save_checkpoint
from m2h_core.config import M2HConfig, tiny
from m2h_core.inference.sampler import SamplerSettings, denoise_latents
from m2h_core.models.m2h import M2HModel
from m2h_core.training.mirror_loss import eps_from_x0, one_step_x0
from tests.fixtures import build_m2h_model, random_inputs, synthetic_trainer
from tests.test_train import _tc, loss_step_seen


def _skip_cfg() -> M2HConfig:
    cfg = tiny()
    cfg.prediction_type, cfg.clothing_skip, cfg.num_frames = "sample", True, 4
    return cfg


def test_config_needs_x0_prediction_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        M2HConfig(clothing_skip=True)  # epsilon
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        M2HConfig(prediction_type="x0")
    model = build_m2h_model(_skip_cfg(), seed=1)
    save_checkpoint(model, tmp_path / "m.safetensors")
    back = load_checkpoint(tmp_path / "m.safetensors")
    assert back.cfg.clothing_skip and back.cfg.prediction_type == "sample"
    x = random_inputs(back.cfg, frames=3, seed=2)
    z = torch.randn_like(x.clothing_latents)
    with torch.no_grad():
        a = model.denoise(z, torch.tensor(500), model.encode_conditions(x))
        b = back.denoise(z, torch.tensor(500), back.encode_conditions(x))
    assert torch.allclose(a, b, atol=1e-6)


def test_fresh_model_copies_the_clothing_latents_in_every_call_form():
    torch.manual_seed(0)
    model = M2HModel(_skip_cfg()).eval()
    assert model.unet.conv_out.weight.abs().sum() == 0
    x = random_inputs(model.cfg, frames=6, seed=3)
    z = torch.randn_like(x.clothing_latents)
    f_c = x.clothing_latents
    with torch.no_grad():
        whole = model.denoise(z, torch.tensor(999), model.encode_conditions(x))
        idx = torch.tensor([2, 3, 4])
        cf = model.encode_conditions(x, classifier_free=True)
        window = model.denoise(torch.cat([z[:, idx]] * 2), torch.tensor(10), cf, frames=idx)
    assert torch.equal(whole, f_c)
    assert torch.equal(window, torch.cat([f_c[:, idx]] * 2))
    # the sampler, from pure noise, lands on the clothing latents (x0-prediction DDIM, CFG, context windows)
    with torch.no_grad():
        out = denoise_latents(model, cf, tuple(f_c.shape), SamplerSettings(steps=4, guidance_scale=2.0,
                                                                           context_frames=4, context_overlap=2))
    assert (out - f_c).abs().max() < 0.15  # DDIM's last step keeps √(1-ᾱ_0) ≈ 0.03 of its ε̂


def test_trained_model_adds_its_unet_output_to_exactly_the_windows_frames():
    model = build_m2h_model(_skip_cfg(), seed=4)  # perturbed: conv_out is non-zero
    x = random_inputs(model.cfg, frames=6, seed=5)
    z = torch.randn_like(x.clothing_latents)
    idx = torch.tensor([1, 2, 3])
    with torch.no_grad():
        cond = model.encode_conditions(x)
        with_skip = model.denoise(z[:, idx], torch.tensor(300), cond, frames=idx)
        cond.skip = None
        without = model.denoise(z[:, idx], torch.tensor(300), cond, frames=idx)
    assert not torch.allclose(without, torch.zeros_like(without), atol=1e-4)
    assert torch.allclose(with_skip - without, x.clothing_latents[:, idx], atol=1e-5)


def test_trainer_scores_x0_and_the_mirror_loss_gets_it_back(tmp_path):
    torch.manual_seed(0)
    tr = synthetic_trainer(_tc(tmp_path, progressive=False, cond_dropout=0.0),
                           model=build_m2h_model(_skip_cfg(), seed=6))
    seen = loss_step_seen(tr, "x0")
    terms = seen["terms"]
    back = one_step_x0(seen["z_t"], seen["eps"], seen["t"], tr.noise_scheduler)
    assert torch.allclose(back, seen["x0"], atol=1e-3)
    assert torch.isfinite(terms["loss"]) and terms["l_diff"] > 0
    e = torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([0, 999])
    assert torch.allclose(one_step_x0(e, eps_from_x0(e * 0.5, e, t, tr.noise_scheduler), t, tr.noise_scheduler),
                          e * 0.5, atol=1e-4)
