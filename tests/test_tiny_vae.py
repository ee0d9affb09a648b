"""The tiny preset's VAE: the pretrained file shipped in m2h_core/assets, its save/load, and its errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from m2h_core.config import tiny
from m2h_core.demo.synthetic import generate_dataset
from m2h_core.demo.tiny_vae import (SHIPPED_VAE, VAETrainResult, _psnr, demo_config, load_vae_weights, reconstruct,
                                    save_vae, vae_training_images)


def _vae(cfg=None) -> AutoencoderKL:
    cfg = cfg or demo_config()
    torch.manual_seed(0)
    return AutoencoderKL(**cfg.vae.vae_kwargs())


def test_shipped_vae_reconstructs_unseen_synthetic_frames():
    """The shipped weights are a working autoencoder on clips it never saw (seeds outside its training stream),
    with unit-variance latents (the scaling factor in its metadata)."""
    vae = _vae()
    res = load_vae_weights(vae, SHIPPED_VAE)
    assert res.steps >= 1000 and not vae.training and not any(p.requires_grad for p in vae.parameters())
    clips = generate_dataset(2, 987654, n_frames=6, height=128, width=64)
    images = vae_training_images(clips, 64, 32)
    rec = reconstruct(vae, images)
    assert _psnr(rec, images) > 22.0
    z = vae.encode(images * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    assert 0.7 < float(z.std()) < 1.4
    # a random VAE of the same size is far worse: the test can fail
    assert _psnr(reconstruct(_vae(), images), images) < 15.0


def test_locality_error_measures_how_the_garment_latents_depend_on_the_scene():
    """`locality_error` (issue 12): |E(v ⊙ M_c) - E(v)|² inside the mask, relative to the latents' variance. A mask over
    the whole frame changes nothing (0); with real clothing masks the shipped VAE's GroupNorm statistics make the
    garment's latents depend on the rest of the frame (measured 0.69 for it, and for the attention VAE before it)."""
    from m2h_core.demo.tiny_vae import locality_error, masked_pairs

    vae = _vae()
    load_vae_weights(vae, SHIPPED_VAE)
    x, m = masked_pairs(generate_dataset(2, 1235, n_frames=4, height=128, width=64), 64, 32)
    with torch.no_grad():
        assert float(locality_error(vae, x * 2 - 1, torch.ones_like(m))) == pytest.approx(0.0, abs=1e-10)
        assert 0.3 < float(locality_error(vae, x * 2 - 1, m)) < 1.5


def test_save_and_load_round_trip_and_errors(tmp_path):
    vae = _vae()
    path = tmp_path / "v.safetensors"
    save_vae(vae, path, VAETrainResult(5, 1.0, 12.5, 0.7, []), {"seed": 3})
    other = _vae()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    res = load_vae_weights(other, path)
    assert res.steps == 5 and res.scaling_factor == pytest.approx(0.7) and other.config.scaling_factor == 0.7
    for a, b in zip(vae.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)

    with pytest.raises(FileNotFoundError, match="missing.safetensors.*python -m m2h_core.demo.tiny_vae"):
        load_vae_weights(_vae(), tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_vae_weights(_vae(), bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a tiny-VAE file"):
        load_vae_weights(_vae(), foreign)
    cfg = tiny()
    cfg.vae.block_out_channels = (8, 16, 16)
    with pytest.raises(ValueError, match="another size"):
        load_vae_weights(_vae(cfg), path)
