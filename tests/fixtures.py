"""Builders for small model files in the REAL on-disk formats and key layouts (shared by the test suites).

Every builder creates random diffusers / transformers modules of the config's sizes, perturbs *every* tensor with
seeded noise (so no two tensors are equal by accident: a swapped key would be caught by an equality check), and
writes them under the key names the real files use:

- `write_sd15_single_file`: an SD-1.5 single-file checkpoint with the original LDM names
  (`model.diffusion_model.input_blocks.…`, `first_stage_model.encoder.…`, a few `cond_stage_model.transformer.…`),
  produced by `m2h_core.public_layouts.unet_to_ldm` (the inverse of diffusers' `convert_ldm_unet_checkpoint`) and
  `vae_diffusers_to_ldm` (the inverse of `convert_ldm_vae_checkpoint`);
- `write_sdxl_like_file` / `write_sd2_like_file`: the same layout with the other families' tell-tale keys/widths;
- `write_clip_vision`: a transformers `CLIPVisionModelWithProjection` state dict (`vision_model.*`,
  `visual_projection.weight`), as ComfyUI's `models/clip_vision` files;
- `write_motion_module`: an AnimateDiff motion module in the ORIGINAL layout (`…motion_modules.0.temporal_transformer.
  transformer_blocks.0.attention_blocks.0.to_q.weight`, `norms.0`, `ff_norm`, `attention_blocks.N.pos_encoder.pe`),
  produced by `m2h_core.public_layouts.motion_to_original` (inverse of `convert_animatediff_checkpoint_to_diffusers`);
- `write_m2h_checkpoint`: an M2H checkpoint through the package's own `save_checkpoint`.

A path ending in `.safetensors` is written with safetensors, anything else (`.ckpt`, `.pt`) with `torch.save` of a
plain dict (readable with `weights_only=True`, as the loaders read pickles).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file
from transformers import CLIPVisionModelWithProjection

from m2h_core.base_weights import base_unet_config, hf_clip_config
from m2h_core.config import M2HConfig
from m2h_core.public_layouts import motion_to_original as motion_diffusers_to_original
from m2h_core.public_layouts import unet_to_ldm as unet_diffusers_to_ldm

# -- generic helpers ---------------------------------------------------------------------------------------------


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Add seeded noise to every parameter (norm weights stay near 1, zero-inits become small but non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)
    return module


def save_state_dict(sd: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
                    ) -> Path:
    """.safetensors via safetensors, any other suffix via torch.save of a plain {name: tensor} dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path), metadata=metadata)
    else:
        torch.save(sd, str(path))
    return path


@contextlib.contextmanager
def _seeded(seed: int):
    """Module constructors inside draw from `seed`; the global RNG state is restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


# -- SD-1.5 single file (LDM layout) ------------------------------------------------------------------------------

_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_diffusers_to_ldm(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Inverse of diffusers' `convert_ldm_vae_checkpoint`; mid-block attention weights become 1x1 convs (4-D)."""
    n = len(config["up_block_types"])
    direct = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in direct:
            out[direct[k]] = v
            continue
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", k):
            part, name, kind = m[1], m[2], m[3]
            if name not in _VAE_ATTN_TO_LDM:
                raise KeyError(f"no LDM name for VAE key {k}")
            if kind == "weight" and name != "group_norm":
                v = v[:, :, None, None]  # the original VAE's attention uses 1x1 convolutions
            out[f"{part}.mid.attn_1.{_VAE_ATTN_TO_LDM[name]}.{kind}"] = v
            continue
        k2 = k.replace("conv_shortcut", "nin_shortcut")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k2):
            out[f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"] = v
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k2):
            out[f"encoder.down.{m[1]}.downsample.conv.{m[2]}"] = v
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", k2):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"] = v
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k2):
            out[f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3]}"] = v
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k2):
            out[f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"] = v
        else:
            raise KeyError(f"no LDM name for VAE key {k}")
    return out


def _text_encoder_keys(g: torch.Generator, prefix: str, width: int = 32) -> dict[str, torch.Tensor]:
    """A handful of text-encoder tensors, as in a full single-file checkpoint (the loaders must ignore them)."""
    names = {
        "text_model.embeddings.token_embedding.weight": (64, width),
        "text_model.embeddings.position_embedding.weight": (77, width),
        "text_model.encoder.layers.0.self_attn.q_proj.weight": (width, width),
        "text_model.final_layer_norm.weight": (width,),
        "text_model.final_layer_norm.bias": (width,),
    }
    return {prefix + k: torch.randn(s, generator=g) for k, s in names.items()}


def build_sd15_parts(cfg: M2HConfig, seed: int = 0, cross_attention_dim: int | None = None
                     ) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """A random (noise-perturbed) 2-D UNet (latent-channel input, as SD-1.5) and VAE of the config's sizes."""
    kw = base_unet_config(cfg)
    if cross_attention_dim is not None:
        kw["cross_attention_dim"] = cross_attention_dim
    with _seeded(seed):
        unet = UNet2DConditionModel(**kw)
        vae = AutoencoderKL(**cfg.vae.vae_kwargs())
    randomize_(unet, seed + 1)
    randomize_(vae, seed + 2)
    return unet.eval(), vae.eval()


def sd15_ldm_state_dict(unet: UNet2DConditionModel, vae: AutoencoderKL, seed: int = 0,
                        text_prefix: str = "cond_stage_model.transformer.") -> dict[str, torch.Tensor]:
    """The full single-file state dict (UNet + VAE + a few text-encoder keys + alphas_cumprod), LDM names."""
    g = torch.Generator().manual_seed(seed + 3)
    sd = {"model.diffusion_model." + k: v for k, v in unet_diffusers_to_ldm(unet.state_dict(), unet.config).items()}
    sd.update({"first_stage_model." + k: v for k, v in vae_diffusers_to_ldm(vae.state_dict(), vae.config).items()})
    sd.update(_text_encoder_keys(g, text_prefix))
    sd["alphas_cumprod"] = torch.linspace(0.9991, 0.0047, 1000)
    return sd


def write_sd15_single_file(path: str | os.PathLike, cfg: M2HConfig, seed: int = 0
                           ) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """An SD-1.5-style single-file checkpoint of cfg's sizes; returns the (diffusers) UNet and VAE it holds."""
    unet, vae = build_sd15_parts(cfg, seed)
    save_state_dict(sd15_ldm_state_dict(unet, vae, seed), path)
    return unet, vae


def write_sdxl_like_file(path: str | os.PathLike, cfg: M2HConfig, seed: int = 0) -> Path:
    """SD-1.5 layout of cfg's sizes plus SDXL's tell-tales: `conditioner.embedders.*` and `label_emb` keys."""
    unet, vae = build_sd15_parts(cfg, seed)
    sd = sd15_ldm_state_dict(unet, vae, seed, text_prefix="conditioner.embedders.0.transformer.")
    width = unet.config.block_out_channels[0] * 4
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.randn(width, 2816)
    sd["model.diffusion_model.label_emb.0.0.bias"] = torch.randn(width)
    return save_state_dict(sd, path)


def write_sd2_like_file(path: str | os.PathLike, cfg: M2HConfig, seed: int = 0) -> Path:
    """SD-1.5 layout of cfg's sizes, but SD-2's 1024-wide cross-attention (OpenCLIP ViT-H text tokens)."""
    unet, vae = build_sd15_parts(cfg, seed, cross_attention_dim=1024)
    return save_state_dict(sd15_ldm_state_dict(unet, vae, seed), path)


# -- CLIP image encoder (transformers layout) --------------------------------------------------------------------


def build_clip_vision(cfg: M2HConfig, seed: int = 0) -> CLIPVisionModelWithProjection:
    with _seeded(seed):
        model = CLIPVisionModelWithProjection(hf_clip_config(cfg))
    return randomize_(model, seed + 1).eval()


def write_clip_vision(path: str | os.PathLike, cfg: M2HConfig, seed: int = 0) -> CLIPVisionModelWithProjection:
    """A CLIP image encoder of cfg's sizes in the transformers layout (`vision_model.*`, `visual_projection.weight`)."""
    model = build_clip_vision(cfg, seed)
    save_state_dict(model.state_dict(), path)
    return model


# -- AnimateDiff motion module (original layout) -----------------------------------------------------------------

def build_motion_adapter(cfg: M2HConfig, seed: int = 0) -> MotionAdapter:
    with _seeded(seed):
        adapter = MotionAdapter(**cfg.unet.motion_kwargs())
    return randomize_(adapter, seed + 1).eval()


def write_motion_module(path: str | os.PathLike, cfg: M2HConfig, seed: int = 0) -> MotionAdapter:
    """An AnimateDiff motion module of cfg's sizes in the original layout; returns the MotionAdapter it holds."""
    adapter = build_motion_adapter(cfg, seed)
    save_state_dict(motion_diffusers_to_original(adapter.state_dict()), path)
    return adapter


# -- public files: real headers without the data -----------------------------------------------------------------


def write_header_only(path: str | os.PathLike, table: dict[str, torch.Tensor]) -> Path:
    """A .safetensors file with `table`'s real header (names, shapes, dtypes, offsets as the safetensors library
    writes them) and a sparse, unwritten data section of the right size: a public file's header at its real size
    without its memory (`m2h_core.public_layouts` makes the tables)."""
    import json

    from m2h_core.public_layouts import safetensors_bytes

    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}
    header, off = {}, 0
    for k in sorted(table, key=lambda k: (-table[k].element_size(), k)):
        n = table[k].numel() * table[k].element_size()
        header[k] = {"dtype": names[table[k].dtype], "shape": list(table[k].shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + off)
    assert path.stat().st_size == safetensors_bytes(table)
    return path


# -- M2H checkpoint ----------------------------------------------------------------------------------------------


def build_m2h_model(cfg: M2HConfig, seed: int = 0, perturb: bool = True):
    """A random M2HModel; `perturb` adds noise to every parameter (zero-inits included: a 'trained' model)."""
    from m2h_core.models.m2h import M2HModel

    with _seeded(seed):
        model = M2HModel(cfg)
    if perturb:
        randomize_(model, seed + 1)
    return model.eval()


def write_m2h_checkpoint(path: str | os.PathLike, cfg: M2HConfig, seed: int = 0, perturb: bool = True,
                         extra: dict | None = None):
    """An M2H checkpoint written by the package's own `save_checkpoint`; returns the saved M2HModel."""
    from m2h_core.checkpoint import save_checkpoint

    model = build_m2h_model(cfg, seed, perturb)
    save_checkpoint(model, path, extra=extra)
    return model


# -- inputs --------------------------------------------------------------------------------------------------------


def random_inputs(cfg: M2HConfig, batch: int = 1, frames: int = 2, height: int | None = None,
                  width: int | None = None, seed: int = 0, clip_tokens: int = 1):
    """Random `M2HInputs` for cfg at (height, width) pixels (the config's size by default)."""
    from m2h_core.models.m2h import M2HInputs

    g = torch.Generator().manual_seed(seed)
    H, W = height or cfg.height, width or cfg.width
    d = cfg.vae.downscale
    c, h, w = cfg.unet.latent_channels, H // d, W // d
    return M2HInputs(
        clothing_latents=torch.randn(batch, frames, c, h, w, generator=g),
        pose_images=torch.rand(batch, frames, 3, H, W, generator=g) * 2 - 1,
        identity_latent=torch.randn(batch, c, h, w, generator=g),
        identity_landmarks=torch.rand(batch, 3, H, W, generator=g) * 2 - 1,
        arcface=torch.randn(batch, cfg.head.arcface_dim, generator=g),
        clip_tokens=torch.randn(batch, frames, clip_tokens, cfg.unet.cross_attention_dim, generator=g),
    )


def synthetic_sample(seed: int, n_frames: int = 1, source: str = "human", height: int = 64, width: int = 32):
    """(clip, sample): a synthetic clip rendered at twice the size and its training sample at height x width
    (`transform_sample`), with the frames of the clip's `source` rendering ("human" or "mannequin")."""
    from m2h_core.demo.synthetic import generate_clip
    from m2h_core.training.dataset import transform_sample

    c = generate_clip(seed, n_frames=n_frames, height=2 * height, width=2 * width)
    s, _ = transform_sample(getattr(c, source), c.clothing_mask, c.face_mask, c.pose_images, c.identity_image,
                            c.identity_landmarks, height, width)
    return c, s
