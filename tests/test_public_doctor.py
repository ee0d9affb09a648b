"""`m2h doctor` on the public files: real headers (the published key tables at real shapes, written as sparse
.safetensors files: the header is real, the data is holes) are found per folder, named, compared with the tables,
and what the zero-shot mode lacks is said with where to put it and where to get it."""

from __future__ import annotations

import pytest
import torch

from m2h_core.public_doctor import check_file, format_public_report, scan_public_files, zero_shot_needs
from m2h_core.public_layouts import (
    checkpoint_unet_table,
    clip_vision_table,
    controlnet_table,
    faceid_lora_table,
    ip_adapter_table,
    motion_table,
)
from tests.fixtures import write_header_only


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    m = tmp_path_factory.mktemp("models")
    f16 = torch.float16
    write_header_only(m / "checkpoints" / "v1-5-pruned-emaonly.safetensors", checkpoint_unet_table(4, dtype=f16))
    write_header_only(m / "checkpoints" / "sd-v1-5-inpainting.safetensors", checkpoint_unet_table(9, dtype=f16))
    write_header_only(m / "animatediff_models" / "v3_sd15_mm.safetensors", motion_table("v3", dtype=f16))
    write_header_only(m / "controlnet" / "control_v11p_sd15_openpose_fp16.safetensors",
                      controlnet_table("ldm", dtype=f16))
    write_header_only(m / "ipadapter" / "ip-adapter-faceid-plusv2_sd15.safetensors", ip_adapter_table("faceid_plusv2"))
    write_header_only(m / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                      clip_vision_table("ViT-H/14", f16))
    return m


def test_doctor_finds_names_and_checks_every_family(models, monkeypatch):
    monkeypatch.delenv("M2H_MODELS", raising=False)
    found = {f.path.name: f for f in scan_public_files([models])}
    expect = {"v1-5-pruned-emaonly.safetensors": ("checkpoint", "4ch"),
              "sd-v1-5-inpainting.safetensors": ("checkpoint", "9ch"),
              "v3_sd15_mm.safetensors": ("motion_module", "v3"),
              "control_v11p_sd15_openpose_fp16.safetensors": ("controlnet", "openpose"),
              "ip-adapter-faceid-plusv2_sd15.safetensors": ("ip_adapter", "faceid_plusv2"),
              "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": ("clip_vision", "ViT-H/14")}
    assert {n: (f.family, f.variant) for n, f in found.items()} == expect
    for f in found.values():
        assert "matches the published layout" in f.note, f.note
    assert "inpainting (9-channel UNet)" in found["sd-v1-5-inpainting.safetensors"].note
    assert zero_shot_needs(list(found.values())) == []
    text = format_public_report(list(found.values()))
    assert "zero-shot mode: all files found" in text and "models/ipadapter/: 1 file(s)" in text


def test_doctor_says_what_is_missing_or_wrong(models, tmp_path, monkeypatch):
    monkeypatch.delenv("M2H_MODELS", raising=False)
    # a FaceID file without its LoRA, a ViT-L instead of ViT-H, no motion module, a shifted layer index
    table = ip_adapter_table("faceid_plusv2", with_lora=False)
    write_header_only(tmp_path / "ipadapter" / "ip-adapter-faceid-plusv2_sd15.safetensors", table)
    write_header_only(tmp_path / "clip_vision" / "clip_vision_vit_l14.safetensors", clip_vision_table("ViT-L/14"))
    found = scan_public_files([tmp_path])
    needs = zero_shot_needs(found)
    assert any(n.startswith("an SD-1.5 checkpoint: put one in models/checkpoints") for n in needs)
    assert any("v3_sd15_mm.ckpt or mm_sd_v15_v2.ckpt in models/animatediff_models" in n for n in needs)
    assert any(n.startswith("ControlNet OpenPose: put control_v11p_sd15_openpose_fp16.safetensors in "
                            "models/controlnet") for n in needs)
    assert any("needs its LoRA: put ip-adapter-faceid-plusv2_sd15_lora.safetensors in models/loras" in n
               for n in needs)
    shifted = {k.replace("ip_adapter.31.", "ip_adapter.30."): v for k, v in table.items()}
    p = tmp_path / "shifted" / "ip-adapter-faceid-plusv2_sd15.safetensors"
    write_header_only(p, shifted)
    assert "differs from the published layout: 2 missing" in check_file(p, "ipadapter").note
    # with the LoRA in models/loras the pairing is complete but the ViT-L is named as the wrong encoder
    write_header_only(tmp_path / "loras" / "ip-adapter-faceid-plusv2_sd15_lora.safetensors", faceid_lora_table())
    needs = zero_shot_needs(scan_public_files([tmp_path]))
    assert any("clip_vision_vit_l14.safetensors is a CLIP ViT-L/14 image encoder" in n and "ViT-H/14" in n
               for n in needs), needs
    # a file in the wrong folder is named with its home
    write_header_only(tmp_path / "loras" / "v3_sd15_mm.safetensors", motion_table("v3", dtype=torch.float16))
    moved = {f.path.name: f for f in scan_public_files([tmp_path]) if f.folder == "loras"}
    assert "it belongs in models/animatediff_models" in moved["v3_sd15_mm.safetensors"].note


def test_cli_doctor_check(models, capsys):
    from m2h_core.cli import main

    assert main(["doctor", "--check", str(models / "animatediff_models" / "v3_sd15_mm.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "AnimateDiff v3 motion module (no mid block); matches the published layout" in out
