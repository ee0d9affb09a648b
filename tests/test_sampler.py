"""The sampler (issue 3): determinism, context windows without seams, cancel, batched CFG, bad input."""

import pytest
import torch

from m2h_core.config import tiny
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.models.m2h import M2HModel
from m2h_core.inference.inputs import IdentityInputs, VideoInputs
from m2h_core.inference.sampler import (
    SamplerSettings,
    SamplingCancelled,
    guided_epsilon,
    sample_video,
)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny()
    torch.manual_seed(0)
    model = M2HModel(cfg).eval()
    # make the zero-initialised parts non-zero so conditioning really flows
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    return cfg, model, FrozenEncoders.random(cfg)


def video(n, cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.height, cfg.width
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = torch.zeros(n, h, w)
    masks[:, h // 4: 3 * h // 4] = 1
    poses = frames.flip(1)
    ident = torch.rand(3, h, w, generator=g)
    return frames, masks, poses, ident, ident.flip(0), torch.randn(512, generator=g)


def typed(frames, masks, poses, ident, lm, arc):
    return VideoInputs(frames, masks, poses), IdentityInputs(ident, lm, arc)


def test_output_shape_and_determinism(setup):
    cfg, model, enc = setup
    args = video(10, cfg)
    s = SamplerSettings(steps=3, seed=7, context_frames=8, context_overlap=4)
    a = sample_video(model, enc, *typed(*args), s)
    b = sample_video(model, enc, *typed(*args), settings=s)  # positional or keyword settings: the same call
    c = sample_video(model, enc, *typed(*args), settings=SamplerSettings(steps=3, seed=8))
    assert a.frames.shape == (10, 3, cfg.height, cfg.width)
    assert a.latents.shape == (10, 4, *cfg.latent_size)
    assert 0 <= a.frames.min() and a.frames.max() <= 1
    assert torch.equal(a.frames, b.frames)
    assert (a.latents - c.latents).abs().mean() > 1e-2


def test_cancel_stops_within_one_step(setup):
    cfg, model, enc = setup
    seen = []
    with pytest.raises(SamplingCancelled):
        sample_video(model, enc, *typed(*video(20, cfg)), settings=SamplerSettings(steps=10),
                     progress=lambda i, n: seen.append(i), cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2


def test_batched_cfg_equals_separate_passes(setup):
    cfg, model, enc = setup
    frames, masks, poses, ident, lm, arc = video(8, cfg)
    with torch.no_grad():
        inputs = enc.make_inputs(frames[None], masks[None], poses[None], ident[None], lm[None], arc[None])
        both = model.encode_conditions(inputs, classifier_free=True)
        cond = model.encode_conditions(inputs)
        uncond = model.encode_conditions(inputs, drop=torch.tensor([True]))
        z = torch.randn(1, 8, 4, *cfg.latent_size)
        t = torch.tensor(500)
        batched = guided_epsilon(model, z, t, both, None, 7.5)
        e_c = model.denoise(z, t, cond)
        e_u = model.denoise(z, t, uncond)
    assert not torch.allclose(e_c, e_u, atol=1e-4)  # the unconditional branch really drops something
    torch.testing.assert_close(batched, e_u + 7.5 * (e_c - e_u), atol=1e-4, rtol=1e-4)


def test_bad_inputs(setup):
    cfg, model, enc = setup
    frames, masks, poses, ident, lm, arc = video(8, cfg)
    s = SamplerSettings(steps=1)
    with pytest.raises(ValueError, match="one mask and one pose image per frame"):
        sample_video(model, enc, *typed(frames, masks[:7], poses, ident, lm, arc), s)
    with pytest.raises(ValueError, match="empty in every frame"):
        sample_video(model, enc, *typed(frames, torch.zeros_like(masks), poses, ident, lm, arc), s)
    with pytest.raises(ValueError, match="not a multiple"):
        sample_video(model, enc, *typed(frames[..., :30], masks[..., :30], poses[..., :30], ident[..., :30],
                                        lm[..., :30], arc), s)
    bad = frames.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sample_video(model, enc, *typed(bad, masks, poses, ident, lm, arc), s)


def test_offload_gives_the_same_video(setup):
    cfg, model, enc = setup
    args = video(6, cfg)
    s = SamplerSettings(steps=2, seed=3)
    a = sample_video(model, enc, *typed(*args), settings=s)
    b = sample_video(model, enc, *typed(*args), settings=s, offload_device="cpu")
    assert torch.equal(a.frames, b.frames)


def test_defaults_are_the_papers_and_the_model_sets_the_context(setup):
    from m2h_core.inference import defaults

    cfg = setup[0]
    s = SamplerSettings()
    assert (s.steps, s.guidance_scale, s.scheduler) == (50, 7.5, "ddim")  # paper IV-B
    resolved, notes = s.for_video(cfg, 40)
    assert resolved.context_frames == cfg.num_frames and not notes  # the trained clip length wins
    assert SamplerSettings(context_frames=16).for_video(cfg, 40)[0].context_frames == 16
    short, notes = s.for_video(cfg, 5)
    assert (short.context_frames, short.context_overlap) == (5, 4) and "adjusted" in notes[0]
    from m2h_core.inference.sampler import SCHEDULERS

    assert SCHEDULERS == defaults.SCHEDULERS


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_clip_tokens_in_half_precision_on_the_cpu(setup, dtype):
    """Bicubic antialiased resize has no half kernel on the CPU: the encoder resizes in float32 and casts back."""
    cfg = setup[0]
    enc = FrozenEncoders.random(cfg).to(dtype=dtype)
    tokens = enc.clip_tokens(torch.rand(2, 3, cfg.height, cfg.width))
    assert tokens.dtype == dtype and tokens.shape == (2, 1, cfg.clip.projection_dim)
    assert torch.isfinite(tokens.float()).all()


def test_cfg_shortcuts_are_exact_and_taken(setup):
    """The classifier-free pair's shortcuts (adapter.py): the first spatial self-attention once for both halves
    (nothing before it sees the tokens), no attention over the unconditional half's zero tokens. The batched pair
    equals the two branches run as separate batches without any shortcut, and the shortcut layer is the first
    spatial self-attention of the down path, only that one."""
    from m2h_core.models.adapter import PassThroughProcessor

    cfg, model, enc = setup
    flagged = [n for n, m in model.unet.named_modules()
               if isinstance(getattr(m, "processor", None), PassThroughProcessor) and m.processor.first_spatial]
    assert flagged == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    frames, masks, poses, ident, lm, arc = video(6, cfg)
    calls = []
    first = dict(model.unet.named_modules())[flagged[0]]
    hook = first.to_q.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))  # rows attended
    try:
        with torch.no_grad():
            inputs = enc.make_inputs(frames[None], masks[None], poses[None], ident[None], lm[None], arc[None])
            both = model.encode_conditions(inputs, classifier_free=True)
            cond = model.encode_conditions(inputs)
            uncond = model.encode_conditions(inputs, drop=torch.tensor([True]))
            z = torch.randn(1, 6, 4, *cfg.latent_size)
            t = torch.tensor(300)
            pair = model.denoise(torch.cat([z, z]), t, both)
            apart = torch.cat([model.denoise(z, t, cond), model.denoise(z, t, uncond)])
            different = model.denoise(torch.cat([z, z + 0.1]), t, both)  # halves differ: no shared prefix
            apart_different = torch.cat([model.denoise(z, t, cond), model.denoise(z + 0.1, t, uncond)])
    finally:
        hook.remove()
    torch.testing.assert_close(pair, apart, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(different, apart_different, rtol=1e-5, atol=1e-5)
    assert (pair - different).abs().max() > 1e-3
    assert calls == [6, 6, 6, 12, 6, 6]  # the pair: one half; cond; uncond; the differing pair: both; cond; uncond
