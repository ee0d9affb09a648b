"""Loading the frozen/pretrained base weights offline: SD-1.5 UNet + VAE, CLIP image encoder, AnimateDiff motion.

Everything is read from local files; the architectures come from `M2HConfig` (shipped in the package), so nothing
is ever fetched from a hub. Accepted inputs:
- SD-1.5 single-file checkpoints (`.safetensors`, or `.ckpt` read with `weights_only=True`) with the original
  LDM key names, as ComfyUI users keep them in `models/checkpoints`; or a diffusers folder (`unet/`, `vae/`).
- a CLIP ViT-L/14 image encoder as a transformers-layout `.safetensors` (ComfyUI `models/clip_vision`), or a
  transformers folder.
- an AnimateDiff motion module (`mm_sd_v15_v2.safetensors` / `.ckpt`, `models/animatediff_models`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPVisionConfig as HFCLIPVisionConfig
from transformers import CLIPVisionModelWithProjection

from .config import M2HConfig


class BaseWeightsError(ValueError):
    """A base-model file that cannot be used, with the reason and what to use instead."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A tensor dict from .safetensors (preferred) or a pickle checkpoint read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise BaseWeightsError(f"{path.name} is not a readable .safetensors file (truncated or corrupt?): {e}")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for us
        raise BaseWeightsError(f"{path.name} could not be read as a weights-only checkpoint: {e}. "
                               "Use the .safetensors version of this file.") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BaseWeightsError(f"{path.name} does not hold a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def identify_checkpoint(sd: dict[str, torch.Tensor]) -> str:
    """Name the model family of an LDM-layout checkpoint: 'sd15', 'sd2', 'sdxl', 'sd3', 'flux' or 'unknown'."""
    keys = sd.keys()
    if any(k.startswith("conditioner.embedders") for k in keys) or "model.diffusion_model.label_emb.0.0.weight" in sd:
        return "sdxl"
    if any(".joint_blocks." in k for k in keys):
        return "sd3"
    if any(".double_blocks." in k for k in keys):
        return "flux"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP ViT-H text encoder (SD-1.x uses cond_stage_model.transformer.*)
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if k in sd and sd[k].shape[1] == 1024:
        return "sd2"  # SD-2.x cross-attends to 1024-wide OpenCLIP tokens (SD-1.x: 768)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd15"  # small configs (tests, tiny) keep SD-1.5's layout and are checked by shape on load
    return "unknown"


def _check_family(sd: dict, cfg: M2HConfig, name: str) -> None:
    family = identify_checkpoint(sd)
    if family == "unknown":
        raise BaseWeightsError(f"{name} is not a Stable Diffusion checkpoint (no 'model.diffusion_model.' keys)")
    if family != "sd15":  # every preset (tiny included) keeps SD-1.5's layout
        raise BaseWeightsError(f"{name} is an {family.upper()} checkpoint; M2HVideo is built on Stable Diffusion 1.5. "
                               "Pick an SD-1.5 checkpoint (e.g. v1-5-pruned-emaonly.safetensors).")


def _load_strict(module: torch.nn.Module, sd: dict, name: str, part: str, optional: tuple[str, ...] = ()) -> None:
    """Load `sd` into `module`; every key of the module must be there with its shape, except keys ending in one
    of `optional` (buffers the module computes itself), which keep the module's own values when absent."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(optional)]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or wrong:
        raise BaseWeightsError(
            f"{name}: the {part} does not match the expected architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(wrong)} with another shape (e.g. {wrong[:2]}), {len(unexpected)} unexpected")
    module.load_state_dict(sd, strict=False)


def base_unet_config(cfg: M2HConfig) -> dict:
    kw = cfg.unet.unet_kwargs()
    kw["in_channels"] = cfg.unet.latent_channels
    return kw


def load_sd15(path: str | os.PathLike, cfg: M2HConfig,
              dtype: torch.dtype = torch.float32) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """The 2-D UNet and the VAE of an SD-1.5 single file or diffusers folder (no hub access)."""
    path = Path(path)
    if path.is_dir():
        sub = lambda n: path / n if (path / n).is_dir() else path  # noqa: E731
        unet = UNet2DConditionModel.from_pretrained(sub("unet"), local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(sub("vae"), local_files_only=True, torch_dtype=dtype)
        if unet.config.cross_attention_dim != cfg.unet.cross_attention_dim:
            raise BaseWeightsError(f"{path.name}: UNet cross-attention width {unet.config.cross_attention_dim} is "
                                   f"not SD-1.5's {cfg.unet.cross_attention_dim}")
        return unet, vae
    sd = read_state_dict(path)
    _check_family(sd, cfg, path.name)
    unet_cfg = base_unet_config(cfg)
    conv_in = sd.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is not None and conv_in.shape[1] != cfg.unet.latent_channels:
        raise BaseWeightsError(f"{path.name} has a {conv_in.shape[1]}-channel UNet input (an inpainting or "
                               "instruct model?); use a standard SD-1.5 checkpoint")
    unet = UNet2DConditionModel(**unet_cfg)
    _load_strict(unet, convert_ldm_unet_checkpoint(sd, unet_cfg), path.name, "UNet")
    vae_kw = cfg.vae.vae_kwargs()
    vae = AutoencoderKL(**vae_kw)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, vae_kw), path.name, "VAE")
    return unet.to(dtype), vae.to(dtype)


def hf_clip_config(cfg: M2HConfig) -> HFCLIPVisionConfig:
    c = cfg.clip
    return HFCLIPVisionConfig(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                              num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                              image_size=c.image_size, patch_size=c.patch_size, projection_dim=c.projection_dim,
                              hidden_act="quick_gelu")


def load_clip_vision(path: str | os.PathLike, cfg: M2HConfig,
                     dtype: torch.dtype = torch.float32) -> CLIPVisionModelWithProjection:
    """CLIP image encoder (ViT-L/14 for sd15) from a transformers-layout file or folder."""
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists()), path)
    sd = read_state_dict(path)
    sd = {k.removeprefix("clip_vision."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    if "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise BaseWeightsError(f"{path.name} is not a CLIP image encoder in the transformers layout "
                               "(no vision_model.embeddings.patch_embedding.weight)")
    width = sd["vision_model.embeddings.patch_embedding.weight"].shape[0]
    proj = sd.get("visual_projection.weight")
    if width != cfg.clip.hidden_size or proj is None or proj.shape[0] != cfg.clip.projection_dim:
        raise BaseWeightsError(
            f"{path.name} is a CLIP image encoder of width {width}"
            f"{'' if proj is None else f' with a {proj.shape[0]}-d projection'}; this model needs width "
            f"{cfg.clip.hidden_size} with a {cfg.clip.projection_dim}-d projection (CLIP ViT-L/14 for SD-1.5)")
    model = CLIPVisionModelWithProjection(hf_clip_config(cfg))
    sd.pop("vision_model.embeddings.position_ids", None)
    _load_strict(model, sd, path.name, "CLIP image encoder")
    return model.to(dtype).eval().requires_grad_(False)


def load_motion_adapter(path: str | os.PathLike, cfg: M2HConfig) -> MotionAdapter:
    """An AnimateDiff motion module (original layout, or diffusers' MotionAdapter layout)."""
    path = Path(path)
    if path.is_dir():
        return MotionAdapter.from_pretrained(path, local_files_only=True)
    sd = read_state_dict(path)
    if not any("motion_modules" in k for k in sd):
        raise BaseWeightsError(f"{path.name} is not an AnimateDiff motion module (no 'motion_modules' keys)")
    if any("temporal_transformer" in k or "attention_blocks" in k for k in sd):
        sd = convert_animatediff_checkpoint_to_diffusers(sd)
    adapter = MotionAdapter(**cfg.unet.motion_kwargs())
    if not cfg.unet.motion_mid_block:
        sd = {k: v for k, v in sd.items() if not k.startswith("mid_block")}
    # The sinusoidal position tables (`pos_encoder.pe` in AnimateDiff files, dropped by diffusers' converter;
    # absent from v1 files) are deterministic: the adapter's own `pos_embed.pe` for its max length is used.
    sd = {k: v for k, v in sd.items() if "pos_encoder" not in k and not k.endswith("pos_embed.pe")}
    _load_strict(adapter, sd, path.name, "motion module", optional=("pos_embed.pe",))
    return adapter


def describe(path: str | os.PathLike) -> str:
    """One line about a checkpoint file, for logs and `m2h doctor`."""
    sd = read_state_dict(path)
    return json.dumps({"file": Path(path).name, "family": identify_checkpoint(sd), "tensors": len(sd)})
