"""M2HModel and its parts (paper Sec. III-C): shapes, Eq. 3 adapter, zero-initialisation, context windows, sd15 size.

Everything runs the real modules on the CPU. `build_m2h_model(perturb=True)` adds noise to every parameter, so the
zero-initialised projections are non-zero and every branch carries signal (a "trained" model); `perturb=False`
is the model exactly as initialised.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import m2h_core.models.adapter as adapter_mod
from m2h_core.config import sd15, tiny
from m2h_core.models.adapter import AdapterKV, HeadClothingAdapterProcessor, match_distribution, project_all
from m2h_core.models.m2h import M2HConditioning, M2HModel
from m2h_core.models.unet import build_unet, run_unet, widen_conv_in
from tests.fixtures import build_m2h_model, build_motion_adapter, build_sd15_parts, random_inputs, randomize_

T = torch.tensor



def _cfg(**changes):
    cfg = tiny()
    for k, v in changes.items():
        if k in ("normalize", "enabled"):
            cfg.adapter = dataclasses.replace(cfg.adapter, **{k: v})
        else:
            setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def model() -> M2HModel:
    return build_m2h_model(tiny(), seed=0)


def _adapter_layers(unet):
    return [(n, m) for n, m in unet.named_modules() if isinstance(getattr(m, "processor", None),
                                                                  HeadClothingAdapterProcessor)]


def _heads(attn, x):
    """(N, L, heads*d) -> (N, heads, L, d)"""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _attend(q, k, v):
    """Plain softmax attention (no SDPA), (N, h, L, d) x (N, h, T, d) -> (N, L, h*d)."""
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v).transpose(1, 2).flatten(2)


# -- shapes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 32), (32, 16)], ids=["full", "half"])
@torch.no_grad()
def test_shapes_through_every_component(model, size):
    """Full size and half size (Algorithm 1, lines 6-9) with the same weights."""
    cfg = model.cfg
    B, Fr = 2, 3
    H, W = size
    h, w = H // cfg.vae.downscale, W // cfg.vae.downscale
    c = cfg.unet.latent_channels
    inputs = random_inputs(cfg, batch=B, frames=Fr, height=H, width=W, seed=1)
    inputs.check(cfg)

    feats, residual = model.pose_encoder(inputs.pose_images.flatten(0, 1))  # E_pose
    assert feats.shape == (B * Fr, cfg.head.pose_channels[-1], h, w)
    assert residual.shape == (B * Fr, 2 * c, h, w)

    id_feat = model.id_encoder(inputs.identity_landmarks)  # E_id
    assert id_feat.shape == (B, c, h, w)

    f_pi = model.head_encoder(inputs.identity_latent + id_feat, inputs.arcface, feats.unflatten(0, (B, Fr)))  # H
    n_tok = (h // cfg.head.token_patch) * (w // cfg.head.token_patch) + cfg.head.arcface_tokens
    assert model.head_encoder.num_tokens((h, w)) == n_tok
    assert f_pi.shape == (B, Fr, n_tok, cfg.unet.cross_attention_dim)

    kv = project_all(model.unet, inputs.clip_tokens, f_pi)  # A's keys / values
    layers = dict(_adapter_layers(model.unet))
    assert set(kv.kv) == set(layers) and layers
    for name, tensors in kv.kv.items():
        attn = layers[name]
        d = attn.inner_dim // attn.heads
        assert [tuple(t.shape) for t in tensors] == [(B, Fr, attn.heads, inputs.clip_tokens.shape[2], d)] * 2 + [
            (B, Fr, attn.heads, n_tok, d)] * 2
    window = kv.frames(slice(0, 2))
    assert all(t.shape[0] == B * 2 for ts in window.values() for t in ts)

    sample = torch.randn(B, Fr, 2 * c, h, w)
    eps = run_unet(model.unet, sample, T([3, 900]), kv.frames(None))  # UNet
    assert eps.shape == (B, Fr, c, h, w)

    z = torch.randn(B, Fr, c, h, w)
    out = model(z, T([10, 500]), inputs)  # M2HModel.forward
    assert out.shape == (B, Fr, c, h, w) and torch.isfinite(out).all()

    cond = model.encode_conditions(inputs, classifier_free=True)
    assert isinstance(cond, M2HConditioning) and cond.num_frames == Fr
    assert cond.unet_input.shape == (2 * B, Fr, 2 * c, h, w)
    assert torch.equal(cond.unet_input[:B], cond.unet_input[B:])
    assert not cond.kv.kv and cond.kv.uncond  # tokens stored once; keys/values and the CFG half made per window
    base, window_kv = cond.window(None)
    assert set(window_kv) == set(layers)
    assert all(t.shape[0] == 2 * B * Fr for ts in window_kv.values() for t in ts)
    for ts in window_kv.values():  # unconditional half: zero tokens -> zero keys/values (no bias in to_k/to_v)
        ts = [t.unflatten(0, (2 * B, Fr)) for t in ts]
        assert ts[0][:B].abs().sum() > 0 and ts[2][:B].abs().sum() > 0
        assert not ts[2][B:].any() and not ts[0][B:].any()
    both = model.denoise(torch.cat([z, z]), T(500), cond)
    assert both.shape == (2 * B, Fr, c, h, w)
    # the conditional half is the ordinary prediction at t = 500 for both clips
    torch.testing.assert_close(both[:B], model.denoise(z, T([500, 500]), model.encode_conditions(inputs)),
                               rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[:B], both[B:], atol=1e-3)


@torch.no_grad()
def test_condition_dropout_equals_unconditional_branch(model):
    inputs = random_inputs(model.cfg, batch=2, frames=2, seed=2)
    z = torch.randn(2, 2, 4, 16, 8)
    dropped = model(z, T([700, 700]), inputs, drop=T([True, False]))
    both = model.denoise(torch.cat([z, z]), T(700), model.encode_conditions(inputs, classifier_free=True))
    torch.testing.assert_close(dropped[0], both[2], rtol=1e-4, atol=1e-5)  # clip 0 dropped = its uncond branch
    torch.testing.assert_close(dropped[1], both[1], rtol=1e-4, atol=1e-5)  # clip 1 kept = its cond branch


def test_input_checks_name_the_problem(model):
    good = random_inputs(model.cfg, batch=1, frames=2)
    cases = {
        "pose images are 1 clips x 3 frames": dict(pose_images=torch.zeros(1, 3, 3, 64, 32)),
        "resize them to the frame size": dict(pose_images=torch.zeros(1, 2, 3, 128, 32)),
        "identity latent has shape": dict(identity_latent=torch.zeros(1, 4, 8, 8)),
        "identity landmark image has shape": dict(identity_landmarks=torch.zeros(1, 3, 32, 16)),
        "ArcFace embedding has shape": dict(arcface=torch.zeros(1, 128)),
        "CLIP tokens have shape": dict(clip_tokens=torch.zeros(1, 2, 1, 768)),
        "arcface contains NaN": dict(arcface=torch.full((1, 512), float("nan"))),
    }
    for msg, change in cases.items():
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(good, **change).check(model.cfg)
    with pytest.raises(ValueError, match="conditioning window"):
        model.denoise(torch.zeros(1, 1, 4, 16, 8), T(1), model.encode_conditions(good))


@torch.no_grad()
def test_frozen_encoders_feed_the_model(model):
    """Pixels -> M2HInputs through the (random) VAE and CLIP encoder, at full and half size; decode back."""
    from m2h_core.inference.encoders import FrozenEncoders

    enc = FrozenEncoders.random(model.cfg, seed=0)
    enc.chunk = 3  # several chunks per call
    g = torch.Generator().manual_seed(0)
    for H, W in ((64, 32), (32, 16)):
        frames = torch.rand(1, 4, 3, H, W, generator=g)
        masks = (torch.rand(1, 4, H, W, generator=g) > 0.5).float()
        inputs = enc.make_inputs(frames, masks, torch.rand(1, 4, 3, H, W, generator=g),
                                 torch.rand(1, 3, H, W, generator=g), torch.rand(1, 3, H, W, generator=g),
                                 torch.randn(1, 512, generator=g))
        inputs.check(model.cfg)
        assert inputs.clip_tokens.shape == (1, 4, 1, model.cfg.unet.cross_attention_dim)
        # the clothing latents are those of the masked frames, chunking does not change them
        torch.testing.assert_close(inputs.clothing_latents[0, 3], enc.encode(frames[0, 3] * masks[0, 3]))
        out = model(inputs.clothing_latents, T([5]), inputs)
        pixels = enc.decode(out)
        assert pixels.shape == (1, 4, 3, H, W) and 0 <= pixels.min() and pixels.max() <= 1
    enc64 = FrozenEncoders.random(model.cfg, seed=0).to(dtype=torch.float64)
    assert enc64.decode(torch.randn(2, 4, 16, 8)).shape == (2, 3, 64, 32)  # float32 latents, float64 VAE


# -- Eq. 3: the distribution-aware head-clothing adapter -------------------------------------------------------------


def test_match_distribution_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 16, generator=g) * 4 + 2
    ref = torch.randn(3, 20, 16, generator=g) * torch.tensor([0.1, 1.0, 7.0]).view(3, 1, 1) - 1
    y = match_distribution(x, ref)
    torch.testing.assert_close(y.mean(dim=(1, 2)), ref.mean(dim=(1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(1, 2), unbiased=False), ref.std(dim=(1, 2), unbiased=False), rtol=1e-5,
                               atol=1e-6)
    # an affine map of x per sample: its own pattern is kept (correlation 1), only the statistics move
    for i in range(3):
        assert torch.corrcoef(torch.stack([x[i].flatten(), y[i].flatten()]))[0, 1] > 0.9999


class _Capture:
    """Forward hook on one adapter attention: records its input hidden states, keys/values and output."""

    def __init__(self, attn, name):
        self.name, self.calls = name, []
        self.handle = attn.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, out):
        h = args[0] if args else kwargs["hidden_states"]
        self.calls.append((h.detach().clone(), kwargs["m2h_kv"][self.name], out.detach().clone()))


def _run_and_capture(model, inputs, z, t):
    name, attn = _adapter_layers(model.unet)[0]
    cap = _Capture(attn, name)
    try:
        with torch.no_grad():  # keys/values precomputed, as the sampler does (training's lazy path: see below)
            out = model.denoise(z, t, model.encode_conditions(inputs))
    finally:
        cap.handle.remove()
    assert cap.calls, "the adapter layer was not called"
    return name, attn, cap.calls, out


def _manual_branches(attn, proc, h, kv):
    q = _heads(attn, attn.to_q(h))
    return _attend(q, kv[0], kv[1]), _attend(q, kv[2], kv[3])


def test_eq3_identity_branch_takes_clothing_statistics(model, monkeypatch):
    """Hook the processor: z_pi' has exactly z_clip's per-sample mean/std (dims 1, 2) and out = to_out(z_clip+z_pi')."""
    spied = []
    real = adapter_mod.match_distribution

    def spy(x, ref, eps=1e-6):
        y = real(x, ref, eps)
        spied.append((x, ref, y))
        return y

    monkeypatch.setattr(adapter_mod, "match_distribution", spy)
    inputs = random_inputs(model.cfg, batch=2, frames=2, seed=3)
    name, attn, calls, _ = _run_and_capture(model, inputs, torch.randn(2, 2, 4, 16, 8), T([50, 800]))
    assert len(spied) >= len(_adapter_layers(model.unet))  # every adapter layer normalises
    proc = attn.processor
    h, kv, out = calls[0]
    z_clip, z_pi = _manual_branches(attn, proc, h, kv)
    # find this layer's call among the spied ones: its reference is z_clip
    x, ref, y = next(s for s in spied if s[1].shape == z_clip.shape and torch.allclose(s[1], z_clip, atol=1e-5))
    torch.testing.assert_close(x, z_pi, rtol=1e-4, atol=1e-5)
    mu, sd = y.mean(dim=(1, 2)), y.std(dim=(1, 2), unbiased=False)
    torch.testing.assert_close(mu, z_clip.mean(dim=(1, 2)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sd, z_clip.std(dim=(1, 2), unbiased=False), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(z_pi.std(dim=(1, 2)), z_clip.std(dim=(1, 2)), rtol=0.05)  # it did move something
    # Eq. 3 written out independently
    z_pi_n = (z_pi - z_pi.mean(dim=(1, 2), keepdim=True)) / z_pi.std(dim=(1, 2), keepdim=True, unbiased=False) \
        * z_clip.std(dim=(1, 2), keepdim=True, unbiased=False) + z_clip.mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out, attn.to_out[0](z_clip + z_pi_n), rtol=1e-4, atol=1e-5)


def test_eq3_normalize_false_is_plain_addition(model):
    cfg = _cfg(normalize=False)
    plain = M2HModel(cfg).eval()
    plain.load_state_dict(model.state_dict())  # same weights, only the switch differs
    inputs = random_inputs(model.cfg, batch=1, frames=2, seed=4)
    z, t = torch.randn(1, 2, 4, 16, 8), T([300])
    name, attn, calls, out_plain = _run_and_capture(plain, inputs, z, t)
    h, kv, out = calls[0]
    z_clip, z_pi = _manual_branches(attn, attn.processor, h, kv)
    torch.testing.assert_close(out, attn.to_out[0](z_clip + z_pi), rtol=1e-4, atol=1e-5)
    # the same layer with normalize=True on the same inputs gives something else, and so does the model
    normed = model.unet.get_submodule(name)
    with torch.no_grad():
        out_norm = normed(h, m2h_kv={name: kv})
        assert not torch.allclose(out_norm, out, atol=1e-3)
        assert not torch.allclose(model(z, t, inputs), out_plain, atol=1e-3)


def test_adapter_disabled_is_one_attention_over_concatenated_tokens():
    cfg = _cfg(enabled=False)
    model = build_m2h_model(cfg, seed=5)
    keys = list(model.state_dict())
    assert not any("to_k_id" in k or "to_v_id" in k for k in keys)
    assert any("to_k_id" in k for k in build_m2h_model(tiny(), seed=5, perturb=False).state_dict())
    layers = _adapter_layers(model.unet)
    assert layers and all(not hasattr(m.processor, "to_k_id") for _, m in layers)

    name, attn = layers[0]
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(2, 3, 1, cfg.unet.cross_attention_dim, generator=g)
    ids = torch.randn(2, 3, 7, cfg.unet.cross_attention_dim, generator=g)
    kv = AdapterKV({name: attn.processor.project_kv(attn, clip, ids)})
    assert len(kv.kv[name]) == 2 and kv.kv[name][0].shape[3] == 1 + 7
    h = torch.randn(6, 10, attn.query_dim, generator=g)
    with torch.no_grad():
        out = attn(h, m2h_kv=kv.frames(None))
        # diffusers' own cross-attention processor over the concatenated token sequence
        ref = AttnProcessor2_0()(attn, h, encoder_hidden_states=torch.cat([clip, ids], dim=2).flatten(0, 1))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # and the whole model runs
    inputs = random_inputs(cfg, batch=1, frames=2, seed=6)
    with torch.no_grad():
        assert model(torch.randn(1, 2, 4, 16, 8), T([20]), inputs).shape == (1, 2, 4, 16, 8)


def test_adapter_kv_projections_start_as_the_unets_own():
    model = M2HModel(tiny())
    for _, attn in _adapter_layers(model.unet):
        assert torch.equal(attn.processor.to_k_id.weight, attn.to_k.weight)
        assert torch.equal(attn.processor.to_v_id.weight, attn.to_v.weight)
        assert attn.processor.to_k_id.weight.data_ptr() != attn.to_k.weight.data_ptr()  # copies, not shared
    # motion modules and self-attention are not adapter layers
    names = [n for n, _ in _adapter_layers(model.unet)]
    assert all(n.endswith("attn2") and "motion_modules" not in n for n in names)


def test_without_head_encoder_no_attention_is_used():
    """use_head_encoder=False ("w/o H"): additive identity + pose tokens; H's attention layers play no part."""
    for fuse in (False, True):
        cfg = _cfg(use_head_encoder=fuse)
        model = build_m2h_model(cfg, seed=7)
        he = model.head_encoder
        assert he.fuse is fuse
        inputs = random_inputs(cfg, batch=2, frames=3, seed=8)
        with torch.no_grad():
            feats = model.pose_encoder(inputs.pose_images.flatten(0, 1))[0].unflatten(0, (2, 3))
            id_lat = inputs.identity_latent + model.id_encoder(inputs.identity_landmarks)
            before = he(id_lat, inputs.arcface, feats)
            perturbed = copy.deepcopy(he)
            randomize_(perturbed.layers, seed=99, scale=0.5)
            after = perturbed(id_lat, inputs.arcface, feats)
            if fuse:
                assert not torch.allclose(before, after, atol=1e-3)
                continue
            torch.testing.assert_close(before, after, rtol=0, atol=0)
            assert len(he.layers) == 0  # no parameters that never get a gradient (DDP would fail on them)
            # the additive path written out: grid tokens + pooled pose tokens, ArcFace tokens + mean pose token
            q = he.queries(id_lat, inputs.arcface).repeat_interleave(3, dim=0)
            kv = he.pose_tokens(feats.flatten(0, 1))
            n = kv.shape[1]
            x = torch.cat([q[:, :n] + kv, q[:, n:] + kv.mean(dim=1, keepdim=True)], dim=1)
            ref = he.proj_out(he.norm_out(x)).unflatten(0, (2, 3))
            torch.testing.assert_close(before, ref, rtol=1e-5, atol=1e-6)
            # the identity tokens still depend on the pose of each frame
            assert not torch.allclose(before[:, 0], before[:, 1], atol=1e-4)


# -- zero initialisation -------------------------------------------------------------------------------------------


@torch.no_grad()
def test_widened_conv_in_reproduces_the_loaded_unet():
    cfg = tiny()
    unet2d, _ = build_sd15_parts(cfg, seed=11)  # "loaded": 4-channel SD-1.5-style UNet, every weight non-trivial
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 16, 8, generator=g)
    ehs = torch.randn(2, 3, cfg.unet.cross_attention_dim, generator=g)
    t = T([10, 700])
    ref = unet2d(z, t, encoder_hidden_states=ehs).sample
    old_w = unet2d.conv_in.weight.clone()
    wide = widen_conv_in(copy.deepcopy(unet2d), 8)
    assert wide.conv_in.in_channels == 8 and wide.config.in_channels == 8
    assert torch.equal(wide.conv_in.weight[:, :4], old_w) and not wide.conv_in.weight[:, 4:].any()
    for anything in (torch.zeros(2, 4, 16, 8), 5 * torch.randn(2, 4, 16, 8, generator=g)):
        out = wide(torch.cat([z, anything], dim=1), t, encoder_hidden_states=ehs).sample
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert widen_conv_in(wide, 8) is wide and wide.conv_in.in_channels == 8  # no-op when already wide
    with pytest.raises(ValueError, match="more than"):
        widen_conv_in(wide, 4)


@torch.no_grad()
def test_at_init_output_ignores_clothing_channels_pose_residual_and_landmarks():
    cfg = tiny()
    c = cfg.unet.latent_channels
    unet2d, _ = build_sd15_parts(cfg, seed=12)
    for m in (M2HModel(cfg).eval(), M2HModel(cfg, unet=build_unet(cfg, unet2d, build_motion_adapter(cfg))).eval()):
        assert not m.unet.conv_in.weight[:, c:].any()
        inputs = random_inputs(cfg, batch=1, frames=2, seed=13)
        cond = m.encode_conditions(inputs)
        assert not cond.unet_input[:, :, :c].any()  # zero pose residual on the z_t channels
        assert torch.equal(cond.unet_input[:, :, c:], inputs.clothing_latents)  # and on the clothing channels
        z, t = torch.randn(1, 2, c, 16, 8), T([400])
        ref = m(z, t, inputs)
        other_clothing = dataclasses.replace(inputs, clothing_latents=10 * torch.randn_like(inputs.clothing_latents))
        torch.testing.assert_close(m(z, t, other_clothing), ref, rtol=0, atol=1e-6)
        other_landmarks = dataclasses.replace(inputs, identity_landmarks=-inputs.identity_landmarks)
        torch.testing.assert_close(m(z, t, other_landmarks), ref, rtol=0, atol=1e-6)  # E_id starts at zero
        # once the zero projections learn something, each input does matter (the checks above can fail)
        trained = copy.deepcopy(m)
        randomize_(trained.unet.conv_in, seed=1)
        assert not torch.allclose(trained(z, t, other_clothing), trained(z, t, inputs), atol=1e-4)
        trained = copy.deepcopy(m)
        randomize_(trained.pose_encoder.to_input, seed=2)
        assert trained.encode_conditions(inputs).unet_input[:, :, :c].any()
        assert not torch.allclose(trained(z, t, inputs), ref, atol=1e-5)
        trained = copy.deepcopy(m)
        randomize_(trained.id_encoder.to_latent, seed=3)
        assert not torch.allclose(trained(z, t, other_landmarks), trained(z, t, inputs), atol=1e-5)


def test_loaded_unet_weights_are_kept():
    cfg = tiny()
    unet2d, _ = build_sd15_parts(cfg, seed=14)
    motion = build_motion_adapter(cfg, seed=15)
    src = {k: v.clone() for k, v in unet2d.state_dict().items()}
    m = M2HModel(cfg, unet=build_unet(cfg, unet2d, motion))
    own = m.unet.state_dict()
    for k, v in src.items():
        if k == "conv_in.weight":
            assert torch.equal(own[k][:, :4], v)
        else:
            assert torch.equal(own[k], v), k
    mm = {k: v for k, v in own.items() if "motion_modules" in k}
    for k, v in motion.state_dict().items():
        assert torch.equal(mm[k], v), k


# -- context windows -----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_context_window_slices_match_full_video_without_motion():
    cfg = _cfg(use_motion=False)
    model = build_m2h_model(cfg, seed=21)
    Fr = 5
    inputs = random_inputs(cfg, batch=2, frames=Fr, seed=22)
    z = torch.randn(2, Fr, 4, 16, 8)
    t = T([100, 600])
    for cfg_batch in (False, True):
        cond = model.encode_conditions(inputs, classifier_free=cfg_batch)
        zz = torch.cat([z, z]) if cfg_batch else z
        tt = torch.cat([t, t]) if cfg_batch else t
        full = model.denoise(zz, tt, cond)
        for idx in (T([0, 2, 4]), slice(1, 4), T([3]), T([4, 0])):
            win = model.denoise(zz[:, idx], tt, cond, frames=idx)
            torch.testing.assert_close(win, full[:, idx], rtol=1e-4, atol=1e-5)
    # frames differ from one another (the equality above is not trivially satisfied)
    assert not torch.allclose(full[:, 0], full[:, 1], atol=1e-3)


@torch.no_grad()
def test_context_window_with_motion_couples_frames(model):
    inputs = random_inputs(model.cfg, batch=1, frames=4, seed=23)
    z = torch.randn(1, 4, 4, 16, 8)
    cond = model.encode_conditions(inputs)
    full = model.denoise(z, T([300]), cond)
    torch.testing.assert_close(model.denoise(z, T([300]), cond, frames=slice(None)), full)
    idx = T([0, 1])
    win = model.denoise(z[:, idx], T([300]), cond, frames=idx)
    assert not torch.allclose(win, full[:, idx], atol=1e-4)  # temporal attention sees the other frames


# -- the paper's size -----------------------------------------------------------------------------------------------


@torch.inference_mode()
def test_sd15_preset_builds_and_runs_one_forward():
    """SD-1.5 UNet + AnimateDiff motion + A + H with random weights, one epsilon prediction on a 64x32 latent."""
    cfg = sd15()
    t0 = time.time()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = M2HModel(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 1.2e9 < n_params < 1.6e9  # 860M UNet + ~450M motion modules + adapter/encoders
    assert model.unet.conv_in.in_channels == 8
    assert len(_adapter_layers(model.unet)) == 16  # SD-1.5 has 16 spatial cross-attention blocks
    B, Fr, h, w = 1, 2, 64, 32
    inputs = random_inputs(cfg, batch=B, frames=Fr, height=h * 8, width=w * 8, seed=0, clip_tokens=1)
    assert inputs.clothing_latents.shape == (B, Fr, 4, h, w)
    out = model(torch.randn(B, Fr, 4, h, w), T([500]), inputs)
    assert out.shape == (B, Fr, 4, h, w) and torch.isfinite(out).all() and out.abs().mean() > 0
    print(f"sd15 build + forward: {time.time() - t0:.1f} s, {n_params / 1e6:.0f}M parameters")


def test_lazy_adapter_projection_equals_precomputed_keys_values():
    """Training projects A's keys/values inside each attention forward (FSDP); sampling precomputes them once."""
    from m2h_core.models.m2h import M2HModel
    from tests.fixtures import random_inputs

    cfg = tiny()
    torch.manual_seed(0)
    model = M2HModel(cfg).eval()
    inputs = random_inputs(cfg, batch=2, frames=3, seed=1)
    h, w = cfg.latent_size
    z = torch.randn(2, 3, cfg.unet.latent_channels, h, w, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 900])
    drop = torch.tensor([False, True])
    with torch.no_grad():
        lazy = model(z, t, inputs, drop)
        pre = model.denoise(z, t, model.encode_conditions(inputs, drop=drop))
        cond = model.encode_conditions(inputs, drop=drop, precompute_kv=False)
        assert not cond.kv.kv and cond.kv.tokens is not None
        window = model.denoise(z[:, 1:], t, cond, frames=slice(1, 3))
        pre_window = model.denoise(z[:, 1:], t, model.encode_conditions(inputs, drop=drop), frames=slice(1, 3))
    torch.testing.assert_close(lazy, pre, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(window, pre_window, rtol=1e-5, atol=1e-6)
    assert (lazy[0] - lazy[1]).abs().max() > 1e-4  # the two clips differ (the test can fail)
