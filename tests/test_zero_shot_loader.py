"""Loading the zero-shot pipeline from tiny public files in their real formats, and one sample through it."""

from __future__ import annotations

import copy

import pytest
import torch

from m2h_core.inference.inputs import IdentityInputs, VideoInputs
from m2h_core.inference.sampler import SamplerSettings
from m2h_core.inference.zero_shot import ZeroShotModel, sample_zero_shot
from m2h_core.inference.zero_shot_loader import PublicFiles, empty_prompt_tokens, load_zero_shot
from m2h_core.models.faceid import build_image_projection
from tests.zero_shot_fixtures import ip_kv_from_file, write_tiny_public_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_public_files(tmp_path_factory.mktemp("public"))


def _files(f, **kw) -> PublicFiles:
    return PublicFiles(base=f.base, ip_adapter=f.ip_adapter, motion=f.motion, controlnet=f.controlnet, **kw)


def test_empty_prompt_tokens_are_the_text_encoders(files):
    ids = torch.tensor([[98] + [99] * 76])
    with torch.no_grad():
        want = files.text_encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(empty_prompt_tokens(files.base), want)


@torch.no_grad()
def test_loaded_pipeline_equals_the_parts_and_merges_the_lora(files):
    p = files.parts
    pipe = load_zero_shot(_files(files, lora_strength=0.0))
    ref = ZeroShotModel.build(pipe.cfg, copy.deepcopy(p.unet2d), p.motion, p.controlnet,
                              build_image_projection(p.ip_file["image_proj"], "faceid"),
                              ip_kv_from_file(p.unet2d, p.ip_file["ip_adapter"]), pipe.model.text)
    assert pipe.cfg.unet.motion_mid_block is False  # the file has no mid block (v3-like): read from it
    g = torch.Generator().manual_seed(3)
    h, w = pipe.cfg.latent_size
    z = torch.randn(1, 4, 4, h, w, generator=g)
    pose = torch.randint(0, 255, (4, 3, pipe.cfg.height, pipe.cfg.width), generator=g, dtype=torch.uint8)
    arc = torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0)
    outs = []
    for m in (pipe.model, ref):
        cond = m.encode_conditions(pose, m.identity_tokens(arc), classifier_free=False)
        outs.append(m.denoise(z, torch.tensor(400), cond))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    merged = load_zero_shot(_files(files, lora_strength=0.5))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    ip = torch.load(files.ip_adapter, weights_only=True)["ip_adapter"]
    i = list(p.unet2d.attn_processors).index(name + ".processor")
    delta = ip[f"{i}.to_k_lora.up.weight"] @ ip[f"{i}.to_k_lora.down.weight"]
    w0 = p.unet2d.get_submodule(name).to_k.weight
    torch.testing.assert_close(merged.model.unet.get_submodule(name).to_k.weight, w0 + 0.5 * delta)


def test_sample_from_files(files):
    pipe = load_zero_shot(_files(files))
    h, w = pipe.cfg.height, pipe.cfg.width
    n = 5
    g = torch.Generator().manual_seed(0)
    cloth = torch.zeros(n, h, w)
    cloth[:, h // 2:] = 1
    video = VideoInputs(torch.rand(n, 3, h, w, generator=g), cloth, torch.rand(n, 3, h, w, generator=g))
    ident = IdentityInputs(torch.rand(3, h, w), torch.zeros(3, h, w), torch.nn.functional.normalize(
        torch.randn(512, generator=g), dim=0))
    res = sample_zero_shot(pipe, video, ident, 1 - cloth, SamplerSettings(steps=2, guidance_scale=3.0,
                                                                          context_frames=4, context_overlap=1))
    assert res.frames.shape == (n, 3, h, w) and torch.isfinite(res.frames).all()


def test_missing_file_is_named(files, tmp_path):
    with pytest.raises(ValueError, match="nothing.bin not found"):
        load_zero_shot(PublicFiles(base=files.base, ip_adapter=str(tmp_path / "nothing.bin")))


def test_motion_v2_keeps_its_mid_block_v3_has_none(files, tmp_path):
    """A v2 file (mid block) builds mid-block motion modules, a v3 file (none) does not: v3 is not read as v2."""
    from dataclasses import replace

    from tests.fixtures import build_motion_adapter, motion_diffusers_to_original, save_state_dict

    cfg = files.parts.cfg
    v2 = build_motion_adapter(replace(cfg, unet=replace(cfg.unet, motion_mid_block=True)), seed=5)
    path = save_state_dict(motion_diffusers_to_original(v2.state_dict()), tmp_path / "tiny_mm_v2.safetensors")
    for motion, mid in ((str(path), True), (files.motion, False)):
        pipe = load_zero_shot(PublicFiles(base=files.base, ip_adapter=files.ip_adapter, motion=motion))
        names = [n for n, _ in pipe.model.unet.named_modules() if n.startswith("mid_block.motion_modules")]
        assert pipe.cfg.unet.motion_mid_block is mid and bool(names) is mid
        if mid:  # the file's mid-block weights, not a fresh module
            w = pipe.model.unet.mid_block.motion_modules[0].proj_in.weight
            torch.testing.assert_close(w, v2.mid_block.motion_modules[0].proj_in.weight)


def test_real_sized_headers_are_checked_before_any_model(tmp_path):
    """SD-1.5-sized files (headers only, real shapes): the preset is read from the base's header and the public
    files' pairing is checked first: a FaceID file without its LoRA, or FaceID-PlusV2 without CLIP ViT-H, is named."""
    from m2h_core.inference.zero_shot_loader import preset_of
    from m2h_core.public_layouts import checkpoint_unet_table, controlnet_table, ip_adapter_table, motion_table
    from m2h_core.public_weights import PublicWeightsError
    from tests.fixtures import write_header_only

    base = write_header_only(tmp_path / "v1-5.safetensors", checkpoint_unet_table(dtype=torch.float16))
    motion = write_header_only(tmp_path / "v3_sd15_mm.safetensors", motion_table("v3", dtype=torch.float16))
    control = write_header_only(tmp_path / "control_v11p_sd15_openpose_fp16.safetensors",
                                controlnet_table(dtype=torch.float16))
    faceid = write_header_only(tmp_path / "ip-adapter-faceid_sd15.safetensors",
                               ip_adapter_table("faceid", with_lora=False))
    plusv2 = write_header_only(tmp_path / "ip-adapter-faceid-plusv2_sd15.safetensors",
                               ip_adapter_table("faceid_plusv2"))
    assert preset_of(base).name == "sd15"
    common = {"base": str(base), "motion": str(motion), "controlnet": str(control)}
    with pytest.raises(PublicWeightsError, match="ip-adapter-faceid_sd15_lora.safetensors"):
        PublicFiles(ip_adapter=str(faceid), **common).check()
    with pytest.raises(PublicWeightsError, match="CLIP ViT-H"):
        PublicFiles(ip_adapter=str(plusv2), **common).check()


def test_real_sizes_map_onto_the_sd15_unet_on_meta():
    """FaceID-PlusV2 at its real shapes (meta tensors): its image projection loads strictly into faceid.py's module
    and its 16 to_k_ip / to_v_ip pairs onto the 16 spatial attn2 layers of SD-1.5's motion UNet (v2, mid block)."""
    from diffusers import MotionAdapter, UNet2DConditionModel

    from m2h_core.base_weights import base_unet_config
    from m2h_core.config import sd15
    from m2h_core.inference.zero_shot import zero_shot_config
    from m2h_core.public_layouts import ip_adapter_table
    from m2h_core.public_weights import ip_adapter_from_state_dict

    cfg = zero_shot_config(sd15(), motion_mid_block=True)
    ip = ip_adapter_from_state_dict(ip_adapter_table("faceid_plusv2"), "ip-adapter-faceid-plusv2_sd15.bin")
    assert ip.variant == "faceid_plusv2" and len(ip.ip_kv) == 16
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(**base_unet_config(cfg))
        motion = MotionAdapter(**cfg.unet.motion_kwargs())
        proj = build_image_projection(ip.image_proj, ip.variant)
        model = ZeroShotModel.build(cfg, unet2d, motion, None, proj, ip.ip_kv, torch.empty(1, 77, 768))
    assert proj.tokens == 4 and proj.perceiver_resampler.layers[0][0].heads == 12
    mid = model.unet.mid_block.attentions[0].transformer_blocks[0].attn2.processor
    assert tuple(mid.to_k_id.weight.shape) == (1280, 768)
