"""Chunks of context windows (issue 15): one UNet call per chunk of consecutive windows, the spatial layers once per
frame, every motion module once per window (the chunk's windows as a batch), blended back to frames with the
windows' ramp weights normalised per frame.

The right answers are stated independently of the code: chunk groupings and weights as hand tables; a hand-written
reference UNet call (each motion module replaced by a loop that runs the real module on each window separately and
blends with the hand-table weights); a hand-written per-window sampling loop (the path before chunks) that one window
per chunk must reproduce bitwise; and a hand-written chunk blend of the reference calls for the whole sampler.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from m2h_core.config import tiny
from m2h_core.inference.sampler import (
    SamplerSettings,
    chunk_plan,
    context_chunks,
    context_windows,
    denoise_latents,
    make_scheduler,
    window_weights,
)
from tests.fixtures import build_m2h_model, random_inputs

third = 1 / 3
N = 10  # windows of 4 overlapping by 2 start at 0, 2, 4, 6; chunks of 6 frames: windows {0, 2} and {4, 6}


# --------------------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize("n, length, overlap, max_frames, groups", [
    (64, 8, 4, 32, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]),  # greedy packs 7+7+1; spread 5+5+5
    (64, 8, 4, 8, [[k] for k in range(15)]),  # chunk = window: the per-window path
    (64, 8, 4, 4, [[k] for k in range(15)]),  # smaller than a window: still one window per call
    (64, 8, 4, 64, [list(range(15))]),  # the whole video in one call
    (10, 4, 2, 6, [[0, 1], [2, 3]]),
    (11, 4, 2, 6, [[0, 1], [2, 3], [4]]),  # windows at 0, 2, 4, 6, 7: 4..10 would be 7 frames
    (11, 4, 2, 7, [[0, 1], [2, 3, 4]]),  # spread evenly 3+2 would need 0..7 (8 frames): greedy kept
    (8, 8, 4, 32, [[0]]),  # the video is one window
])
def test_chunks_by_hand(n, length, overlap, max_frames, groups):
    windows = context_windows(n, length, overlap)
    got = context_chunks(windows, max_frames)
    assert got == groups
    for g in got:  # every chunk fits its budget (or is a single window)
        assert len(g) == 1 or int(windows[g[-1]][-1]) - int(windows[g[0]][0]) + 1 <= max_frames


def test_chunk_plan_weights_by_hand():
    a, b = chunk_plan(N, 4, 2, 6)
    assert a.index.tolist() == [0, 1, 2, 3, 4, 5] and b.index.tolist() == [4, 5, 6, 7, 8, 9]
    # each chunk's output weight is the sum of its windows' ramps (windows 0 and 2 in chunk a, 4 and 6 in chunk b)
    torch.testing.assert_close(a.weight.flatten(), torch.tensor([1, 1, 1, 1, 2 * third, third]), rtol=0, atol=1e-6)
    torch.testing.assert_close(b.weight.flatten(), torch.tensor([third, 2 * third, 1, 1, 1, 1]), rtol=0, atol=1e-6)
    # inside chunk a: window 0 on frames 0-3, window 2 on frames 2-5; frames 2, 3 crossfade (2/3, 1/3), (1/3, 2/3)
    assert a.motion.index.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5]]
    torch.testing.assert_close(a.motion.weight, torch.tensor([[1, 1, 2 * third, third], [third, 2 * third, 1, 1]]),
                               rtol=0, atol=1e-6)
    assert b.motion.index.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5]]  # positions within the chunk (frames 4-9)
    torch.testing.assert_close(b.motion.weight, a.motion.weight, rtol=0, atol=1e-6)
    # one window per chunk: no motion windows, the chunk's weight is the window's ramp
    for chunk, w in zip(chunk_plan(N, 4, 2, 4), context_windows(N, 4, 2)):
        assert chunk.motion is None and torch.equal(chunk.index, w)
        assert torch.equal(chunk.weight.flatten(), window_weights(w, N, 2))
    (only,) = chunk_plan(8, 8, 4, 32)
    assert only.motion is None and only.index.tolist() == list(range(8))


# --------------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module", params=["epsilon", "clothing_skip"])
def motion_model(request):
    cfg = tiny()
    if request.param == "clothing_skip":  # x̂_0 = UNet + f_c: the skip is sliced by the chunk's frames
        cfg = dataclasses.replace(cfg, prediction_type="sample", clothing_skip=True)
    model = build_m2h_model(cfg, seed=3, perturb=True)  # every zero-init perturbed: all inputs reach the output
    with torch.no_grad():
        cond = model.encode_conditions(random_inputs(cfg, frames=N, seed=5), classifier_free=True)
    return cfg, model, cond


class hand_windowed_motion:
    """Every motion module replaced by: for each window (start, ramp-derived weights from the hand table) run the
    real module on that window's frames alone, then per frame the weighted sum of the windows' outputs."""

    def __init__(self, model, starts, length, weights):
        self.modules = [m for m in model.unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
        self.starts, self.length, self.weights = starts, length, weights
        assert self.modules

    def __enter__(self):
        for m in self.modules:
            plain = type(m).forward.__get__(m)

            def forward(hidden_states, *args, num_frames=1, _plain=plain, **kwargs):
                frames = hidden_states.unflatten(0, (-1, num_frames))  # (B, F, C, h, w)
                out = torch.zeros_like(frames)
                for s, w in zip(self.starts, self.weights):
                    part = frames[:, s: s + self.length].flatten(0, 1)
                    y = _plain(part, num_frames=self.length).unflatten(0, (-1, self.length))
                    out[:, s: s + self.length] += torch.tensor(w).view(1, -1, 1, 1, 1) * y
                return out.flatten(0, 1)

            m.forward = forward
        return self

    def __exit__(self, *exc):
        for m in self.modules:
            del m.forward


CHUNK_A_WEIGHTS = [[1, 1, 2 * third, third], [third, 2 * third, 1, 1]]  # windows at 0 and 2 of a 6-frame chunk


def test_one_chunk_call_equals_the_hand_written_window_loop(motion_model):
    cfg, model, cond = motion_model
    plan = chunk_plan(N, 4, 2, 6)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, N, cfg.unet.latent_channels, *cfg.latent_size, generator=g)  # the CFG batch
    t = torch.tensor(700)
    with torch.no_grad():
        for chunk in plan:
            idx = chunk.index
            got = model.denoise(z[:, idx], t, cond, frames=idx, motion_windows=chunk.motion)
            with hand_windowed_motion(model, [0, 2], 4, CHUNK_A_WEIGHTS):
                want = model.denoise(z[:, idx], t, cond, frames=idx)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            # not the same as the motion modules seeing the 6 frames as one clip (GroupNorm statistics and
            # positions per window matter) ...
            whole = model.denoise(z[:, idx], t, cond, frames=idx)
            assert (got - whole).abs().max() > 1e-2
            # ... nor as blending whole-UNet window passes at the output (the per-window path)
            per_window = torch.zeros_like(got)
            for s, w in zip([0, 2], [[1, 1, 2 * third, third], [third, 2 * third, 1, 1]]):
                win = idx[s: s + 4]
                per_window[:, s: s + 4] += torch.tensor(w).view(1, -1, 1, 1, 1) * model.denoise(
                    z[:, win], t, cond, frames=win)
            assert (got - per_window).abs().max() > 1e-3


class StandIn(nn.Module):
    """The sampler only calls `denoise`; this one returns `fn(z, t, frames)` (frames None = the whole video)."""

    def __init__(self, cfg, fn):
        super().__init__()
        self.cfg = SimpleNamespace(prediction_type=cfg.prediction_type)
        self.anchor = nn.Parameter(torch.zeros(1))
        self.fn = fn

    def denoise(self, z, t, cond, frames=None, **_):
        return self.fn(z, t, frames)


def test_chunked_sampler_equals_the_hand_written_chunk_blend(motion_model):
    """The whole sampler (CFG 3) with chunks of 6 frames equals one-window sampling whose prediction is the hand
    blend of the two chunks' reference calls (chunk a's output weights [1, 1, 1, 1, 2/3, 1/3] on frames 0-5, chunk b's
    [1/3, 2/3, 1, 1, 1, 1] on frames 4-9)."""
    cfg, model, cond = motion_model
    shape = (1, N, cfg.unet.latent_channels, *cfg.latent_size)
    # batched CFG: the stand-in below answers for the [conditional; unconditional] batch
    s = SamplerSettings(steps=2, guidance_scale=3.0, seed=2, context_frames=4, context_overlap=2, chunk_frames=6,
                        batch_cfg=True)
    chunk_weight = {0: [1, 1, 1, 1, 2 * third, third], 4: [third, 2 * third, 1, 1, 1, 1]}

    def hand_blend(z, t, frames):
        assert frames is None
        eps = torch.zeros_like(z[:1].float())
        with hand_windowed_motion(model, [0, 2], 4, CHUNK_A_WEIGHTS):
            for start, w in chunk_weight.items():
                idx = torch.arange(start, start + 6)
                e_c, e_u = model.denoise(torch.cat([z[:1, idx]] * 2), t, cond, frames=idx).float().chunk(2)
                eps[:, idx] += torch.tensor(w).view(1, -1, 1, 1, 1) * (e_u + 3.0 * (e_c - e_u))
        return torch.cat([eps, eps])  # read back by CFG as e_u + 3 (e_c - e_u) = eps

    with torch.no_grad():
        got = denoise_latents(model, cond, shape, s)
        want = denoise_latents(StandIn(cfg, hand_blend), cond, shape,
                               dataclasses.replace(s, guidance_scale=3.0, context_frames=N))
        per_window = denoise_latents(model, cond, shape, dataclasses.replace(s, chunk_frames=4))
        split = denoise_latents(model, cond, shape, dataclasses.replace(s, batch_cfg=False))  # two CFG calls
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(split, got, rtol=1e-4, atol=1e-4)
    assert (got - per_window).abs().max() > 1e-3  # chunks are not the per-window path


def test_one_window_per_chunk_is_the_per_window_path_bitwise(motion_model):
    """chunk_frames <= context_frames reproduces, bit for bit, the sampler before chunks: a loop over windows, each a
    whole UNet call, blended at the output with the ramps and normalised per frame (written out here, CFG batched)."""
    cfg, model, cond = motion_model
    shape = (1, N, cfg.unet.latent_channels, *cfg.latent_size)
    s = SamplerSettings(steps=3, guidance_scale=3.0, seed=4, context_frames=4, context_overlap=2, chunk_frames=4,
                        batch_cfg=True)
    with torch.no_grad():
        got = denoise_latents(model, cond, shape, s)
        scheduler = make_scheduler("ddim", prediction_type=cfg.prediction_type)
        scheduler.set_timesteps(3)
        z = torch.randn(shape, generator=torch.Generator().manual_seed(4)) * scheduler.init_noise_sigma
        windows = context_windows(N, 4, 2)
        weights = [window_weights(w, N, 2).view(1, -1, 1, 1, 1) for w in windows]
        total = torch.zeros(1, N, 1, 1, 1)
        for w, wt in zip(windows, weights):
            total[:, w] += wt
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(z, t)
            eps = torch.zeros_like(z)
            for w, wt in zip(windows, weights):
                e_c, e_u = model.denoise(torch.cat([x[:, w], x[:, w]]), t, cond, frames=w).float().chunk(2)
                eps[:, w] += wt * (e_u + 3.0 * (e_c - e_u))
            z = scheduler.step(eps / total, t, z).prev_sample
    assert torch.equal(got, z)


def test_a_video_of_one_window_is_one_unet_call_whatever_the_chunk(motion_model):
    cfg, model, _ = motion_model
    with torch.no_grad():
        cond = model.encode_conditions(random_inputs(cfg, frames=4, seed=6), classifier_free=True)
    shape = (1, 4, cfg.unet.latent_channels, *cfg.latent_size)
    runs = [denoise_latents(model, cond, shape, SamplerSettings(steps=2, guidance_scale=3.0, seed=1, context_frames=4,
                                                                context_overlap=2, chunk_frames=c))
            for c in (0, 4, 64)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_chunked_sampling_is_deterministic_and_checks_its_setting(motion_model):
    cfg, model, cond = motion_model
    shape = (1, N, cfg.unet.latent_channels, *cfg.latent_size)
    s = SamplerSettings(steps=2, guidance_scale=3.0, seed=9, context_frames=4, context_overlap=2)  # default: one chunk
    with torch.no_grad():
        assert torch.equal(denoise_latents(model, cond, shape, s), denoise_latents(model, cond, shape, s))
    from m2h_core.inference.inputs import InputError

    with pytest.raises(InputError, match="chunk frames"):
        SamplerSettings(chunk_frames=-1).for_video(cfg, 20)
