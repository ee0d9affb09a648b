"""The encoder interface (m2h_core/inference/encoders.py: VAECodec, ImageEmbedder) and the sampling strength knobs.

The pack's diffusers VAE / transformers CLIP go through the same interface a host's objects use (ComfyUI's VAE and
CLIP_VISION, checked numerically in tests/host/run_host_test.py); here: latents cross it raw and FrozenEncoders
scales them by the config's factor, a host object of the wrong shape is refused with a message naming both sides,
and pose / identity strength change exactly what they name.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m2h_core.config import tiny
from m2h_core.inference.encoders import (DiffusersVAE, EncoderMismatch, FrozenEncoders, HFImageEmbedder,
                                         ImageEmbedder, VAECodec)
from tests.fixtures import build_m2h_model, random_inputs


class HostVAE:
    """A host-side VAE built on another code path: diffusers' encoder/decoder stacks called by hand (no
    AutoencoderKL.encode/decode), raw latents in and out, as ComfyUI's VAE works."""

    def __init__(self, vae, latent_channels=None, downscale=None):
        self.vae = vae
        self.latent_channels = latent_channels or vae.config.latent_channels
        self.downscale = downscale or 2 ** (len(vae.config.block_out_channels) - 1)

    def encode_pixels(self, pixels):
        h = self.vae.quant_conv(self.vae.encoder(pixels * 2 - 1))
        return h.chunk(2, dim=1)[0]  # the posterior's mean = its mode

    def decode_latents(self, latents):
        return (self.vae.decoder(self.vae.post_quant_conv(latents)).clamp(-1, 1) + 1) / 2


class HostCLIP:
    def __init__(self, clip, width=None):
        self.inner = HFImageEmbedder(clip)
        self.projection_dim = width or self.inner.projection_dim

    def embed(self, pixels):
        return self.inner.embed(pixels)


@pytest.fixture(scope="module")
def enc():
    cfg = dataclasses.replace(tiny(), vae=dataclasses.replace(tiny().vae, scaling_factor=0.5))
    return FrozenEncoders.random(cfg, seed=3)


def test_the_pack_and_host_objects_satisfy_the_protocols(enc):
    assert isinstance(DiffusersVAE(enc.vae), VAECodec) and isinstance(HostVAE(enc.vae), VAECodec)
    assert isinstance(HFImageEmbedder(enc.clip), ImageEmbedder) and isinstance(HostCLIP(enc.clip), ImageEmbedder)


@torch.no_grad()
def test_latents_cross_the_interface_raw_and_are_scaled_once(enc):
    x = torch.rand(3, 3, enc.cfg.height, enc.cfg.width, generator=torch.Generator().manual_seed(0))
    raw = enc.vae.encode(x * 2 - 1).latent_dist.mode()
    z = enc.encode(x)
    assert torch.allclose(z, raw * 0.5, atol=1e-6)
    assert torch.allclose(DiffusersVAE(enc.vae).encode_pixels(x), raw, atol=1e-6)
    host = FrozenEncoders(None, enc.clip, enc.cfg, codec=HostVAE(enc.vae))
    assert torch.allclose(host.encode(x), z, atol=1e-5)
    assert torch.allclose(host.decode(z), enc.decode(z), atol=1e-5)
    ref = ((enc.vae.decode(z / 0.5).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(enc.decode(z), ref, atol=1e-6)


@torch.no_grad()
def test_a_host_clip_gives_the_same_tokens(enc):
    x = torch.rand(2, 3, enc.cfg.height, enc.cfg.width, generator=torch.Generator().manual_seed(1))
    host = FrozenEncoders(enc.vae, None, enc.cfg, embedder=HostCLIP(enc.clip))
    assert torch.allclose(host.clip_tokens(x), enc.clip_tokens(x), atol=1e-6)
    assert enc.clip_tokens(x).shape == (2, 1, enc.cfg.unet.cross_attention_dim)


def test_a_vae_of_another_shape_is_refused_naming_both(enc):
    with pytest.raises(EncoderMismatch, match=r"16-channel latents at 1/8.*needs 4 channels at 1/4"):
        FrozenEncoders(None, enc.clip, enc.cfg, codec=HostVAE(enc.vae, latent_channels=16, downscale=8))
    with pytest.raises(EncoderMismatch, match=r"1/8 size.*needs 4 channels at 1/4"):
        FrozenEncoders(None, enc.clip, enc.cfg, codec=HostVAE(enc.vae, downscale=8))


def test_a_clip_of_another_width_is_refused_naming_both(enc):
    with pytest.raises(EncoderMismatch, match=r"1024-wide image embeddings.*needs 32"):
        FrozenEncoders(enc.vae, None, enc.cfg, embedder=HostCLIP(enc.clip, width=1024))


def test_encoders_need_both_parts(enc):
    with pytest.raises(ValueError, match="needs a VAE"):
        FrozenEncoders(None, enc.clip, enc.cfg)


# ------------------------------------------------------------------------------------------ strength knobs


@pytest.fixture(scope="module")
def model_and_inputs():
    cfg = tiny()
    model = build_m2h_model(cfg, seed=0).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # E_pose's output projection is zero-initialised: give it weights so it matters
        model.pose_encoder.to_input.weight.normal_(0, 0.1)
    return model, random_inputs(cfg, frames=2)


@torch.no_grad()
def test_pose_strength_scales_the_pose_residual(model_and_inputs):
    model, inp = model_and_inputs
    c = model.cfg.unet.latent_channels
    one = model.encode_conditions(inp).unet_input
    zero = model.encode_conditions(inp, pose_strength=0.0).unet_input
    half = model.encode_conditions(inp, pose_strength=0.5).unet_input
    assert torch.equal(zero[:, :, c:], inp.clothing_latents) and torch.count_nonzero(zero[:, :, :c]) == 0
    assert torch.allclose(half - zero, 0.5 * (one - zero), atol=1e-6)
    assert (one - zero).abs().max() > 1e-3


@torch.no_grad()
def test_identity_strength_scales_only_the_identity_branch(model_and_inputs):
    model, inp = model_and_inputs
    z = torch.randn(1, 2, *inp.clothing_latents.shape[2:], generator=torch.Generator().manual_seed(2))
    t = torch.tensor(500)
    eps = {s: model.denoise(z, t, model.encode_conditions(inp, identity_strength=s)) for s in (0.0, 1.0, 2.0)}
    assert torch.equal(eps[1.0], model.denoise(z, t, model.encode_conditions(inp)))  # paper default: unchanged
    assert (eps[0.0] - eps[1.0]).abs().max() > 1e-5 and (eps[2.0] - eps[1.0]).abs().max() > 1e-5
    # with the identity tokens themselves zeroed (CFG's unconditional branch) the knob has nothing to scale
    blank = dataclasses.replace(inp, arcface=inp.arcface)
    cond0 = model.encode_conditions(blank, drop=torch.tensor([True]), identity_strength=0.0)
    cond1 = model.encode_conditions(blank, drop=torch.tensor([True]), identity_strength=1.0)
    assert torch.allclose(model.denoise(z, t, cond0), model.denoise(z, t, cond1), atol=1e-6)


def test_strength_out_of_range_is_refused():
    from m2h_core.inference.inputs import InputError
    from m2h_core.inference.sampler import SamplerSettings

    with pytest.raises(InputError, match="pose strength must be between 0 and 2"):
        SamplerSettings(pose_strength=-1).for_video(tiny(), 8)
    with pytest.raises(InputError, match="identity strength must be between 0 and 2"):
        SamplerSettings(identity_strength=3).for_video(tiny(), 8)
