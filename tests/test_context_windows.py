"""Context windows of the sampler (`m2h_core.inference.sampler`), checked against answers written out by hand.

Long videos are denoised in overlapping windows of `context_frames`; each window's prediction is weighted by
linear ramps over the overlap and the weighted predictions are normalised per frame. The tests state the right
answer independently of the code: window starts and blend weights as tables, the blended prediction of a stand-in
model with known per-window outputs, a hand-written blend of the real (frame-coupled) model's window predictions,
and — with the motion layers off, so frames are independent — equality with a single window over the whole video.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from m2h_core.config import tiny
from m2h_core.inference.sampler import SamplerSettings, context_windows, denoise_latents, window_weights
from tests.fixtures import build_m2h_model, random_inputs

# --------------------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize("n, length, overlap, starts", [
    (10, 4, 2, [0, 2, 4, 6]),  # stride 2, ends exactly at the last frame
    (11, 4, 2, [0, 2, 4, 6, 7]),  # one more window, aligned to end at frame 10 (overlaps are never shorter)
    (40, 8, 4, [0, 4, 8, 12, 16, 20, 24, 28, 32]),
    (16, 8, 0, [0, 8]),  # no overlap asked for: none given
    (17, 8, 0, [0, 8, 9]),
    (12, 8, 6, [0, 2, 4]),
    (9, 8, 4, [0, 1]),
    (8, 8, 4, [0]),  # fits in one window
    (5, 8, 4, [0]),
])
def test_window_starts_by_hand(n, length, overlap, starts):
    wins = context_windows(n, length, overlap)
    assert [int(w[0]) for w in wins] == starts
    for w in wins:
        assert w.tolist() == list(range(int(w[0]), int(w[0]) + min(length, n)))
    for a, b in zip(wins, wins[1:]):  # neighbours share at least `overlap` frames
        assert int(a[-1]) - int(b[0]) + 1 >= overlap


def test_window_arguments_are_checked():
    for length, overlap in ((8, 8), (8, -1), (0, 0)):
        with pytest.raises(ValueError, match="context_overlap"):
            context_windows(10, length, overlap)


def test_window_weights_by_hand():
    third = 1 / 3
    # 10 frames, windows of 4 with overlap 2 start at 0, 2, 4, 6; ramps of overlap + 1 = 3
    expected = {
        0: [1, 1, 2 * third, third],  # the video's first frames: full weight, ramp down into the overlap
        2: [third, 2 * third, 2 * third, third],  # inner window: ramps at both ends
        4: [third, 2 * third, 2 * third, third],
        6: [third, 2 * third, 1, 1],  # the video's last frames: full weight
    }
    for w in context_windows(10, 4, 2):
        torch.testing.assert_close(window_weights(w, 10, 2), torch.tensor(expected[int(w[0])]), rtol=0, atol=1e-6)
    # overlap 4 in windows of 8 (the defaults): ramps of 1/5 steps, the inner windows' ramps meet in the middle
    torch.testing.assert_close(window_weights(torch.arange(0, 8), 40, 4),
                               torch.tensor([1, 1, 1, 1, .8, .6, .4, .2]), rtol=0, atol=1e-6)
    torch.testing.assert_close(window_weights(torch.arange(4, 12), 40, 4),
                               torch.tensor([.2, .4, .6, .8, .8, .6, .4, .2]), rtol=0, atol=1e-6)
    torch.testing.assert_close(window_weights(torch.arange(32, 40), 40, 4),
                               torch.tensor([.2, .4, .6, .8, 1, 1, 1, 1]), rtol=0, atol=1e-6)
    # a window that is the whole video is never ramped
    assert window_weights(torch.arange(5), 5, 4).tolist() == [1.0] * 5


# --------------------------------------------------------------------------------------------------- blending


N = 10


@pytest.fixture(scope="module")
def motion_model():
    cfg = tiny()
    model = build_m2h_model(cfg, seed=3, perturb=True)  # every zero-init perturbed: all inputs reach the output
    with torch.no_grad():
        cond = model.encode_conditions(random_inputs(cfg, frames=N, seed=5), classifier_free=False)
    return cfg, model, cond


class StandIn(nn.Module):
    """A model with a known prediction per call: `fn(z, t, frames)`; the sampler only calls `denoise`."""

    def __init__(self, fn):
        super().__init__()
        self.cfg = SimpleNamespace(prediction_type="epsilon")
        self.anchor = nn.Parameter(torch.zeros(1))  # the sampler reads the device from the parameters
        self.fn = fn

    def denoise(self, z, t, cond, frames=None, **_):
        return self.fn(z, t, frames)


def test_blend_of_known_window_predictions(motion_model):
    """Window k predicts 0.1·z + k everywhere; frame i gets the hand-computed crossfade of the windows on it.
    (The stand-in ignores the conditioning; the real one of 10 frames tells the sampler there is no CFG batch.)"""
    cfg, _, no_cfg = motion_model
    shape = (1, N, cfg.unet.latent_channels, *cfg.latent_size)
    windows = [int(w[0]) for w in context_windows(10, 4, 2)]

    def per_window(z, t, frames):
        return 0.1 * z + float(windows.index(int(frames[0])))

    # windows 0..3 at starts 0, 2, 4, 6 with the weights of `test_window_weights_by_hand`:
    # frames 2,3 crossfade windows 0->1 with weights (2/3, 1/3), (1/3, 2/3); frames 4,5: 1->2; frames 6,7: 2->3
    blend = torch.tensor([0, 0, 1 / 3, 2 / 3, 4 / 3, 5 / 3, 7 / 3, 8 / 3, 3, 3]).view(1, 10, 1, 1, 1)

    def whole_video(z, t, frames):
        assert frames is None  # one window: the sampler's single-window path
        return 0.1 * z + blend

    for scheduler in ("ddim", "euler"):
        s = SamplerSettings(steps=3, guidance_scale=1.0, scheduler=scheduler, seed=4, context_frames=4,
                            context_overlap=2, chunk_frames=4)  # one window per call: the stand-in's unit
        got = denoise_latents(StandIn(per_window), no_cfg, shape, s)
        want = denoise_latents(StandIn(whole_video), no_cfg, shape, dataclasses.replace(s, context_frames=10))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the blend matters: an unweighted average in the overlaps lands elsewhere
        flat = torch.tensor([0, 0, .5, .5, 1.5, 1.5, 2.5, 2.5, 3, 3]).view(1, 10, 1, 1, 1)
        other = denoise_latents(StandIn(lambda z, t, f: 0.1 * z + flat), no_cfg, shape,
                                dataclasses.replace(s, context_frames=10))
        assert (got - other).abs().max() > 0.05


def test_windowed_sampling_blends_the_real_models_window_predictions(motion_model):
    """With motion layers every window's prediction depends on the window's other frames. The sampler's result
    equals a one-window run whose prediction is the hand-written blend of the model's own window predictions."""
    cfg, model, cond = motion_model
    shape = (1, N, cfg.unet.latent_channels, *cfg.latent_size)
    starts, length = [0, 2, 4, 6], 4
    third = 1 / 3
    weights = {0: [1, 1, 2 * third, third], 6: [third, 2 * third, 1, 1]}
    disagreement = []

    def hand_blend(z, t, frames):
        assert frames is None
        num, den = torch.zeros_like(z), torch.zeros(1, N, 1, 1, 1)
        per_frame: dict[int, list[torch.Tensor]] = {}
        for s in starts:
            idx = torch.arange(s, s + length)
            w = torch.tensor(weights.get(s, [third, 2 * third, 2 * third, third])).view(1, -1, 1, 1, 1)
            eps = model.denoise(z[:, idx], t, cond, frames=idx).float()
            num[:, idx] += w * eps
            den[:, idx] += w
            for j, i in enumerate(idx.tolist()):
                per_frame.setdefault(i, []).append(eps[:, j])
        disagreement.append(max((e[0] - e[1]).abs().max().item() for e in per_frame.values() if len(e) == 2))
        return num / den

    # one window per UNet call (chunk_frames <= context_frames): the per-window path; chunks of several windows
    # blend inside the motion modules instead (tests/test_chunked_windows.py)
    s = SamplerSettings(steps=2, guidance_scale=1.0, seed=2, context_frames=length, context_overlap=2,
                        chunk_frames=length)
    got = denoise_latents(model, cond, shape, s)
    probe = StandIn(hand_blend)
    want = denoise_latents(probe, cond, shape, dataclasses.replace(s, context_frames=N))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the windows really disagree where they overlap (the frames are coupled), far beyond the tolerance above
    assert min(disagreement) > 0.05, disagreement


def test_windows_equal_one_window_when_frames_are_independent():
    """Without motion layers every frame's prediction depends only on that frame's latents and conditions, so
    any windowing (with CFG) must reproduce the one-window result: frames and conditions stay aligned."""
    cfg = dataclasses.replace(tiny(), use_motion=False)
    model = build_m2h_model(cfg, seed=1, perturb=True)
    with torch.no_grad():
        cond = model.encode_conditions(random_inputs(cfg, frames=N, seed=2), classifier_free=True)
    shape = (1, N, cfg.unet.latent_channels, *cfg.latent_size)
    one = denoise_latents(model, cond, shape, SamplerSettings(steps=2, guidance_scale=2.0, seed=6, context_frames=N))
    for length, overlap, chunk in ((4, 2, 4), (3, 0, 3), (6, 1, 6), (4, 2, 6), (3, 1, 64)):  # per window, chunks
        got = denoise_latents(model, cond, shape, SamplerSettings(steps=2, guidance_scale=2.0, seed=6,
                                                                  context_frames=length, context_overlap=overlap,
                                                                  chunk_frames=chunk))
        torch.testing.assert_close(got, one, rtol=1e-4, atol=1e-4,
                                   msg=f"windows of {length}, overlap {overlap}, chunks of {chunk}")
    # the frames' conditions differ, so pairing a frame with another frame's conditions would show
    rolled = torch.roll(torch.arange(N), 1)
    with torch.no_grad():
        z = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        e = model.denoise(torch.cat([z, z]), torch.tensor(500), cond)
        e_rolled = model.denoise(torch.cat([z, z]), torch.tensor(500), cond, frames=rolled)
    assert (e - e_rolled).abs().max() > 1e-2
