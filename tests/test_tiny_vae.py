"""The tiny preset's VAE: the pretrained file shipped in m2h_core/assets, its save/load, and its errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from m2h_core.config import tiny
from m2h_core.demo.synthetic import generate_dataset
from m2h_core.demo.tiny_vae import (SHIPPED_VAE, VAETrainResult, demo_config, load_vae_weights, reconstruct,
                                    save_vae, vae_training_images)


def psnr(a, b) -> float:
    """metrics.masked_psnr of (N, 3, H, W) images, pooled over all of them (as the VAE's recon_psnr)."""
    from m2h_core.metrics import masked_psnr

    return masked_psnr(a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1), pooled=True)


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
    assert psnr(rec, images) > 22.0
    z = vae.encode(images * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    assert 0.7 < float(z.std()) < 1.4
    # a random VAE of the same size is far worse: the test can fail
    assert psnr(reconstruct(_vae(), images), images) < 15.0


def test_locality_error_measures_how_the_garment_latents_depend_on_the_scene():
    """`locality_error` (issue 12): |E(v ⊙ M_c) - E(v)|² inside the mask, relative to the latents' variance. A mask
    over the whole frame changes nothing (0); with real clothing masks a VAE's GroupNorm statistics make the garment's
    latents depend on the rest of the frame (the shipped VAE measured 0.69 before `localize_vae`, 0.2 after)."""
    from m2h_core.demo.tiny_vae import locality_error, masked_pairs

    x, m = masked_pairs(generate_dataset(2, 1235, n_frames=4, height=128, width=64), 64, 32)
    shipped = _vae()
    load_vae_weights(shipped, SHIPPED_VAE)
    with torch.no_grad():
        assert float(locality_error(shipped, x * 2 - 1, torch.ones_like(m))) == pytest.approx(0.0, abs=1e-10)
        assert float(locality_error(_vae(), x * 2 - 1, m)) > 0.3  # an ordinary (random) VAE: far from local
        assert float(locality_error(shipped, x * 2 - 1, m)) < 0.35


def test_shipped_vae_copies_a_garment_into_its_scene():
    """`splice_psnr`: the mannequin's garment latents (on black) pasted into the human's scene latents decode within
    2 dB of the VAE's own reconstruction of the human frame inside the garment (before `localize_vae`: 3 to 6 dB
    under it), so a model that copies its clothing input (x̂_0 = UNet + f_c) starts near the ceiling."""
    from m2h_core.demo.tiny_vae import garment_triples, splice_psnr

    h, m, k = garment_triples(generate_dataset(3, 2468, n_frames=6, height=128, width=64), 64, 32)
    vae = _vae()
    load_vae_weights(vae, SHIPPED_VAE)
    got = splice_psnr(vae, h, m, k)
    assert got["ceiling"] - got["splice"] < 2.0, got
    rnd = splice_psnr(_vae(), h, m, k)
    assert rnd["ceiling"] < got["ceiling"] - 5, rnd


def test_localize_vae_makes_garment_latents_local_and_keeps_the_latent_space():
    """A few steps of `localize_vae` on a VAE lower its locality error while its latents of whole frames stay
    close to what they were (distillation from the VAE as it was)."""
    from m2h_core.demo.tiny_vae import garment_triples, locality_error, localize_vae

    h, m, k = garment_triples(generate_dataset(2, 1357, n_frames=6, height=128, width=64), 64, 32)
    vae = _vae()
    load_vae_weights(vae, SHIPPED_VAE)
    for p in vae.encoder.parameters():  # undo part of the localisation: a non-local starting point
        p.data.add_(0.02 * torch.randn_like(p))
    with torch.no_grad():
        z0 = vae.encode(h * 2 - 1).latent_dist.mean
        before = float(locality_error(vae, h * 2 - 1, k))
    localize_vae(vae, h, m, k, steps=30, batch_size=4, lr=1e-3)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    with torch.no_grad():
        after = float(locality_error(vae, h * 2 - 1, k))
        drift = float(((vae.encode(h * 2 - 1).latent_dist.mean - z0) ** 2).mean() / z0.var())
    assert after < 0.8 * before, (before, after)
    assert drift < 0.1, drift


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
