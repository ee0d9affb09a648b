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

import contextlib
import json
import logging
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


class _EmptyFp32Notice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "kept in float32: []" not in record.getMessage()


@contextlib.contextmanager
def quiet_empty_fp32_notice():
    """Drop diffusers' "modules ... that should be kept in float32: []" warning (printed by every dtype cast of a
    diffusers model, here inside UNetMotionModel.from_unet2d) while building models: the list is empty, so it
    says nothing; any warning that names modules still shows."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    notice = _EmptyFp32Notice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A tensor dict from .safetensors (preferred) or a pickle checkpoint read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            from .preprocess.model_files import describe_file

            raise BaseWeightsError(f"{path} is not a readable .safetensors file ({describe_file(path)}; "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}): download it again") \
                from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for us
        from .preprocess.model_files import describe_file

        why = ("it holds pickled objects besides tensors, which the pack never unpickles"
               if "Weights only load failed" in str(e) else str(e).strip().splitlines()[0][:200] if str(e).strip()
               else type(e).__name__)
        raise BaseWeightsError(f"{path} could not be read as a weights-only checkpoint ({describe_file(path)}; "
                               f"{why}): use the .safetensors version of this file") from None
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
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and sd[k].shape != own[k].shape]
    if missing or wrong:
        raise BaseWeightsError(
            f"{name}: the {part} does not match the expected architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(wrong)} with another shape (e.g. {wrong[:2]}), {len(unexpected)} unexpected")
    module.load_state_dict(sd, strict=False)


# -- which preset a base file belongs to (from tensor shapes, read from the file header before any model exists) --

UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_CONV_IN = "first_stage_model.encoder.conv_in.weight"
CLIP_PATCH = "vision_model.embeddings.patch_embedding.weight"
PRESET_WORDS = {"sd15": "SD-1.5", "tiny": "the tiny preset"}
_PART_WORDS = {"unet": "UNet", "vae": "VAE", "clip": "CLIP image encoder"}


def preset_widths(cfg: M2HConfig) -> dict[str, int]:
    """First-layer widths that tell the presets apart: UNet conv_in, VAE encoder conv_in, CLIP width."""
    return {"unet": cfg.unet.block_out_channels[0], "vae": cfg.vae.block_out_channels[0],
            "clip": cfg.clip.hidden_size}


def preset_words(cfg: M2HConfig) -> str:
    return PRESET_WORDS.get(cfg.name, f"the {cfg.name} preset")


def which_preset(part: str, width: int) -> str | None:
    """In words, the preset whose `part` has this width ("SD-1.5", "the tiny preset"), or None."""
    from .config import PRESETS

    for name, make in PRESETS.items():
        if preset_widths(make())[part] == width:
            return PRESET_WORDS.get(name, f"the {name} preset")
    return None


def file_shapes(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of `keys` (also under a `clip_vision.` prefix) from a .safetensors header, or from a diffusers /
    transformers folder's config.json; {} for pickles (checked once loaded). Reads no tensor data."""
    path = Path(path)
    if path.is_dir():
        out: dict[str, tuple[int, ...]] = {}
        for sub, key in (("unet", UNET_CONV_IN), ("vae", VAE_CONV_IN)):
            cfg_file = path / sub / "config.json"
            if key in keys and cfg_file.is_file():
                out[key] = (json.loads(cfg_file.read_text())["block_out_channels"][0],)
        if CLIP_PATCH in keys and (path / "config.json").is_file():
            conf = json.loads((path / "config.json").read_text())
            conf = conf.get("vision_config", conf)
            if "hidden_size" in conf:
                out[CLIP_PATCH] = (conf["hidden_size"],)
        return out
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            return {k: tuple(f.get_slice(n).get_shape()) for k in keys for n in (k, "clip_vision." + k)
                    if n in names}
    except (SafetensorError, OSError, ValueError) as e:
        from .preprocess.model_files import describe_file

        raise BaseWeightsError(f"{path} is not a readable .safetensors file ({describe_file(path)}; "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}): download it again") \
            from None


def check_preset(shapes: dict[str, tuple[int, ...]], cfg: M2HConfig, name: str, checkpoint: str | None = None
                 ) -> None:
    """A base / CLIP file whose widths belong to another preset than the model's: say which is which."""
    want = preset_widths(cfg)
    for part, key in (("unet", UNET_CONV_IN), ("vae", VAE_CONV_IN), ("clip", CLIP_PATCH)):
        if key in shapes and shapes[key][0] != want[part]:
            who = f"the checkpoint {checkpoint}" if checkpoint else "the model"
            hint = (" (tiny checkpoints normally embed their VAE and CLIP: re-save it with them, then give no base)"
                    if cfg.name == "tiny" else "")
            raise BaseWeightsError(
                f"{who} is {preset_words(cfg)}, but {name} is "
                f"{which_preset(part, shapes[key][0]) or 'a model of another size'} "
                f"({_PART_WORDS[part]} width {shapes[key][0]}, {preset_words(cfg)} has {want[part]}): give the "
                f"{'base model' if part != 'clip' else 'CLIP image encoder'} it was trained with{hint}")


def check_base_files(cfg: M2HConfig, base: str | os.PathLike | None = None,
                     clip_vision: str | os.PathLike | None = None, checkpoint: str | None = None) -> None:
    """Before any model is built: the base and CLIP files exist and are of the model's preset (headers only)."""
    for what, p, keys in (("base model", base, (UNET_CONV_IN, VAE_CONV_IN)), ("CLIP image encoder", clip_vision,
                                                                                (CLIP_PATCH,))):
        if p is None:
            continue
        if not Path(p).exists():
            raise FileNotFoundError(f"{what} not found: {p}")
        check_preset(file_shapes(p, keys), cfg, f"the {'base' if what == 'base model' else what} {Path(p).name}",
                     checkpoint)


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
    check_preset({k: tuple(sd[k].shape) for k in (UNET_CONV_IN, VAE_CONV_IN) if k in sd}, cfg, f"the base {path.name}")
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
    return torch.nn.Module.to(unet, dtype), torch.nn.Module.to(vae, dtype)  # no diffusers cast warning


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
            f"{f' ({known})' if (known := which_preset('clip', width)) else ''}"
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
