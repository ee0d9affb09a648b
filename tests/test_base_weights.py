"""Base-weight loading from files in the real formats: SD-1.5 single files (LDM key names), CLIP vision
(transformers layout), AnimateDiff motion modules (original layout), and the errors for the wrong files."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import load_file, save_file

from m2h_core.base_weights import (
    BaseWeightsError,
    base_unet_config,
    identify_checkpoint,
    load_clip_vision,
    load_motion_adapter,
    load_sd15,
    read_state_dict,
)
from m2h_core.config import tiny
from m2h_core.models.m2h import M2HModel
from m2h_core.models.unet import build_unet
from tests.fixtures import (
    build_sd15_parts,
    random_inputs,
    save_state_dict,
    sd15_ldm_state_dict,
    unet_diffusers_to_ldm,
    write_clip_vision,
    write_motion_module,
    write_sd2_like_file,
    write_sd15_single_file,
    write_sdxl_like_file,
)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def cfg():
    return tiny()


# -- SD-1.5 single file ----------------------------------------------------------------------------------------


def test_fixture_uses_the_original_ldm_names(tmp_path, cfg):
    p = tmp_path / "sd.safetensors"
    write_sd15_single_file(p, cfg, seed=0)
    sd = load_file(str(p))
    for k in ("model.diffusion_model.input_blocks.0.0.weight",
              "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
              "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
              "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
              "model.diffusion_model.input_blocks.2.0.op.weight",
              "model.diffusion_model.middle_block.1.proj_in.weight",
              "model.diffusion_model.middle_block.2.out_layers.3.weight",
              "model.diffusion_model.output_blocks.1.1.conv.weight",  # upsampler of an attention-free up block
              "model.diffusion_model.output_blocks.2.0.skip_connection.weight",
              "model.diffusion_model.time_embed.0.weight",
              "model.diffusion_model.out.2.weight",
              "first_stage_model.encoder.down.0.block.0.norm1.weight",
              "first_stage_model.encoder.down.0.downsample.conv.weight",
              "first_stage_model.encoder.mid.attn_1.q.weight",
              "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
              "first_stage_model.decoder.up.2.upsample.conv.weight",
              "first_stage_model.decoder.norm_out.weight",
              "first_stage_model.quant_conv.weight",
              "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        assert k in sd, k
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as in the original VAE
    assert not any("down_blocks" in k or "resnets" in k for k in sd)
    assert identify_checkpoint(sd) == "sd15"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_load_sd15_reproduces_the_weights(tmp_path, cfg, suffix):
    p = tmp_path / f"v1-5-tiny{suffix}"
    unet, vae = write_sd15_single_file(p, cfg, seed=1)
    if suffix == ".ckpt":  # a real .ckpt wraps the tensors in {"state_dict": ...} next to non-tensor entries
        torch.save({"state_dict": torch.load(p, weights_only=True), "global_step": 470000, "epoch": 6}, p)
    u2, v2 = load_sd15(p, cfg)
    assert_same_state(unet, u2)
    assert_same_state(vae, v2)
    assert u2.config.in_channels == cfg.unet.latent_channels
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, cfg.height, cfg.width, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(v2.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean)


def test_inverse_mapping_agrees_with_diffusers_converter(cfg):
    """The fixture's LDM names go back through diffusers' converter to exactly the original keys and tensors."""
    unet, vae = build_sd15_parts(cfg, seed=2)
    ldm = sd15_ldm_state_dict(unet, vae)
    back_unet = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    back_vae = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    for own, back in ((unet.state_dict(), back_unet), (vae.state_dict(), back_vae)):
        assert set(own) == set(back)
        assert all(torch.equal(own[k], back[k]) for k in own)
    assert len({"model.diffusion_model." + k for k in unet_diffusers_to_ldm(unet.state_dict(), unet.config)}) == len(
        unet.state_dict())  # injective: no two diffusers keys share an LDM name


def test_loaded_sd15_drives_the_m2h_unet(tmp_path, cfg):
    p = tmp_path / "sd.safetensors"
    unet, _ = write_sd15_single_file(p, cfg, seed=3)
    u2, _ = load_sd15(p, cfg)
    model = M2HModel(cfg, unet=build_unet(cfg, u2))
    assert torch.equal(model.unet.conv_in.weight[:, :4], unet.conv_in.weight)
    with torch.no_grad():
        out = model(torch.randn(1, 2, 4, 16, 8), torch.tensor([10]), random_inputs(cfg, frames=2))
    assert out.shape == (1, 2, 4, 16, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("writer,family", [(write_sdxl_like_file, "SDXL"), (write_sd2_like_file, "SD2")])
def test_other_families_are_named(tmp_path, cfg, writer, family):
    p = tmp_path / f"{family.lower()}.safetensors"
    writer(p, cfg, seed=0)
    assert identify_checkpoint(load_file(str(p))) == family.lower()
    with pytest.raises(BaseWeightsError, match=f"{family.lower()}.safetensors is an {family} checkpoint; M2HVideo "
                                               "is built on Stable Diffusion 1.5"):
        load_sd15(p, cfg)
    with pytest.raises(BaseWeightsError, match=f"is an {family} checkpoint"):
        from m2h_core.config import sd15
        load_sd15(p, sd15())


def test_identify_checkpoint_families():
    z = torch.zeros(1)
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert identify_checkpoint({k: torch.zeros(320, 768)}) == "sd15"
    assert identify_checkpoint({k: torch.zeros(320, 1024)}) == "sd2"
    assert identify_checkpoint({"model.diffusion_model.out.2.weight": z,
                                "cond_stage_model.model.transformer.resblocks.0.ln_1.weight": z}) == "sd2"
    assert identify_checkpoint({"model.diffusion_model.label_emb.0.0.weight": z}) == "sdxl"
    assert identify_checkpoint({"model.diffusion_model.joint_blocks.0.x.weight": z}) == "sd3"
    assert identify_checkpoint({"double_blocks.0.img_attn.qkv.weight": z}) == "unknown"
    assert identify_checkpoint({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": z}) == "flux"
    assert identify_checkpoint({"vision_model.embeddings.patch_embedding.weight": z}) == "unknown"


def test_wrong_files_for_sd15(tmp_path, cfg):
    clip = tmp_path / "clip.safetensors"
    write_clip_vision(clip, cfg)
    with pytest.raises(BaseWeightsError, match="clip.safetensors is not a Stable Diffusion checkpoint"):
        load_sd15(clip, cfg)
    # an inpainting-style 9-channel UNet input
    p = tmp_path / "inpaint.safetensors"
    write_sd15_single_file(p, cfg, seed=0)
    sd = load_file(str(p))
    w = sd["model.diffusion_model.input_blocks.0.0.weight"]
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([w, w, w[:, :1]], dim=1)
    save_file(sd, str(p))
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([w, w], dim=1)
    save_file(sd, str(tmp_path / "instruct.safetensors"))
    with pytest.raises(BaseWeightsError, match="8-channel UNet input .an instruct model"):
        load_sd15(tmp_path / "instruct.safetensors", cfg)
    # a checkpoint of another size (the tiny file read with a larger UNet config)
    small = tiny()
    small.unet.block_out_channels = (8, 16)
    p2 = tmp_path / "small.safetensors"
    write_sd15_single_file(p2, small, seed=0)
    with pytest.raises(BaseWeightsError, match="small.safetensors is a model of another size .UNet width 8, the tiny "
                                                "preset has 16"):
        load_sd15(p2, cfg)
    # a file without its VAE
    p3 = tmp_path / "novae.safetensors"
    save_file({k: v for k, v in load_file(str(p2)).items() if not k.startswith("first_stage_model.")}, str(p3))
    with pytest.raises(BaseWeightsError, match="novae.safetensors: the (UNet|VAE) does not match"):
        load_sd15(p3, small)


def test_corrupt_and_pickled_files(tmp_path, cfg):
    p = tmp_path / "cut.safetensors"
    write_sd15_single_file(p, cfg, seed=0)
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(BaseWeightsError, match="cut.safetensors is not a readable .safetensors file"):
        load_sd15(p, cfg)
    bad = tmp_path / "code.ckpt"

    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({"x": Evil()}, bad)
    with pytest.raises(BaseWeightsError, match="could not be read as a weights-only checkpoint"):
        read_state_dict(bad)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.safetensors")


def test_diffusers_folder(tmp_path, cfg):
    unet, vae = build_sd15_parts(cfg, seed=4)
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    u2, v2 = load_sd15(tmp_path, cfg)
    assert_same_state(unet, u2)
    assert_same_state(vae, v2)


def test_identify_names_the_file_from_its_header(tmp_path, cfg):
    from m2h_core.public_weights import identify

    p = tmp_path / "sd.safetensors"
    write_sd15_single_file(p, cfg, seed=0)
    info = identify(p)
    assert (info.family, info.base, info.variant) == ("checkpoint", "sd15", "4ch")


# -- CLIP image encoder ---------------------------------------------------------------------------------------


def test_clip_vision_round_trip(tmp_path, cfg):
    p = tmp_path / "clip_vision.safetensors"
    model = write_clip_vision(p, cfg, seed=5)
    keys = load_file(str(p)).keys()
    assert "visual_projection.weight" in keys and all(k.startswith(("vision_model.", "visual_projection."))
                                                      for k in keys)
    loaded = load_clip_vision(p, cfg)
    assert_same_state(model, loaded)
    assert not any(q.requires_grad for q in loaded.parameters())
    x = torch.randn(2, 3, cfg.clip.image_size, cfg.clip.image_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).image_embeds, model(pixel_values=x).image_embeds)
    # a ComfyUI-style prefixed copy and a transformers folder load the same weights
    sd = load_file(str(p))
    save_file({"clip_vision." + k: v for k, v in sd.items()}, str(tmp_path / "prefixed.safetensors"))
    assert_same_state(model, load_clip_vision(tmp_path / "prefixed.safetensors", cfg))
    (tmp_path / "folder").mkdir()
    save_file(sd, str(tmp_path / "folder" / "model.safetensors"))
    assert_same_state(model, load_clip_vision(tmp_path / "folder", cfg))


def test_clip_vision_wrong_width(tmp_path, cfg):
    other = tiny()
    other.clip.hidden_size, other.clip.intermediate_size = 48, 96
    p = tmp_path / "clip_wide.safetensors"
    write_clip_vision(p, other)
    with pytest.raises(BaseWeightsError, match=r"clip_wide.safetensors is a CLIP image encoder of width 48 with a "
                                               r"32-d projection; this model needs width 32"):
        load_clip_vision(p, cfg)
    sd15_file = tmp_path / "sd.safetensors"
    write_sd15_single_file(sd15_file, cfg)
    with pytest.raises(BaseWeightsError, match="not a CLIP image encoder in the transformers layout"):
        load_clip_vision(sd15_file, cfg)


# -- AnimateDiff motion module --------------------------------------------------------------------------------


def test_motion_fixture_uses_the_original_layout(tmp_path, cfg):
    p = tmp_path / "mm.safetensors"
    adapter = write_motion_module(p, cfg, seed=6)
    sd = load_file(str(p))
    pre = "down_blocks.0.motion_modules.0.temporal_transformer."
    for k in ("transformer_blocks.0.attention_blocks.0.to_q.weight",
              "transformer_blocks.0.attention_blocks.1.to_out.0.bias",
              "transformer_blocks.0.attention_blocks.0.pos_encoder.pe",
              "transformer_blocks.0.attention_blocks.1.pos_encoder.pe",
              "transformer_blocks.0.norms.0.weight", "transformer_blocks.0.norms.1.bias",
              "transformer_blocks.0.ff_norm.weight", "transformer_blocks.0.ff.net.0.proj.weight",
              "norm.weight", "proj_in.weight", "proj_out.bias"):
        assert pre + k in sd, k
    assert sd[pre + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"].shape == (
        1, cfg.unet.motion_max_seq_length, cfg.unet.block_out_channels[0])
    assert not any(".attn1." in k or ".norm1." in k or "pos_embed" in k for k in sd)
    # diffusers' converter takes it back to the adapter's keys (all but the position tables it drops)
    back = convert_animatediff_checkpoint_to_diffusers(sd)
    own = adapter.state_dict()
    assert set(back) == {k for k in own if not k.endswith("pos_embed.pe")}
    assert all(torch.equal(back[k], own[k]) for k in back)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_load_motion_adapter_reproduces_it(tmp_path, cfg, suffix):
    p = tmp_path / f"mm_sd_v15_v2{suffix}"
    adapter = write_motion_module(p, cfg, seed=7)
    loaded = load_motion_adapter(p, cfg)
    assert_same_state(adapter, loaded)


def test_motion_adapter_with_mid_block_and_diffusers_layouts(tmp_path):
    cfg = tiny()
    cfg.unet.motion_mid_block = True
    p = tmp_path / "mm_mid.safetensors"
    adapter = write_motion_module(p, cfg, seed=8)
    assert any(k.startswith("mid_block.motion_modules.0.temporal_transformer") for k in load_file(str(p)))
    assert_same_state(adapter, load_motion_adapter(p, cfg))
    # the file decides the mid block (AnimateDiff v2 has one), not the config
    assert_same_state(adapter, load_motion_adapter(p, tiny()))
    # the diffusers MotionAdapter layout (single file and folder)
    save_state_dict(adapter.state_dict(), tmp_path / "diffusers_mm.safetensors")
    assert_same_state(adapter, load_motion_adapter(tmp_path / "diffusers_mm.safetensors", cfg))
    adapter.save_pretrained(tmp_path / "mm_folder")
    assert_same_state(adapter, load_motion_adapter(tmp_path / "mm_folder", cfg))


def test_motion_adapter_errors(tmp_path, cfg):
    sd15_file = tmp_path / "sd.safetensors"
    write_sd15_single_file(sd15_file, cfg)
    with pytest.raises(BaseWeightsError, match="sd.safetensors is not an AnimateDiff motion module"):
        load_motion_adapter(sd15_file, cfg)
    wide = tiny()
    wide.unet.block_out_channels = (32, 64)
    p = tmp_path / "mm_wide.safetensors"
    write_motion_module(p, wide)
    with pytest.raises(BaseWeightsError, match="mm_wide.safetensors: the motion module does not match"):
        load_motion_adapter(p, cfg)
    # a module missing its up blocks (e.g. a truncated conversion) is not silently half-loaded
    sd = {k: v for k, v in load_file(str(tmp_path / "mm_wide.safetensors")).items()}
    write_motion_module(p, cfg)
    sd = {k: v for k, v in load_file(str(p)).items() if not k.startswith("up_blocks")}
    save_file(sd, str(tmp_path / "mm_half.safetensors"))
    with pytest.raises(BaseWeightsError, match=r"motion module does not match.*missing"):
        load_motion_adapter(tmp_path / "mm_half.safetensors", cfg)


def test_motion_module_drives_the_m2h_unet(tmp_path, cfg):
    p = tmp_path / "mm.safetensors"
    adapter = write_motion_module(p, cfg, seed=9)
    unet2d, _ = build_sd15_parts(cfg, seed=9)
    model = M2HModel(cfg, unet=build_unet(cfg, unet2d, load_motion_adapter(p, cfg)))
    own = model.unet.state_dict()
    for k, v in adapter.state_dict().items():
        assert torch.equal(own[k], v), k
    assert isinstance(adapter, MotionAdapter)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4, 16, 8), torch.tensor([10]), random_inputs(cfg, frames=3))
    assert torch.isfinite(out).all()


def test_base_unet_config_is_latent_input(cfg):
    assert base_unet_config(cfg)["in_channels"] == cfg.unet.latent_channels


def test_preset_mismatch_names_both_presets_from_the_header_alone(tmp_path):
    """A base of the other preset is named as such from the file header, before any model is built."""
    from m2h_core.base_weights import check_base_files, file_shapes
    from m2h_core.config import sd15

    p = tmp_path / "tiny_base.safetensors"
    write_sd15_single_file(p, tiny(), seed=0)
    assert file_shapes(p, ("model.diffusion_model.input_blocks.0.0.weight",)) == {
        "model.diffusion_model.input_blocks.0.0.weight": (16, 4, 3, 3)}
    check_base_files(tiny(), p)  # the right preset passes
    with pytest.raises(BaseWeightsError, match=r"the checkpoint m2h.safetensors is SD-1.5, but the base "
                                               r"tiny_base.safetensors is the tiny preset .UNet width 16"):
        check_base_files(sd15(), p, checkpoint="m2h.safetensors")
