"""Tiny stand-ins of the public files the zero-shot mode uses (SD-1.5, AnimateDiff, ControlNet-OpenPose, IP-Adapter
FaceID), random weights of the tiny preset's sizes in the real key grammar; shared by the tests and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel

from m2h_core.config import M2HConfig, tiny
from m2h_core.inference.zero_shot import zero_shot_config
from m2h_core.models.faceid import ImageProjection, PlusProjection
from tests.fixtures import build_motion_adapter, build_sd15_parts, randomize_


def tiny_image_proj(variant: str, seed: int = 0, dim: int = 64, clip_dim: int = 48, tokens: int = 4
                    ) -> dict[str, torch.Tensor]:
    """A random image_proj state dict with the real key grammar (depth 4, head width 64, as every released file)."""
    torch.manual_seed(seed)
    res = {"dim": dim, "depth": 4, "heads": dim // 64, "head_dim": 64, "embedding_dim": clip_dim, "output_dim": dim,
               "ff_inner": 4 * dim}
    if variant.startswith("faceid"):
        m = ImageProjection(variant, id_dim=512, id_hidden=1024, dim=dim, tokens=tokens,
                            resampler=res if variant != "faceid" else None)
    else:
        m = PlusProjection(variant, queries=16, **res)
    sd = m.state_dict()
    return {k: torch.randn_like(v) * (0.05 if v.ndim > 1 else 1.0) + (1.0 if k.endswith("norm.weight") else 0)
            for k, v in sd.items()}


@dataclass
class TinyPublic:
    cfg: M2HConfig
    unet2d: UNet2DConditionModel
    vae: AutoencoderKL
    motion: MotionAdapter
    controlnet: ControlNetModel
    ip_file: dict  # {"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight": ...}} as in the .bin
    text: torch.Tensor  # (2, 77, D) [positive; negative] prompt tokens


def ip_adapter_keys(unet2d: UNet2DConditionModel, seed: int = 0, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """`ip_adapter` of a file: to_k_ip / to_v_ip at the index of each attn2 in `unet.attn_processors` (odd)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(unet2d.attn_processors):
        if name.endswith("attn2.processor"):
            attn = unet2d.get_submodule(name.removesuffix(".processor"))
            for kind in ("k", "v"):
                shape = (attn.to_k.out_features, attn.to_k.in_features)
                out[f"{i}.to_{kind}_ip.weight"] = torch.randn(shape, generator=g) * scale
    return out


def ip_kv_from_file(unet2d: UNet2DConditionModel, ip_adapter: dict[str, torch.Tensor]) -> dict:
    """What public_weights.load_ip_adapter gives as `ip_kv` (the interface): diffusers attn2 name -> (k, v)."""
    names = list(unet2d.attn_processors)
    return {names[int(k.split(".")[0])].removesuffix(".processor"):
            (ip_adapter[k], ip_adapter[k.replace("to_k_ip", "to_v_ip")])
            for k in ip_adapter if k.endswith("to_k_ip.weight")}


def tiny_public(seed: int = 0, base: M2HConfig | None = None, variant: str = "faceid") -> TinyPublic:
    cfg = zero_shot_config(base or tiny())
    unet2d, vae = build_sd15_parts(cfg, seed)
    motion = build_motion_adapter(cfg, seed + 10)
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed + 20)
        down = cfg.vae.downscale
        widths = {2: (8, 16), 4: (8, 16, 32), 8: (16, 32, 96, 256)}[down]
        controlnet = ControlNetModel.from_unet(unet2d, conditioning_embedding_out_channels=widths)
    randomize_(controlnet, seed + 21, scale=0.05)
    ip_file = {"image_proj": tiny_image_proj(variant, seed + 30, dim=cfg.unet.cross_attention_dim, clip_dim=48),
               "ip_adapter": ip_adapter_keys(unet2d, seed + 31)}
    gen = torch.Generator().manual_seed(seed + 40)
    text = torch.randn(2, 77, cfg.unet.cross_attention_dim, generator=gen)
    return TinyPublic(cfg, unet2d.eval(), vae.eval(), motion, controlnet.eval(), ip_file, text)


def tiny_text_encoder(width: int, seed: int = 0):
    """A tiny CLIP text encoder (transformers layout, as in SD-1.5 single files under cond_stage_model.transformer)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        return CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=width, num_hidden_layers=2,
                                            num_attention_heads=1, intermediate_size=2 * width,
                                            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=98,
                                            eos_token_id=99, pad_token_id=99)).eval()


@dataclass
class TinyPublicFiles:
    base: str
    motion: str
    controlnet: str
    ip_adapter: str
    parts: TinyPublic
    text_encoder: object


def write_tiny_public_files(folder, seed: int = 0, lora: bool = True) -> TinyPublicFiles:
    """The public files at tiny sizes in their real formats: an SD-1.5-layout single file with its text encoder,
    an AnimateDiff motion module (original layout), a ControlNet (diffusers layout), an IP-Adapter FaceID `.bin`
    (nested dict, with its LoRA keys for every attention layer)."""
    from pathlib import Path

    from tests.fixtures import motion_diffusers_to_original, save_state_dict, sd15_ldm_state_dict

    folder = Path(folder)
    p = tiny_public(seed)
    sd = sd15_ldm_state_dict(p.unet2d, p.vae, seed)
    sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    te = tiny_text_encoder(p.cfg.unet.cross_attention_dim, seed + 50)
    sd.update({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
               for k, v in te.state_dict().items()})
    base = save_state_dict(sd, folder / "checkpoints" / "tiny_sd15.safetensors")
    motion = save_state_dict(motion_diffusers_to_original(p.motion.state_dict()),
                             folder / "animatediff_models" / "tiny_mm_v3.safetensors")
    control = save_state_dict(p.controlnet.state_dict(), folder / "controlnet" / "tiny_openpose.safetensors")
    ip = dict(p.ip_file["ip_adapter"])
    if lora:
        g = torch.Generator().manual_seed(seed + 60)
        for i, name in enumerate(p.unet2d.attn_processors):
            attn = p.unet2d.get_submodule(name.removesuffix(".processor"))
            pairs = (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0]))
            for proj, lin in pairs:
                ip[f"{i}.{proj}_lora.down.weight"] = torch.randn(4, lin.in_features, generator=g) * 0.1
                ip[f"{i}.{proj}_lora.up.weight"] = torch.randn(lin.out_features, 4, generator=g) * 0.1
    path = folder / "ipadapter" / "ip-adapter-faceid_tiny.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": p.ip_file["image_proj"], "ip_adapter": ip}, str(path))
    return TinyPublicFiles(str(base), str(motion), str(control), str(path), p, te)
