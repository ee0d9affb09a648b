"""The public SD-1.5 files (issue 28): real key tables at real shapes on the meta device through the loaders,
their summed sizes against the published file sizes, and tiny files in the real key grammar loaded and compared
with diffusers' own loaders (IP-Adapter attention weights, kohya / IP-Adapter LoRA through PEFT, ControlNet
single-file conversion), plus the one-line refusals of wrong or unpaired files."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel, UNetMotionModel
from safetensors.torch import load_file, save_file

from m2h_core.base_weights import (
    BaseWeightsError,
    clip_from_state_dict,
    load_clip_vision,
    load_motion_adapter,
    load_sd15,
    motion_adapter_from_state_dict,
    unet_from_ldm,
)
from m2h_core.config import sd15, tiny
from m2h_core.public_layouts import (
    PUBLISHED,
    IPSizes,
    checkpoint_unet_table,
    clip_vision_table,
    compare,
    controlnet_table,
    faceid_lora_table,
    file_bytes,
    ip_adapter_table,
    motion_table,
    nbytes,
    nest,
    safetensors_bytes,
    table_for,
    unet_to_ldm,
)
from m2h_core.public_weights import (
    PublicWeightsError,
    attention_layers,
    check_public_files,
    controlnet_config,
    controlnet_from_state_dict,
    identify,
    ip_adapter_from_state_dict,
    load_controlnet,
    load_ip_adapter,
    merge_lora,
    read_header,
)

# -- helpers ---------------------------------------------------------------------------------------------------


def materialize(table: dict[str, torch.Tensor], seed: int = 0, dtype: torch.dtype | None = None
                ) -> dict[str, torch.Tensor]:
    """Random real tensors of a table's shapes (every tensor different, so a swapped key changes values)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.1).to(dtype or v.dtype) for k, v in table.items()}


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    kw = tiny().unet.unet_kwargs()
    kw["in_channels"] = 4
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**kw)
    return unet.eval()


TINY_IP = IPSizes(id_dim=16, clip_hidden=48, clip_proj=24, depth=1, heads=2, dim_head=8, rank=4)


@pytest.fixture(scope="module")
def sd15_unet():
    kw = sd15().unet.unet_kwargs()
    kw["in_channels"] = 4
    with torch.device("meta"):
        return UNet2DConditionModel(**kw)


# -- (a) real tables through the loaders, on the meta device --------------------------------------------------------


def test_sd15_attention_order_is_ip_adapters():
    """IP-Adapter numbers SD-1.5's 32 attention layers down, up, mid; attn2 at odd indices; widths by index."""
    layers = attention_layers()
    assert len(layers) == 32
    attn2 = {i: (n, h) for i, (n, h, w) in enumerate(layers) if n.endswith("attn2")}
    assert sorted(attn2) == list(range(1, 32, 2))
    assert attn2[31][0] == "mid_block.attentions.0.transformer_blocks.0.attn2"
    assert attn2[13][0] == "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    widths = {320: [1, 3, 25, 27, 29], 640: [5, 7, 19, 21, 23], 1280: [9, 11, 13, 15, 17, 31]}
    assert {w: sorted(i for i, (_, h) in attn2.items() if h == w) for w in widths} == widths


@pytest.mark.parametrize("channels", [4, 9])
def test_sd15_checkpoint_table_loads(channels):
    table = checkpoint_unet_table(channels)
    assert table["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, channels, 3, 3)
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in table  # upsampler of the attention-free block
    unet = unet_from_ldm(table, sd15(), "table")
    assert unet.conv_in.in_channels == channels and unet.conv_in.weight.is_meta
    assert sum(v.numel() for v in table.values()) == {4: 859_520_964, 9: 859_535_364}[channels]


@pytest.mark.parametrize("version", ["v2", "v3", "v1"])
def test_motion_tables_load_and_are_told_apart(version):
    table = motion_table(version)
    pre = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0."
    assert table[pre + "pos_encoder.pe"].shape == (1, 24 if version == "v1" else 32, 320)
    assert table[pre + "to_q.weight"].shape == (320, 320)
    assert any(k.startswith("mid_block.motion_modules.0.") for k in table) == (version == "v2")
    assert any(k.startswith("up_blocks.3.motion_modules.2.") for k in table)
    adapter = motion_adapter_from_state_dict(table, sd15(), version)
    assert adapter.config.use_motion_mid_block == (version == "v2")
    assert identify("mm.ckpt", table).variant == version
    # v3 / v1 read as v2 (a mid block) cannot load: the mid-block weights are missing
    from diffusers import MotionAdapter

    from m2h_core.base_weights import _load_strict, motion_state_dict

    if version != "v2":
        kw = sd15().unet.motion_kwargs()
        kw["use_motion_mid_block"] = True
        with torch.device("meta"):
            wrong = MotionAdapter(**kw)
        with pytest.raises(BaseWeightsError, match="the motion module does not match.*missing"):
            _load_strict(wrong, motion_state_dict(table, version), version, "motion module",
                         optional=("pos_embed.pe",))


@pytest.mark.parametrize("layout", ["ldm", "ldm_bare", "diffusers"])
def test_controlnet_tables_load(layout):
    table = controlnet_table(layout)
    if layout == "ldm":
        for k, shape in (("input_hint_block.0.weight", (16, 3, 3, 3)), ("input_hint_block.4.weight", (32, 16, 3, 3)),
                         ("input_hint_block.12.weight", (256, 96, 3, 3)), ("input_hint_block.14.weight",
                                                                           (320, 256, 3, 3)),
                         ("zero_convs.11.0.weight", (1280, 1280, 1, 1)), ("middle_block_out.0.weight",
                                                                          (1280, 1280, 1, 1))):
            assert table["control_model." + k].shape == shape, k
    model = controlnet_from_state_dict(table, None, layout)
    assert model.config.conditioning_embedding_out_channels == (16, 32, 96, 256)
    info = identify("control_v11p_sd15_openpose.pth", table)
    assert (info.family, info.variant, info.base) == ("controlnet", "openpose", "sd15")


def test_clip_vit_h_table_loads_with_its_own_config():
    table = clip_vision_table("ViT-H/14")
    model = clip_from_state_dict(table, None, "vit-h")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.patch_size, c.image_size, c.projection_dim, c.intermediate_size) == \
        (1280, 32, 14, 224, 1024, 5120)
    assert identify("model.safetensors", table).variant == "ViT-H/14"
    # the M2H model's clothing branch needs ViT-L: a ViT-H is named as such
    with pytest.raises(BaseWeightsError, match=r"vit-h is a CLIP image encoder of width 1280 \(ViT-H/14\) with a "
                                               r"1024-d projection; this model needs width 1024"):
        clip_from_state_dict(table, sd15(), "vit-h")


@pytest.mark.parametrize("variant", ["faceid", "faceid_plusv2", "plus_face", "plus", "base"])
@pytest.mark.parametrize("form", ["bin", "safetensors"])
def test_ip_adapter_tables_map_onto_sd15(variant, form, sd15_unet):
    table = ip_adapter_table(variant)
    name = {"faceid": "ip-adapter-faceid_sd15", "faceid_plusv2": "ip-adapter-faceid-plusv2_sd15",
            "plus_face": "ip-adapter-plus-face_sd15", "plus": "ip-adapter-plus_sd15", "base": "ip-adapter_sd15"
            }[variant] + "." + form
    if form == "bin":  # the nested dict, flattened as read_header / read_tensors do
        nested = nest(table)
        assert set(nested) == {"image_proj", "ip_adapter"}
        table = {f"{top}.{k}": v for top, d in nested.items() for k, v in d.items()}
    w = ip_adapter_from_state_dict(table, name)
    assert w.variant == variant
    assert set(w.ip_kv) == {n for n, _, _ in attention_layers() if n.endswith("attn2")}
    k, v = w.ip_kv["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert k.shape == v.shape == (1280, 768)
    assert (w.lora is not None) == variant.startswith("faceid")
    if w.lora is not None:
        assert merge_lora(sd15_unet, w.lora, 1.0) == 128  # 32 layers x q, k, v, out, on the meta UNet
    # diffusers' own image-projection converter accepts the image_proj keys at these shapes
    proj = sd15_unet._convert_ip_adapter_image_proj_to_diffusers(w.image_proj, low_cpu_mem_usage=True)
    assert sum(p.numel() for p in proj.parameters()) == sum(t.numel() for t in w.image_proj.values())


def test_faceid_lora_table_merges_onto_sd15(sd15_unet):
    table = faceid_lora_table()
    assert table["lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"].shape == \
        (128, 768)
    assert table["lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight"].shape == \
        (640, 128)
    assert merge_lora(sd15_unet, table, 0.6) == 128
    assert identify("ip-adapter-faceid-plusv2_sd15_lora.safetensors", table).variant == "faceid"


# -- (b) summed sizes against the published file sizes ----------------------------------------------------------


@pytest.mark.parametrize("pub", PUBLISHED, ids=lambda p: p.file)
def test_tables_add_up_to_the_published_sizes(pub):
    table = table_for(pub.family, pub.variant, pub.dtype)
    size = file_bytes(table, pub.file)
    slack = 0 if pub.file.endswith(".safetensors") else 2048 * len(table)  # pickle / zip entries
    assert pub.bytes - pub.tolerance - slack <= size <= pub.bytes + pub.tolerance, (size, pub.size)


def test_sizes_tell_the_variants_apart():
    """The size check would catch the mistakes it is there for: v3 read as v2, a missing perceiver, alpha keys."""
    v2, v3 = (nbytes(motion_table(v, dtype=torch.float32)) for v in ("v2", "v3"))
    assert abs(v2 - round(1.56 * 2**30)) > 0.05 * 2**30 and abs(v3 - round(1.7 * 2**30)) > 0.05 * 2**30
    assert nbytes(ip_adapter_table("faceid")) < 157e6 - 50e6
    assert safetensors_bytes(faceid_lora_table(alpha=True)) != 51_059_544  # the real file has no .alpha keys


# -- (c) tiny files in the real grammar against diffusers --------------------------------------------------------


def _write(sd: dict, path, nested: bool = False):
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(nest(sd) if nested else sd, str(path))
    return path


@pytest.mark.parametrize("variant,fname", [("faceid_plusv2", "ip-adapter-faceid-plusv2_sd15.bin"),
                                           ("plus_face", "ip-adapter-plus-face_sd15.safetensors")])
def test_tiny_ip_adapter_equals_diffusers_loading(tmp_path, variant, fname):
    unet = tiny_unet()
    sd = materialize(ip_adapter_table(variant, unet, torch.float32, TINY_IP), seed=1)
    p = _write(sd, tmp_path / fname, nested=True)
    if fname.endswith(".bin"):
        assert set(torch.load(str(p), weights_only=True)) == {"image_proj", "ip_adapter"}
    w = load_ip_adapter(p, unet)
    assert w.variant == variant and identify(p).variant == variant
    # diffusers' own IP-Adapter attention loading (the processor index -> module mapping and the K/V weights)
    procs = {n.removesuffix(".processor"): proc for n, proc in
             unet._convert_ip_adapter_attn_to_diffusers([nest(sd)], low_cpu_mem_usage=False).items()
             if hasattr(proc, "to_k_ip")}
    assert set(procs) == set(w.ip_kv)
    for name, (k, v) in w.ip_kv.items():
        assert torch.equal(k, procs[name].to_k_ip[0].weight), name
        assert torch.equal(v, procs[name].to_v_ip[0].weight), name
    # the same mapping on the motion UNet (motion modules are not numbered), as diffusers does
    from diffusers import MotionAdapter

    motion = UNetMotionModel.from_unet2d(copy.deepcopy(unet), MotionAdapter(**tiny().unet.motion_kwargs()))
    wm = load_ip_adapter(p, motion)
    assert all(torch.equal(wm.ip_kv[n][0], w.ip_kv[n][0]) for n in w.ip_kv)
    for n, proc in motion._convert_ip_adapter_attn_to_diffusers([nest(sd)], low_cpu_mem_usage=False).items():
        if hasattr(proc, "to_k_ip"):
            assert torch.equal(proc.to_v_ip[0].weight, wm.ip_kv[n.removesuffix(".processor")][1]), n


def test_ip_adapter_mapping_mistakes_are_refused():
    unet = tiny_unet()
    sd = materialize(ip_adapter_table("faceid", unet, torch.float32, TINY_IP))
    shifted = {re.sub(r"ip_adapter\.(\d+)\.to_([kv])_ip", lambda m: f"ip_adapter.{int(m[1]) - 1}.to_{m[2]}_ip", k):
               v for k, v in sd.items()}
    with pytest.raises(PublicWeightsError, match="do not fit this UNet's 8 attention layers"):
        ip_adapter_from_state_dict(shifted, "shifted.bin", unet)
    sdxl = {**sd, "ip_adapter.1.to_k_ip.weight": torch.zeros(16, 2048)}
    with pytest.raises(PublicWeightsError, match=r"for SDXL \(K/V input 2048, this UNet's is 32\): use its _sd15"):
        ip_adapter_from_state_dict(sdxl, "ip-adapter-faceid_sdxl.bin", unet)
    missing = {k: v for k, v in sd.items() if k != "ip_adapter.7.to_v_ip.weight"}
    with pytest.raises(PublicWeightsError, match=r"lacks ip_adapter.7.to_v_ip.weight \(mid_block"):
        ip_adapter_from_state_dict(missing, "cut.bin", unet)


def _unet_out(unet, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 8, generator=g)
    ctx = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


def test_kohya_lora_merge_equals_peft(tmp_path):
    """merge_lora of a kohya file (alpha/rank scaling) == diffusers' kohya conversion + PEFT at the same scale."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    unet = tiny_unet()
    lora = materialize(faceid_lora_table(unet, torch.float32, rank=4, alpha=True), seed=2)
    lora.update({k: torch.tensor(2.0) for k in lora if k.endswith(".alpha")})
    p = _write(lora, tmp_path / "ip-adapter-faceid-plusv2_sd15_lora.safetensors")
    merged = copy.deepcopy(unet)
    assert merge_lora(merged, p, 0.7) == 4 * len(attention_layers(unet))
    ref = copy.deepcopy(unet)
    sd, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(lora))
    ref.load_lora_adapter(sd, network_alphas=alphas, prefix="unet", adapter_name="faceid")
    ref.set_adapters(["faceid"], [0.7])
    torch.testing.assert_close(_unet_out(merged), _unet_out(ref), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_unet_out(merged), _unet_out(unet), atol=1e-4)
    bad = {k.replace("transformer_blocks_0", "transformer_blocks_1"): v for k, v in lora.items()}
    with pytest.raises(PublicWeightsError, match="name no layer of this UNet"):
        merge_lora(copy.deepcopy(unet), bad, 1.0)


def test_ip_adapter_bin_lora_merge_equals_peft():
    """The LoRA inside a FaceID .bin ("0.to_q_lora.down.weight") lands on the layers diffusers' IP-Adapter LoRA
    loader picks on a 2-D UNet, with PEFT's scale 1; on the motion UNet the numbering skips the motion modules."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    unet = tiny_unet()
    sd = materialize(ip_adapter_table("faceid", unet, torch.float32, TINY_IP), seed=4)
    w = ip_adapter_from_state_dict(sd, "ip-adapter-faceid_sd15.bin", unet)
    merged = copy.deepcopy(unet)
    assert merge_lora(merged, w.lora, 1.0) == 4 * len(attention_layers(unet))
    ref = copy.deepcopy(unet)
    lora_sd = ref._load_ip_adapter_loras([nest(sd)])[0]
    conv, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(lora_sd)
    ref.load_lora_adapter(conv, network_alphas=alphas, prefix="unet", adapter_name="faceid_0")
    torch.testing.assert_close(_unet_out(merged), _unet_out(ref), rtol=1e-4, atol=1e-5)
    from diffusers import MotionAdapter

    motion = UNetMotionModel.from_unet2d(copy.deepcopy(unet), MotionAdapter(**tiny().unet.motion_kwargs()))
    before = {k: v.clone() for k, v in motion.state_dict().items() if "motion_modules" in k}
    merge_lora(motion, w.lora, 1.0)
    for name in ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                 "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"):
        assert torch.equal(motion.get_submodule(name).weight, merged.get_submodule(name).weight), name
    assert all(torch.equal(v, motion.state_dict()[k]) for k, v in before.items())


def test_faceid_lora_numbering_skips_motion_modules_unlike_diffusers(sd15_unet):
    """On SD-1.5 + AnimateDiff, diffusers' `_load_ip_adapter_loras` counts the motion modules' processors too, so
    20 of the 32 FaceID LoRA layers land on motion modules; merge_lora numbers the spatial layers only."""
    from diffusers import MotionAdapter

    with torch.device("meta"):
        motion = UNetMotionModel.from_unet2d(sd15_unet, MotionAdapter(**sd15().unet.motion_kwargs()))
    sd = nest(ip_adapter_table("faceid"))
    theirs = {k.split(".processor")[0].removeprefix("unet.") for k in motion._load_ip_adapter_loras([sd])[0]}
    assert sum("motion_modules" in n for n in theirs) == 20
    from m2h_core.public_weights import lora_pairs

    lora = {k: v for k, v in sd["ip_adapter"].items() if "_lora." in k}
    ours = {t.rsplit(".to_", 1)[0] for t, *_ in lora_pairs(lora, motion)}
    assert ours == {n for n, _, _ in attention_layers()} and not any("motion_modules" in n for n in ours)


@pytest.mark.parametrize("layout,suffix", [("ldm", ".pth"), ("ldm_bare", ".safetensors"),
                                           ("diffusers", ".safetensors")])
def test_tiny_controlnet_equals_diffusers_single_file(tmp_path, layout, suffix):
    cfg = tiny()
    config = controlnet_config(cfg, (8, 16, 32))
    with torch.random.fork_rng():
        torch.manual_seed(5)
        cn = ControlNetModel(**config)
    sd = materialize(cn.state_dict(), seed=5)
    cn.load_state_dict(sd)
    files = {"ldm": {"control_model." + k: v for k, v in unet_to_ldm(sd, config).items()},
             "ldm_bare": unet_to_ldm(sd, config), "diffusers": sd}
    p = _write(files[layout], tmp_path / f"control_v11p_sd15_openpose{suffix}")
    loaded = load_controlnet(p, cfg=cfg)
    own = loaded.state_dict()
    assert own.keys() == sd.keys() and all(torch.equal(own[k], sd[k]) for k in sd)
    if layout == "ldm":  # diffusers' own single-file path (config from a local folder, offline) agrees
        cn.save_config(tmp_path / "cfg")
        ref = ControlNetModel.from_single_file(str(p), config=str(tmp_path / "cfg"), local_files_only=True)
        assert all(torch.equal(ref.state_dict()[k], own[k]) for k in own)
        assert "control_model.input_hint_block.14.weight" in files[layout]  # conv_out, as diffusers numbers it


def test_motion_v3_end_to_end_through_the_model_builder(tmp_path):
    """A v3 file (no mid block) builds the M2H model even where the config said v2, and the saved config says
    what was built, so the checkpoint loads back."""
    from m2h_core.checkpoint import load_checkpoint, save_checkpoint
    from m2h_core.models.m2h import M2HModel
    from m2h_core.models.unet import build_unet

    cfg = tiny()
    cfg.unet.motion_mid_block = True  # as the sd15 preset (v2)
    v3 = materialize(motion_table("v3", cfg, torch.float32), seed=6)
    assert not any(k.startswith("mid_block") for k in v3)
    p = _write(v3, tmp_path / "v3_sd15_mm.ckpt")
    assert identify(p).variant == "v3"
    adapter = load_motion_adapter(p, cfg)
    assert not adapter.config.use_motion_mid_block
    model = M2HModel(cfg, unet=build_unet(cfg, None, adapter))
    assert cfg.unet.motion_mid_block is False and model.cfg.unet.motion_mid_block is False
    own = model.unet.state_dict()
    key = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(own[key], v3["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
                                      "attention_blocks.0.to_q.weight"])
    save_checkpoint(model, tmp_path / "m2h.safetensors")
    back = load_checkpoint(tmp_path / "m2h.safetensors")
    assert back.cfg.unet.motion_mid_block is False
    # a v2 file gives a mid block even where the config had none
    v2 = materialize(motion_table("v2", tiny(), torch.float32), seed=7)
    p2 = _write(v2, tmp_path / "mm_sd_v15_v2.safetensors")
    cfg2 = tiny()
    build_unet(cfg2, None, load_motion_adapter(p2, cfg2))
    assert cfg2.unet.motion_mid_block is True and identify(p2).variant == "v2"


def test_inpainting_base_loads_with_nine_channels(tmp_path):
    from tests.fixtures import write_sd15_single_file

    cfg = tiny()
    p = tmp_path / "sd-v1-5-inpainting.safetensors"
    write_sd15_single_file(p, cfg, seed=0)
    sd = load_file(str(p))
    k = "model.diffusion_model.input_blocks.0.0.weight"
    sd[k] = torch.randn(sd[k].shape[0], 9, 3, 3)
    save_file(sd, str(p))
    info = identify(p)
    assert (info.family, info.variant, info.base) == ("checkpoint", "9ch", "sd15")
    unet, _vae = load_sd15(p, cfg)
    assert unet.config.in_channels == 9 and torch.equal(unet.conv_in.weight, sd[k])
    check_public_files(base=p)  # accepted and reported, not refused


def test_clip_encoder_config_comes_from_the_file(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=1,
                              image_size=32, patch_size=8, projection_dim=24, hidden_act="quick_gelu")
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = CLIPVisionModelWithProjection(config).eval()
    p = _write(model.state_dict(), tmp_path / "clip.safetensors")
    loaded = load_clip_vision(p)  # no M2H config: the file's own architecture
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).image_embeds, model(pixel_values=x).image_embeds)
    with pytest.raises(BaseWeightsError, match="clip.safetensors is a CLIP image encoder of width 64"):
        load_clip_vision(p, tiny())


# -- one-line refusals before any model is built ------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("public")
    unet = tiny_unet()
    out = {}
    faceid = materialize(ip_adapter_table("faceid_plusv2", unet, torch.float16, TINY_IP))
    out["plusv2"] = _write(faceid, d / "ip-adapter-faceid-plusv2_sd15.bin", nested=True)
    out["plusv2_nolora"] = _write({k: v for k, v in faceid.items() if "_lora." not in k},
                                  d / "ip-adapter-faceid-plusv2_sd15.safetensors")
    out["lora"] = _write(materialize(faceid_lora_table(unet, rank=4)), d / "ip-adapter-faceid-plusv2_sd15_lora"
                                                                           ".safetensors")
    out["lora_v1"] = _write(materialize(faceid_lora_table(unet, rank=4)), d / "ip-adapter-faceid_sd15_lora.safetensors")
    out["plus_face"] = _write(materialize(ip_adapter_table("plus_face", unet, torch.float16, TINY_IP)),
                              d / "ip-adapter-plus-face_sd15.safetensors")
    for name, width in (("vit_h", 48), ("vit_l", 40)):
        clip = {"vision_model.embeddings.patch_embedding.weight": torch.zeros(width, 3, 8, 8),
                "visual_projection.weight": torch.zeros(24, width)}
        out[name] = _write(clip, d / f"clip_{name}.safetensors")
    sdxl_cn = {"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
               "control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
               "control_model.label_emb.0.0.weight": torch.zeros(4, 4)}
    out["sdxl_cn"] = _write(sdxl_cn, d / "controlnet-openpose-sdxl-1.0.safetensors")
    out["mm_v3"] = _write(materialize(motion_table("v3", tiny(), torch.float16)), d / "v3_sd15_mm.safetensors")
    return out


def test_partners_and_wrong_files_are_refused_in_one_line(files):
    found = check_public_files(ip_adapter=files["plusv2"], clip_vision=files["vit_h"], motion=files["mm_v3"])
    assert found["ip_adapter"].variant == "faceid_plusv2" and found["motion"].variant == "v3"
    cases = [
        ({"ip_adapter": files["plusv2_nolora"], "clip_vision": files["vit_h"]},
         ("ip-adapter-faceid-plusv2_sd15.safetensors needs its LoRA: put ip-adapter-faceid-plusv2_sd15_lora"
         ".safetensors in models/loras .huggingface.co/h94/IP-Adapter-FaceID.$")),
        ({"ip_adapter": files["plusv2_nolora"], "ip_lora": files["lora_v1"], "clip_vision": files["vit_h"]},
         "ip-adapter-faceid_sd15_lora.safetensors is the LoRA of another FaceID variant"),
        ({"ip_adapter": files["plus_face"], "clip_vision": files["vit_l"]},
         ("clip_vit_l.safetensors is a CLIP width 40 image encoder .* but ip-adapter-plus-face_sd15.safetensors reads "
         "CLIP width 48 features .hidden width 48.: put CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in "
         "models/clip_vision")),
        ({"ip_adapter": files["plus_face"]}, "needs the CLIP ViT-H/14 image encoder: put CLIP-ViT-H-14"),
        ({"controlnet": files["sdxl_cn"]}, ("controlnet-openpose-sdxl-1.0.safetensors is an SDXL ControlNet .*: give "
                                            "control_v11p_sd15_openpose_fp16.safetensors")),
        ({"motion": files["plusv2"]}, "is IP-Adapter FaceID-PlusV2 .*not an SD-1.5 AnimateDiff motion module"),
        ({"ip_adapter": files["mm_v3"]}, ("v3_sd15_mm.safetensors is AnimateDiff v3 motion module .no mid block., "
                                          "not an IP-Adapter")),
        ({"base": files["lora"]}, "is a kohya LoRA .* not an SD-1.5 checkpoint"),
    ]
    for kw, msg in cases:
        with pytest.raises(PublicWeightsError, match=msg) as e:
            check_public_files(**kw)
        assert "\n" not in str(e.value)
    with pytest.raises(PublicWeightsError, match=r"missing.bin not found .*: put it in models/ipadapter"):
        check_public_files(ip_adapter=files["plusv2"].parent / "missing.bin")


def test_bin_files_are_read_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    p = tmp_path / "ip-adapter-faceid_sd15.bin"
    torch.save({"image_proj": {"norm.weight": torch.zeros(2)}, "ip_adapter": {"x": Evil()}}, p)
    with pytest.raises(PublicWeightsError, match="pickled objects besides tensors"):
        read_header(p)
    with pytest.raises(PublicWeightsError, match="pickled objects besides tensors"):
        load_ip_adapter(p)


def test_doctor_compare_reports_a_shifted_layer():
    table = ip_adapter_table("faceid")
    assert compare(table, table).ok
    shifted = dict(table)
    shifted["ip_adapter.1.to_k_ip.weight"] = torch.empty(640, 768, device="meta")
    c = compare(shifted, table)
    assert not c.ok and "another shape" in c.words()


def test_vit_h_given_to_the_m2h_model_is_named_from_the_header(tmp_path):
    """The M2H model's preflight (header only) names a ViT-H where its clothing branch needs ViT-L/14."""
    from m2h_core.base_weights import check_base_files
    from tests.fixtures import write_header_only

    p = tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    write_header_only(p, clip_vision_table("ViT-H/14", torch.float16))
    with pytest.raises(BaseWeightsError, match=r"is CLIP ViT-H/14 \(CLIP image encoder width 1280, SD-1.5 has "
                                               r"1024\): give the CLIP image encoder it was trained with"):
        check_base_files(sd15(), clip_vision=p)


def test_public_tables_build_the_sd15_m2h_model_on_meta():
    """The real tables go through the M2H model builder at the paper's size (meta device): v3 sets the config's
    mid block off, and every FaceID to_k_ip / to_v_ip has the exact shape of adapter A's to_k_id / to_v_id."""
    from m2h_core.models.m2h import M2HModel
    from m2h_core.models.unet import build_unet

    cfg = sd15()
    with torch.device("meta"):
        unet2d = unet_from_ldm(checkpoint_unet_table(4), cfg, "v1-5")
        motion = motion_adapter_from_state_dict(motion_table("v3"), cfg, "v3_sd15_mm.ckpt")
        model = M2HModel(cfg, unet=build_unet(cfg, unet2d, motion))
    assert cfg.unet.motion_mid_block is False and not any(k.startswith("mid_block.motion_modules")
                                                          for k in model.unet.state_dict())
    ip = ip_adapter_from_state_dict(ip_adapter_table("faceid_plusv2"), "ip-adapter-faceid-plusv2_sd15.bin",
                                    model.unet)
    procs = model.unet.attn_processors
    assert len(ip.ip_kv) == 16
    for name, (k, v) in ip.ip_kv.items():
        proc = procs[name + ".processor"]
        assert proc.to_k_id.weight.shape == k.shape and proc.to_v_id.weight.shape == v.shape, name
