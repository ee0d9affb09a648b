"""Warm start from public weights (`--init public`, m2h_core/training/public_init.py), each mapping on tiny files
written in the public files' real key layout: IP-Adapter FaceID -> A's identity K/V and H's ArcFace path (checked
against diffusers' own FaceID projection), ControlNet OpenPose's hint encoder -> E_pose (checked against diffusers'
ControlNetConditioningEmbedding), an inpainting UNet's 9 input channels -> the M2H UNet's 8."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

from m2h_core.config import tiny
from m2h_core.models.m2h import M2HModel
from m2h_core.models.pose_encoder import PoseEncoder
from m2h_core.public_weights import attention_layers
from m2h_core.training.config import TrainConfig
from m2h_core.training.public_init import (
    CONTROLNET_HINT_CHANNELS,
    apply_public_init,
    controlnet_hint_convs,
    init_pose_encoder_from_controlnet,
    narrow_inpainting_conv_in,
)
from tests.fixtures import (
    build_sd15_parts,
    save_state_dict,
    sd15_ldm_state_dict,
    synthetic_trainer,
    write_clip_vision,
)


def _faceid_file(path, model: M2HModel, seed: int = 0):
    """A tiny ip-adapter-faceid .bin in the real grammar ({"image_proj": {proj.0, proj.2, norm}, "ip_adapter":
    {"<i>.to_k_ip.weight", ...}}, i = the attn1/attn2 index), sized for `model`; returns diffusers' FaceID
    projection holding the same weights and the K/V by layer name."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    ref = IPAdapterFaceIDImageProjection(image_embed_dim=512, cross_attention_dim=cfg.head.dim, mult=1,
                                         num_tokens=cfg.head.arcface_tokens)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    sd = ref.state_dict()
    image_proj = {"proj.0.weight": sd["ff.net.0.proj.weight"], "proj.0.bias": sd["ff.net.0.proj.bias"],
                  "proj.2.weight": sd["ff.net.2.weight"], "proj.2.bias": sd["ff.net.2.bias"],
                  "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"]}
    ip, kv = {}, {}
    for i, (name, hidden, width) in enumerate(attention_layers(model.unet)):
        if name.endswith("attn2"):
            k, v = torch.randn(hidden, width, generator=g), torch.randn(hidden, width, generator=g)
            ip[f"{i}.to_k_ip.weight"], ip[f"{i}.to_v_ip.weight"] = k, v
            kv[name] = (k, v)
    torch.save({"image_proj": image_proj, "ip_adapter": ip}, path)
    return ref.eval(), kv


def test_faceid_warm_starts_a_and_h(tmp_path):
    torch.manual_seed(0)
    model = M2HModel(tiny())
    ref, kv = _faceid_file(tmp_path / "ip-adapter-faceid_sd15.bin", model)
    lines = apply_public_init(model, ip_adapter=tmp_path / "ip-adapter-faceid_sd15.bin")
    assert len(lines) == 2 and "faceid to_k_ip / to_v_ip" in str(lines[0]) and "R²=" in str(lines[1])
    assert float(str(lines[1]).split("R²=")[1].split(";")[0]) > 0.99
    for name, (k, v) in kv.items():  # A's identity K/V are the file's, layer by layer
        proc = model.unet.get_submodule(name).processor
        assert torch.equal(proc.to_k_id.weight, k) and torch.equal(proc.to_v_id.weight, v)
    # H passes FaceID's ArcFace tokens through to A: its last arcface_tokens outputs ~ diffusers' FaceID tokens
    g = torch.Generator().manual_seed(1)
    arc = F.normalize(torch.randn(3, 512, generator=g), dim=1)
    c, (lh, lw) = model.cfg.unet.latent_channels, model.cfg.latent_size
    with torch.no_grad():
        f_pi = model.head_encoder(torch.randn(3, c, lh, lw, generator=g), arc,
                                  torch.randn(3, 2, model.cfg.head.pose_channels[-1], lh, lw, generator=g))
        want = ref(arc)
    got = f_pi[:, 0, -model.cfg.head.arcface_tokens:]
    assert want.shape == got.shape
    # exactly FaceID's LayerNorm of the fitted projection (H adds nothing at step 0) ...
    h = model.head_encoder
    fitted = h.arc_in(arc).reshape(3, model.cfg.head.arcface_tokens, -1)
    torch.testing.assert_close(got, ref.norm(F.layer_norm(fitted, fitted.shape[-1:])), atol=1e-5, rtol=1e-5)
    # ... which is FaceID's tokens up to the linear fit of its GELU MLP
    assert float((got - want).norm() / want.norm()) < 0.05
    torch.testing.assert_close(f_pi[:, 0, -2:], f_pi[:, 1, -2:])  # every frame: the pose acts from step 1 on


def _hint_block_ldm(seed: int = 0, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """ControlNet 1.1's hint encoder in LDM names (input_hint_block.{0,2,...,14}, 16-32-96-256 -> 320), plus a key
    of the rest of the ControlNet, as in control_v11p_sd15_openpose.pth."""
    g = torch.Generator().manual_seed(seed)
    widths = [3, 16, 16, 32, 32, 96, 96, 256, 320]
    sd = {}
    for j, (a, b) in enumerate(itertools.pairwise(widths)):
        sd[f"{prefix}input_hint_block.{2 * j}.weight"] = 0.1 * torch.randn(b, a, 3, 3, generator=g)
        sd[f"{prefix}input_hint_block.{2 * j}.bias"] = 0.1 * torch.randn(b, generator=g)
    sd[f"{prefix}input_blocks.0.0.weight"] = torch.randn(320, 4, 3, 3, generator=g)
    return sd


def test_controlnet_hint_encoder_warm_starts_e_pose(tmp_path):
    """E_pose at ControlNet 1.1's widths reproduces diffusers' ControlNetConditioningEmbedding (before its last
    conv, applied to both) on [-1, 1] poses, away from the padded border (3 cells at 1/8 resolution)."""
    sd = _hint_block_ldm()
    save_state_dict(sd, tmp_path / "control_v11p_sd15_openpose.safetensors")
    from m2h_core.public_weights import read_tensors

    convs = controlnet_hint_convs(read_tensors(tmp_path / "control_v11p_sd15_openpose.safetensors"))
    assert [tuple(w.shape[:2]) for w, _ in convs][::2] == [(16, 3), (32, 16), (96, 32), (256, 96)]
    ours = PoseEncoder(CONTROLNET_HINT_CHANNELS, 8)
    assert init_pose_encoder_from_controlnet(ours, convs) == 7
    theirs = ControlNetConditioningEmbedding(320, 3, CONTROLNET_HINT_CHANNELS)
    names = ["conv_in"] + [f"blocks.{i}" for i in range(6)] + ["conv_out"]
    theirs.load_state_dict({f"{n}.{t}": sd[f"control_model.input_hint_block.{2 * j}.{t}"]
                            for j, n in enumerate(names) for t in ("weight", "bias")})
    pose01 = torch.rand(2, 3, 128, 96, generator=torch.Generator().manual_seed(2))  # ControlNet's [0, 1]
    with torch.no_grad():
        want = theirs(pose01)
        got = theirs.conv_out(ours.stack(pose01 * 2 - 1))
    torch.testing.assert_close(got[..., 3:-3, 3:-3], want[..., 3:-3, 3:-3], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, want, atol=1e-3)  # the padded border differs (zero = grey in [-1, 1])
    # diffusers layout too, and a model whose widths differ is skipped with the reason
    diff = {f"controlnet_cond_embedding.{n}.{t}": v for n, t, v in
            ((n, t, sd[f"control_model.input_hint_block.{2 * j}.{t}"]) for j, n in enumerate(names)
             for t in ("weight", "bias"))}
    assert all(torch.equal(a[0], b[0]) for a, b in zip(controlnet_hint_convs(diff), convs))
    model = M2HModel(tiny())
    line = apply_public_init(model, controlnet=tmp_path / "control_v11p_sd15_openpose.safetensors")[0]
    assert "skipped" in str(line) and "pose_channels" in str(line)


def test_inpainting_unet_gives_the_eight_input_channels(tmp_path):
    """A 9-channel inpainting UNet: [z_t, mask, masked-image latents] -> the M2H UNet's [z_t, clothing latents];
    loaded through train.py's path (build_components) from a single file in the LDM layout."""
    cfg = tiny()
    unet, vae = build_sd15_parts(cfg, seed=3)
    old = unet.conv_in
    wide = torch.nn.Conv2d(9, old.out_channels, 3, padding=1)
    with torch.no_grad():
        wide.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
        wide.bias.copy_(old.bias)
    unet.conv_in = wide
    unet.register_to_config(in_channels=9)
    base = tmp_path / "sd-v1-5-inpainting.safetensors"
    save_state_dict(sd15_ldm_state_dict(unet, vae), base)
    write_clip_vision(tmp_path / "clip.safetensors", cfg)
    x = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(5))
    f = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = wide(torch.cat([x, torch.zeros(2, 1, 16, 8), f], dim=1))
    from m2h_core.training.components import build_components
    from m2h_core.training.public_init import init_from_config

    tc = TrainConfig.from_dict({"preset": "tiny", "base": str(base), "clip_vision": str(tmp_path / "clip.safetensors"),
                                "synthetic_clips": 1, "mirror": False, "init": "public"})
    model, _, _ = build_components(tc, tc.model_config())
    with torch.no_grad():
        got = model.unet.conv_in(torch.cat([x, f], dim=1))
    torch.testing.assert_close(got, want)
    lines = [str(line) for line in init_from_config(model, tc)]
    assert lines == [("UNet conv_in (8 channels) <- sd-v1-5-inpainting.safetensors (inpainting conv_in: z_t and "
                     "masked-image channels, mask channel dropped)")]
    assert not narrow_inpainting_conv_in(model.unet, 4)  # already 8 wide: nothing to do
    tc.init = "base"  # the inpainting input is narrowed (and reported) without --init public too
    assert [str(line) for line in init_from_config(model, tc)] == lines


def test_init_public_config_and_trainer_report(tmp_path):
    import pytest

    from m2h_core.training.preflight import init_sources

    with pytest.raises(ValueError, match="init: public needs"):
        TrainConfig.from_dict({"random_init": True, "synthetic_clips": 1, "init": "public"})
    with pytest.raises(ValueError, match="only with init: public"):
        TrainConfig.from_dict({"random_init": True, "synthetic_clips": 1, "ip_adapter": "x.bin"})
    torch.manual_seed(0)
    _faceid_file(tmp_path / "ip-adapter-faceid_sd15.bin", M2HModel(tiny()))
    tc = TrainConfig.from_dict({"preset": "tiny", "random_init": True, "synthetic_clips": 1, "synthetic_frames": 8,
                                "num_frames": 4, "batch_size": 1, "init": "public", "mirror": False,
                                "ip_adapter": str(tmp_path / "ip-adapter-faceid_sd15.bin"),
                                "output_dir": str(tmp_path / "run")})
    tr = synthetic_trainer(tc)
    assert len(tr.init_report) == 2 and tr.init_report[0].startswith("A to_k_id / to_v_id")
    assert init_sources(tc) == "A, H (init public) <- ip-adapter-faceid_sd15.bin"


def test_mappings_fit_the_real_sd15_shapes():
    """The real-key tables at the paper's size: FaceID's K/V onto A's 16 layers and ControlNet 1.1's hint encoder
    onto E_pose at its widths (meta device, no memory); FaceID's projection onto H at SD-1.5 widths (real values)."""
    from m2h_core.config import sd15
    from m2h_core.models.head_encoder import HeadEncoder
    from m2h_core.public_layouts import controlnet_table, ip_adapter_table
    from m2h_core.public_weights import ip_adapter_from_state_dict
    from m2h_core.training.public_init import init_adapter_from_ip, init_head_from_faceid

    cfg = sd15()
    cfg.head.pose_channels = CONTROLNET_HINT_CHANNELS
    with torch.device("meta"):
        model = M2HModel(cfg)
    ip = ip_adapter_from_state_dict(ip_adapter_table("faceid", model.unet), "ip-adapter-faceid_sd15.bin", model.unet)
    assert init_adapter_from_ip(model.unet, ip) == 16
    for layout in ("ldm", "diffusers"):
        convs = controlnet_hint_convs(controlnet_table(layout))
        assert init_pose_encoder_from_controlnet(model.pose_encoder, convs) == 7
    g = torch.Generator().manual_seed(0)
    proj = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in ip.image_proj.items()}
    head = HeadEncoder(cfg.head, cfg.unet.latent_channels, cfg.head.pose_channels[-1], cfg.unet.cross_attention_dim)
    assert init_head_from_faceid(head, proj) > 0.9
    assert torch.equal(head.proj_out.weight, torch.eye(768)) and not head.layers[0].to_out.weight.any()
