"""The zero-shot denoiser vs diffusers' own pieces on the same tiny weights, and the masked latent blend."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNetMotionModel

from m2h_core.inference.inputs import IdentityInputs, VideoInputs
from m2h_core.inference.sampler import SamplerSettings, make_scheduler
from m2h_core.inference.zero_shot import (
    LatentBlend,
    ZeroShotEncoders,
    ZeroShotModel,
    ZeroShotPipeline,
    latent_mask,
    sample_zero_shot,
)
from m2h_core.models.faceid import build_image_projection
from tests.zero_shot_fixtures import ip_kv_from_file, tiny_public

FRAMES = 4


@pytest.fixture(scope="module")
def parts():
    return tiny_public(0)


def build_model(p, ip_kv=None, motion=True) -> ZeroShotModel:
    unet2d = copy.deepcopy(p.unet2d)
    ip_kv = ip_kv if ip_kv is not None else ip_kv_from_file(p.unet2d, p.ip_file["ip_adapter"])
    return ZeroShotModel.build(p.cfg, unet2d, p.motion if motion else None, p.controlnet,
                               build_image_projection(p.ip_file["image_proj"], "faceid"), ip_kv, p.text)


def reference_eps(p, sample, t, arcface, pose, scale_ip, pose_strength):
    """diffusers: UNetMotionModel + its own IP-Adapter loader (IPAdapterAttnProcessor2_0, FaceID projection) +
    ControlNetModel residuals, called as AnimateDiffControlNetPipeline calls them (one batch, no CFG)."""
    unet = UNetMotionModel.from_unet2d(copy.deepcopy(p.unet2d), p.motion)
    unet._load_ip_adapter_weights([p.ip_file], low_cpu_mem_usage=False)
    for proc in unet.attn_processors.values():
        if hasattr(proc, "scale"):
            proc.scale = [scale_ip]
    f = sample.shape[1]
    text = p.text[:1]
    down, mid = p.controlnet(sample.flatten(0, 1), t.expand(f), encoder_hidden_states=text.repeat_interleave(f, 0),
                             controlnet_cond=pose, conditioning_scale=pose_strength, return_dict=False)
    out = unet(sample.transpose(1, 2), t, encoder_hidden_states=text.repeat_interleave(f, 0),
               added_cond_kwargs={"image_embeds": [arcface[:, None]]}, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    return out.transpose(1, 2)


def _inputs(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = p.cfg.latent_size
    sample = torch.randn(1, FRAMES, 4, h, w, generator=g)
    pose = (torch.rand(FRAMES, 3, p.cfg.height, p.cfg.width, generator=g) * 255).round().to(torch.uint8)
    arcface = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    return sample, pose, arcface


@torch.no_grad()
def test_denoiser_equals_diffusers_ip_adapter_controlnet_motion(parts):
    """IP-Adapter attention (A with normalize=False), ControlNet residuals and motion modules == diffusers."""
    model = build_model(parts)
    sample, pose, arcface = _inputs(parts)
    t = torch.tensor([501])
    ids = model.identity_tokens(arcface)
    cond = model.encode_conditions(pose, ids, classifier_free=False, pose_strength=0.7, identity_strength=0.6)
    got = model.denoise(sample, t, cond)
    want = reference_eps(parts, sample, t, arcface, pose.float() / 255, 0.6, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the comparison is sensitive to each part: without the identity branch, the pose or the right weights it fails
    for kw in ({"identity_strength": 0.0}, {"pose_strength": 0.0}):
        other = model.encode_conditions(pose, ids, classifier_free=False, **{"pose_strength": 0.7,
                                                                             "identity_strength": 0.6, **kw})
        assert (model.denoise(sample, t, other) - want).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("fault", ["swap_kv", "shift_layer"])
def test_wrong_mapping_is_caught(parts, fault):
    """K/V swapped, or the file's layer indices shifted by one attn2: the equivalence no longer holds."""
    ip_kv = ip_kv_from_file(parts.unet2d, parts.ip_file["ip_adapter"])
    names = list(ip_kv)
    if fault == "swap_kv":
        ip_kv = {n: (v, k) for n, (k, v) in ip_kv.items()}
    else:  # the first two 320-wide layers exchanged (same shapes, wrong place)
        ip_kv[names[0]], ip_kv[names[1]] = ip_kv[names[1]], ip_kv[names[0]]
    model = build_model(parts, ip_kv)
    sample, pose, arcface = _inputs(parts)
    t = torch.tensor([501])
    cond = model.encode_conditions(pose, model.identity_tokens(arcface), classifier_free=False)
    want = reference_eps(parts, sample, t, arcface, pose.float() / 255, 1.0, 1.0)
    assert (model.denoise(sample, t, cond) - want).abs().max() > 1e-3


def test_layer_names_must_cover_the_unet(parts):
    ip_kv = ip_kv_from_file(parts.unet2d, parts.ip_file["ip_adapter"])
    ip_kv.pop(next(iter(ip_kv)))
    with pytest.raises(ValueError, match="do not fit this UNet"):
        build_model(parts, ip_kv)


@torch.no_grad()
def test_cfg_batched_equals_split_and_uses_negative_tokens(parts):
    """Classifier-free pair in one call == two calls (branches, shared first attention); the negative branch is
    the negative text + the projection of a zero embedding (IP-Adapter's), not zero tokens."""
    model = build_model(parts)
    sample, pose, arcface = _inputs(parts, 1)
    t = torch.tensor([301])
    ids = model.identity_tokens(arcface)
    cond = model.encode_conditions(pose, ids, classifier_free=True)
    both = model.denoise(torch.cat([sample, sample]), t, cond)
    c, u = cond.branches()
    shared: dict = {}
    torch.testing.assert_close(both[:1], model.denoise(sample, t, c, shared_first=shared), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1:], model.denoise(sample, t, u, shared_first=shared), rtol=1e-4, atol=1e-5)
    plain = model.encode_conditions(pose, (ids[1], ids[1]), classifier_free=False, text=model.text.flip(0))
    torch.testing.assert_close(both[1:], model.denoise(sample, t, plain), rtol=1e-4, atol=1e-5)


def _pipe_and_inputs(parts, n=6):
    model = build_model(parts)
    enc = ZeroShotEncoders(parts.vae, None, parts.cfg.vae.scaling_factor)
    g = torch.Generator().manual_seed(5)
    h, w = parts.cfg.height, parts.cfg.width
    frames = torch.rand(n, 3, h, w, generator=g)
    cloth = torch.zeros(n, h, w)
    cloth[:, h // 2:] = 1.0
    video = VideoInputs(frames, cloth, torch.rand(n, 3, h, w, generator=g))
    ident = IdentityInputs(torch.rand(3, h, w), torch.zeros(3, h, w), torch.nn.functional.normalize(
        torch.randn(512, generator=g), dim=0))
    mask = torch.zeros(n, h, w)
    mask[:, : h // 2, : w // 2] = 1.0
    return ZeroShotPipeline(model, enc), video, ident, mask


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_unmasked_latents_are_the_noised_source_at_every_step(parts, scheduler):
    """Before every UNet call the latents outside the regenerate mask equal the source latents noised to that
    step with the sampler's own initial noise; the final latents there equal the source's. Windows and chunks
    (6 frames, windows of 4) and CFG run as in real use."""
    pipe, video, ident, mask = _pipe_and_inputs(parts)
    settings = SamplerSettings(steps=3, guidance_scale=2.0, scheduler=scheduler, seed=7, context_frames=4,
                               context_overlap=2, chunk_frames=4)
    seen = []
    real = pipe.model.denoise

    def spy(z, t, cond, frames=None, **kw):
        seen.append((int(t), frames, z[:1].clone()))
        return real(z, t, cond, frames=frames, **kw)

    pipe.model.denoise = spy
    res = sample_zero_shot(pipe, video, ident, mask, settings, decode=False)
    source = pipe.encoders.encode(video.frames)
    keep = 1 - latent_mask(mask, parts.cfg.vae.downscale)  # (N, 1, h, w): 1 where the source is kept
    assert keep.sum() > 0 and (1 - keep).sum() > 0
    noise = torch.randn((1, *source.shape), generator=torch.Generator().manual_seed(7))[0]
    sched = make_scheduler(scheduler)
    sched.set_timesteps(3)
    checked = 0
    for t, frames, z in seen:
        i = [int(x) for x in sched.timesteps].index(t)
        idx = torch.arange(source.shape[0]) if frames is None else frames
        sched._step_index = None
        noised = sched.add_noise(source, noise, torch.tensor([t]))
        sched._step_index = None
        expected = sched.scale_model_input(noised, sched.timesteps[i])
        torch.testing.assert_close(z[0] * keep[idx], expected[idx] * keep[idx], rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked >= 3 * 2  # every step, every chunk
    torch.testing.assert_close(res.latents * keep, source * keep)
    assert (res.latents * (1 - keep) - source * (1 - keep)).abs().max() > 1e-2  # inside: regenerated


def test_differential_mask_grows_with_the_steps():
    soft = torch.linspace(0, 1, 11).view(1, 1, 1, 1, 11)
    blend = LatentBlend(torch.zeros(1, 1, 1, 1, 11), soft, torch.zeros(1, 1, 1, 1, 11), "differential")
    areas = [float(blend.step_mask(i, 4).sum()) for i in range(4)]
    assert areas == sorted(areas) and areas[0] < areas[-1]
    assert float(blend.step_mask(3, 4)[..., 0]) == 0.0  # never where the mask is 0
    assert float(blend.step_mask(0, 4)[..., -1]) == 1.0  # the core from the first step


def test_plusv2_reads_clip_of_the_face_crop(parts):
    """FaceID-PlusV2 through the sampler: the face crop's CLIP ViT hidden states change the person, not the rest."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from m2h_core.models.faceid import ImageProjection

    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                          num_attention_heads=2, image_size=32, patch_size=8,
                                                          projection_dim=32)).eval()
    proj = ImageProjection("faceid_plusv2", dim=32, tokens=4, resampler={
        "dim": 32, "depth": 2, "heads": 2, "head_dim": 16, "embedding_dim": 48, "output_dim": 32, "ff_inner": 64})
    for p in proj.parameters():
        torch.nn.init.normal_(p, std=0.3)
    pipe, video, ident, mask = _pipe_and_inputs(parts, n=4)
    pipe.model.image_proj = proj.eval()
    pipe.encoders.clip = clip
    settings = SamplerSettings(steps=2, guidance_scale=1.0, context_frames=4)
    a = sample_zero_shot(pipe, video, ident, mask, settings, decode=False).latents
    other = IdentityInputs(1 - ident.image, ident.landmarks, ident.arcface, face_box=(0.0, 0.0, 16.0, 16.0))
    b = sample_zero_shot(pipe, video, other, mask, settings, decode=False).latents
    keep = 1 - latent_mask(mask, parts.cfg.vae.downscale)
    torch.testing.assert_close(a * keep, b * keep)
    assert ((a - b) * (1 - keep)).abs().max() > 1e-3


@torch.no_grad()
def test_without_motion_module_equals_diffusers_2d_unet(parts):
    """No motion module (frame by frame): the 2-D UNet path == diffusers' UNet2DConditionModel + IP-Adapter +
    ControlNet residuals, frames as the batch."""
    model = build_model(parts, motion=False)
    sample, pose, arcface = _inputs(parts, 2)
    t = torch.tensor([701])
    cond = model.encode_conditions(pose, model.identity_tokens(arcface), classifier_free=False, pose_strength=0.5)
    got = model.denoise(sample, t, cond)
    unet = copy.deepcopy(parts.unet2d)
    unet._load_ip_adapter_weights([parts.ip_file], low_cpu_mem_usage=False)
    f = sample.shape[1]
    text = parts.text[:1].repeat_interleave(f, 0)
    x = sample.flatten(0, 1)
    down, mid = parts.controlnet(x, t.expand(f), encoder_hidden_states=text, controlnet_cond=pose.float() / 255,
                                 conditioning_scale=0.5, return_dict=False)
    want = unet(x, t.expand(f), encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [
        arcface.expand(f, -1)[:, None]]}, down_block_additional_residuals=down,
        mid_block_additional_residual=mid).sample
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_inpainting_unet_reads_mask_and_masked_latents(parts):
    """A 9-channel inpainting base: the UNet gets [z_t, mask, masked-image latents] (== diffusers' UNetMotionModel
    on that concatenation, ControlNet on z_t), and the sampler builds that input from the regenerate mask."""
    from diffusers import UNet2DConditionModel

    from m2h_core.base_weights import base_unet_config
    from tests.fixtures import randomize_

    kw = base_unet_config(parts.cfg)
    kw["in_channels"] = 9
    torch.manual_seed(3)
    unet9 = randomize_(UNet2DConditionModel(**kw), 4).eval()
    ip_kv = ip_kv_from_file(unet9, parts.ip_file["ip_adapter"])
    model = ZeroShotModel.build(parts.cfg, copy.deepcopy(unet9), parts.motion, parts.controlnet,
                                build_image_projection(parts.ip_file["image_proj"], "faceid"), ip_kv, parts.text)
    assert model.inpainting
    sample, pose, arcface = _inputs(parts, 4)
    known = torch.randn(FRAMES, 5, *sample.shape[-2:])
    cond = model.encode_conditions(pose, model.identity_tokens(arcface), classifier_free=False)
    cond.inpaint = known
    t = torch.tensor([401])
    got = model.denoise(sample, t, cond)
    ref = UNetMotionModel.from_unet2d(copy.deepcopy(unet9), parts.motion)
    ref._load_ip_adapter_weights([parts.ip_file], low_cpu_mem_usage=False)
    f = sample.shape[1]
    text = parts.text[:1].repeat_interleave(f, 0)
    down, mid = parts.controlnet(sample.flatten(0, 1), t.expand(f), encoder_hidden_states=text,
                                 controlnet_cond=pose.float() / 255, return_dict=False)
    want = ref(torch.cat([sample, known[None]], 2).transpose(1, 2), t, encoder_hidden_states=text,
               added_cond_kwargs={"image_embeds": [arcface[:, None]]}, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample.transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    pipe, video, ident, mask = _pipe_and_inputs(parts, n=4)
    pipe.model = model
    res = sample_zero_shot(pipe, video, ident, mask, SamplerSettings(steps=2, guidance_scale=2.0, context_frames=4),
                           decode=False)
    keep = 1 - latent_mask(mask, parts.cfg.vae.downscale)
    torch.testing.assert_close(res.latents * keep, pipe.encoders.encode(video.frames) * keep)
