"""The zero-shot nodes' logic (nodes/zero_shot.py) without ComfyUI: names -> files, inputs fitted, CONDITIONING ->
prompt tokens, and the node's path from file names to images on tiny files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2h_core.frames import to_nhwc
from m2h_core.inference.inputs import IdentityInputs
from m2h_core.inference.sampler import SamplerSettings
from m2h_core.inference.zero_shot import sample_zero_shot
from m2h_core.inference.zero_shot_loader import load_zero_shot
from nodes import logic, zero_shot
from tests.zero_shot_fixtures import write_tiny_public_files


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return write_tiny_public_files(tmp_path_factory.mktemp("models"))


def _resolver(root: Path):
    folders = {"base": "checkpoints", "ipadapter": "ipadapter", "animatediff_models": "animatediff_models",
               "controlnet": "controlnet", "loras": "loras", "clip_vision": "clip_vision"}
    return lambda kind, name: str(root / folders[kind] / name)


def test_public_files_from_names(pub):
    root = Path(pub.base).parents[1]
    f = zero_shot.public_files(_resolver(root), "tiny_sd15.safetensors", "none", "tiny_openpose.safetensors",
                               "ip-adapter-faceid_tiny.bin", "auto", "none", 0.6)
    assert f.motion is None and f.ip_lora is None and f.clip_vision is None and f.lora_strength == 0.6
    assert f.controlnet.endswith("tiny_openpose.safetensors")
    off = zero_shot.public_files(_resolver(root), "tiny_sd15.safetensors", "none", "none",
                                 "ip-adapter-faceid_tiny.bin", "none", "none", 0.6)
    assert off.lora_strength == 0.0 and off.controlnet is None


def test_prompt_tokens_from_conditioning():
    default = torch.randn(2, 77, 8)
    assert zero_shot.prompt_tokens(None, None, default, 8) is None
    pos = [[torch.randn(1, 154, 8), {"pooled_output": None}]]
    out = zero_shot.prompt_tokens(pos, None, default, 8)
    assert out.shape == (2, 154, 8)
    torch.testing.assert_close(out[0], pos[0][0][0])
    torch.testing.assert_close(out[1, :77], default[1])
    torch.testing.assert_close(out[1, 77:], default[1, -1:].expand(77, -1))  # padded with its last (EOS) token
    with pytest.raises(ValueError, match="768"):
        zero_shot.prompt_tokens([[torch.randn(1, 77, 768), {}]], None, default, 8)
    with pytest.raises(ValueError, match="CONDITIONING"):
        zero_shot.prompt_tokens("a photo", None, default, 8)


def test_node_path_from_names_to_images(pub):
    """What M2H Public Weights Loader + M2H Zero-Shot Sampler run, minus ComfyUI's memory manager."""
    root = Path(pub.base).parents[1]
    files = zero_shot.public_files(_resolver(root), "tiny_sd15.safetensors", "tiny_mm_v3.safetensors",
                                   "tiny_openpose.safetensors", "ip-adapter-faceid_tiny.bin", "auto", "none", 0.6)
    pipe = load_zero_shot(files)
    n, H, W = 5, 96, 48  # IMAGE batches at another size: fitted to the model's 64x32
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(n, H, W, 3, generator=g)
    cloth = torch.zeros(n, H, W)
    cloth[:, H // 2:] = 1
    regen = torch.zeros(1, H, W)
    regen[:, : H // 2] = 1
    video, mask = zero_shot.prepare_inputs(frames, regen, cloth, torch.rand(n, H, W, 3, generator=g),
                                           pipe.cfg.height, pipe.cfg.width)
    assert mask.shape == (1, 64, 32) and video.frames.shape == (n, 3, 64, 32)
    head = IdentityInputs(torch.rand(3, 64, 32), torch.zeros(3, 64, 32),
                          torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0))
    text = zero_shot.prompt_tokens([[torch.randn(1, 77, 32), {}]], None, pipe.model.text, 32)
    settings = SamplerSettings(steps=2, guidance_scale=2.0, context_frames=4, context_overlap=2)
    res = sample_zero_shot(pipe, video, head, mask, settings, "differential", text=text)
    images = logic.composite_frames(to_nhwc(res.frames), video, None)
    assert images.shape == (n, 64, 32, 3)
    with pytest.raises(ValueError, match="regen_mask has 2 masks"):
        zero_shot.prepare_inputs(frames, regen.expand(2, -1, -1), cloth, frames, 64, 32)


def test_auto_lora_pairs_a_faceid_file_without_one(pub, tmp_path):
    """'auto': a FaceID .safetensors without LoRA keys gets ip-adapter-faceid_sd15_lora.safetensors from the LoRA
    list (case-insensitive, sub-folders allowed); the .bin with its LoRA inside needs none."""
    from safetensors.torch import save_file

    ip = pub.parts.ip_file
    flat = {f"image_proj.{k}": v for k, v in ip["image_proj"].items()}
    flat.update({f"ip_adapter.{k}": v for k, v in ip["ip_adapter"].items()})
    (tmp_path / "ipadapter").mkdir()
    save_file(flat, str(tmp_path / "ipadapter" / "ip-adapter-faceid_sd15.safetensors"))
    resolve = _resolver(tmp_path)
    names = ["other.safetensors", "faceid/IP-Adapter-FaceID_sd15_lora.safetensors"]
    f = zero_shot.public_files(resolve, "b.safetensors", "none", "none", "ip-adapter-faceid_sd15.safetensors",
                               "auto", "none", 0.6, lora_names=names)
    assert f.ip_lora == str(tmp_path / "loras" / names[1])
    root = Path(pub.base).parents[1]
    inside = zero_shot.public_files(_resolver(root), "tiny_sd15.safetensors", "none", "none",
                                    "ip-adapter-faceid_tiny.bin", "auto", "none", 0.6, lora_names=names)
    assert inside.ip_lora is None
