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
import re
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

log = logging.getLogger(__name__)

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
    """A tensor dict from .safetensors (preferred) or a pickle checkpoint read with weights_only=True (nested
    dicts flattened with ".")."""
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
    from .public_weights import _flatten

    return _flatten(sd)  # nested dicts (IP-Adapter .bin: image_proj / ip_adapter) as "image_proj.proj.0.weight"


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
    module.load_state_dict(sd, strict=False, assign=any(v.is_meta for v in sd.values()))


def _device_of(sd: dict[str, torch.Tensor]) -> torch.device:
    """Where to build the module for `sd`: the meta device for key tables (shapes only), else the CPU."""
    return torch.device("meta") if any(v.is_meta for v in sd.values()) else torch.device("cpu")


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
                f"{which_preset(part, shapes[key][0]) or _known_encoder(part, shapes[key][0])} "
                f"({_PART_WORDS[part]} width {shapes[key][0]}, {preset_words(cfg)} has {want[part]}): give the "
                f"{'base model' if part != 'clip' else 'CLIP image encoder'} it was trained with{hint}")


def _known_encoder(part: str, width: int) -> str:
    from .public_weights import CLIP_WIDTHS

    return f"CLIP {CLIP_WIDTHS[width]}" if part == "clip" and width in CLIP_WIDTHS else "a model of another size"


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
    """The 2-D UNet and the VAE of an SD-1.5 single file or diffusers folder (no hub access). An inpainting
    checkpoint loads with its 9-channel conv_in (`unet.config.in_channels == 9`)."""
    path = Path(path)
    if path.is_dir():
        sub = lambda n: path / n if (path / n).is_dir() else path
        unet = UNet2DConditionModel.from_pretrained(sub("unet"), local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(sub("vae"), local_files_only=True, torch_dtype=dtype)
        if unet.config.cross_attention_dim != cfg.unet.cross_attention_dim:
            raise BaseWeightsError(f"{path.name}: UNet cross-attention width {unet.config.cross_attention_dim} is "
                                   f"not SD-1.5's {cfg.unet.cross_attention_dim}")
        return unet, vae
    sd = read_state_dict(path)
    _check_family(sd, cfg, path.name)
    check_preset({k: tuple(sd[k].shape) for k in (UNET_CONV_IN, VAE_CONV_IN) if k in sd}, cfg, f"the base {path.name}")
    unet = unet_from_ldm(sd, cfg, path.name)
    vae_kw = cfg.vae.vae_kwargs()
    vae = AutoencoderKL(**vae_kw)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, vae_kw), path.name, "VAE")
    return torch.nn.Module.to(unet, dtype), torch.nn.Module.to(vae, dtype)  # no diffusers cast warning


def unet_from_ldm(sd: dict[str, torch.Tensor], cfg: M2HConfig, name: str) -> UNet2DConditionModel:
    """The 2-D UNet of an LDM-layout state dict (`model.diffusion_model.*`), 4 input channels or 9 (inpainting:
    latents, mask, masked-image latents); built on the meta device when `sd` holds meta tensors (key tables)."""
    unet_cfg = base_unet_config(cfg)
    conv_in = sd.get(UNET_CONV_IN)
    inpaint = 2 * cfg.unet.latent_channels + 1
    if conv_in is not None and conv_in.shape[1] == inpaint:
        unet_cfg["in_channels"] = inpaint
        log.info("%s is an inpainting checkpoint: its UNet takes %d channels (latents, mask, masked-image latents)",
                 name, inpaint)
    elif conv_in is not None and conv_in.shape[1] != cfg.unet.latent_channels:
        raise BaseWeightsError(f"{name} has a {conv_in.shape[1]}-channel UNet input (an instruct model?); "
                               f"use a standard ({cfg.unet.latent_channels}-channel) or inpainting ({inpaint}-channel) "
                               "SD-1.5 checkpoint")
    with _device_of(sd):
        unet = UNet2DConditionModel(**unet_cfg)
    _load_strict(unet, convert_ldm_unet_checkpoint(sd, unet_cfg), name, "UNet")
    return unet


def hf_clip_config(cfg: M2HConfig) -> HFCLIPVisionConfig:
    c = cfg.clip
    return HFCLIPVisionConfig(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                              num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                              image_size=c.image_size, patch_size=c.patch_size, projection_dim=c.projection_dim,
                              hidden_act="quick_gelu")


# heads are not in the shapes: the published encoders by width (OpenAI ViT-B/L, OpenCLIP ViT-H/g/bigG)
_CLIP_HEADS = {768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


def clip_config_from_state_dict(sd: dict[str, torch.Tensor], cfg: M2HConfig | None = None) -> HFCLIPVisionConfig:
    """transformers' CLIPVisionConfig of a transformers-layout CLIP image encoder, from its tensor shapes: width
    from the patch embedding, patch size from its kernel, layers counted, image size from the position table,
    projection from visual_projection. Heads (not in the shapes) from the published encoders by width, or
    `cfg`'s for its own width; OpenCLIP encoders (ViT-H/g/bigG, width >= 1280) use GELU, OpenAI's quick GELU."""
    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    width, p = patch.shape[0], patch.shape[-1]
    layers = 1 + max(int(m[1]) for k in sd if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)))
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    side = round((positions - 1) ** 0.5)
    proj = sd.get("visual_projection.weight")
    fc1 = sd["vision_model.encoder.layers.0.mlp.fc1.weight"]
    own = cfg is not None and cfg.clip.hidden_size == width
    heads = cfg.clip.num_attention_heads if own else _CLIP_HEADS.get(width, max(1, width // 64))
    return HFCLIPVisionConfig(hidden_size=width, intermediate_size=fc1.shape[0], num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=side * p, patch_size=p,
                              projection_dim=proj.shape[0] if proj is not None else width,
                              hidden_act="gelu" if width >= 1280 and not own else "quick_gelu")


def clip_name(config: HFCLIPVisionConfig) -> str:
    """"ViT-H/14", "ViT-L/14", ... or "CLIP width N" for an encoder config."""
    from .public_weights import CLIP_WIDTHS

    return CLIP_WIDTHS.get(config.hidden_size, f"CLIP width {config.hidden_size}")


def clip_from_state_dict(sd: dict[str, torch.Tensor], cfg: M2HConfig | None, name: str
                         ) -> CLIPVisionModelWithProjection:
    """The encoder of a transformers-layout state dict: `cfg`'s architecture (refused, naming the encoder, if the
    file is another one) or, with cfg None, the file's own; on the meta device for key tables."""
    width = sd["vision_model.embeddings.patch_embedding.weight"].shape[0]
    proj = sd.get("visual_projection.weight")
    if cfg is not None and (width != cfg.clip.hidden_size or proj is None
                            or proj.shape[0] != cfg.clip.projection_dim):
        from .public_weights import CLIP_WIDTHS

        known = which_preset("clip", width) or CLIP_WIDTHS.get(width)
        raise BaseWeightsError(
            f"{name} is a CLIP image encoder of width {width}{f' ({known})' if known else ''}"
            f"{'' if proj is None else f' with a {proj.shape[0]}-d projection'}; this model needs width "
            f"{cfg.clip.hidden_size} with a {cfg.clip.projection_dim}-d projection (CLIP ViT-L/14 for SD-1.5)")
    config = hf_clip_config(cfg) if cfg is not None else clip_config_from_state_dict(sd)
    with _device_of(sd):
        model = CLIPVisionModelWithProjection(config)
    sd = {k: v for k, v in sd.items() if k != "vision_model.embeddings.position_ids"}
    _load_strict(model, sd, name, "CLIP image encoder")
    return model


def load_clip_vision(path: str | os.PathLike, cfg: M2HConfig | None = None,
                     dtype: torch.dtype = torch.float32) -> CLIPVisionModelWithProjection:
    """A CLIP image encoder from a transformers-layout file or folder, its architecture read from the file's
    shapes (ViT-L/14 for the M2H model's clothing branch; ViT-H/14 for SD-1.5 IP-Adapters). cfg: the M2H model
    it must fit (width and projection of `cfg.clip`); None accepts any. Logs which one it loaded."""
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists()), path)
    sd = read_state_dict(path)
    sd = {k.removeprefix("clip_vision."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    if "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise BaseWeightsError(f"{path.name} is not a CLIP image encoder in the transformers layout "
                               "(no vision_model.embeddings.patch_embedding.weight)")
    model = clip_from_state_dict(sd, cfg, path.name)
    config = model.config
    log.info("%s: CLIP %s image encoder (width %d, %d layers, %d-d projection)", path.name, clip_name(config),
             config.hidden_size, config.num_hidden_layers, config.projection_dim)
    return model.to(dtype).eval().requires_grad_(False)


def motion_state_dict(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """An AnimateDiff motion module's tensors in diffusers' MotionAdapter names (position tables dropped: they
    are deterministic, and the adapter computes its own). Refuses SparseCtrl encoders and motion LoRAs."""
    if not any("motion_modules" in k for k in sd):
        raise BaseWeightsError(f"{name} is not an AnimateDiff motion module (no 'motion_modules' keys)")
    if any(k.startswith(("controlnet_", "input_hint_block", "control_model.")) for k in sd):
        raise BaseWeightsError(f"{name} is an AnimateDiff SparseCtrl encoder, not a motion module: give "
                               "mm_sd_v15_v2.ckpt or v3_sd15_mm.ckpt (huggingface.co/guoyww/animatediff)")
    if any("lora" in k for k in sd):
        raise BaseWeightsError(f"{name} is an AnimateDiff LoRA, not a motion module: give mm_sd_v15_v2.ckpt or "
                               "v3_sd15_mm.ckpt (huggingface.co/guoyww/animatediff)")
    if any("temporal_transformer" in k or "attention_blocks" in k for k in sd):
        sd = convert_animatediff_checkpoint_to_diffusers(sd)
    return {k: v for k, v in sd.items() if "pos_encoder" not in k and not k.endswith("pos_embed.pe")}


def motion_kwargs_for(sd: dict[str, torch.Tensor], cfg: M2HConfig) -> dict:
    """MotionAdapter kwargs for this file: cfg's sizes, the mid block as the file has it (AnimateDiff v2: yes;
    v3 and v1: no)."""
    kw = cfg.unet.motion_kwargs()
    kw["use_motion_mid_block"] = any(k.startswith("mid_block.") for k in sd)
    return kw


def load_motion_adapter(path: str | os.PathLike, cfg: M2HConfig) -> MotionAdapter:
    """An AnimateDiff motion module (original layout: v1, v2 with its mid block, v3 without; or diffusers'
    MotionAdapter layout). The mid block follows the file, whatever `cfg.unet.motion_mid_block` says
    (`models.unet.build_unet` then writes the file's choice into the config)."""
    path = Path(path)
    if path.is_dir():
        return MotionAdapter.from_pretrained(path, local_files_only=True)
    adapter = motion_adapter_from_state_dict(read_state_dict(path), cfg, path.name)
    log.info("%s: AnimateDiff motion module %s", path.name, "with a mid block (v2)"
             if adapter.config.use_motion_mid_block else "without a mid block (v3/v1)")
    return adapter


def motion_adapter_from_state_dict(sd: dict[str, torch.Tensor], cfg: M2HConfig, name: str) -> MotionAdapter:
    """The MotionAdapter of a motion-module state dict (either layout), its mid block as the file has it; on the
    meta device for key tables."""
    sd = motion_state_dict(sd, name)
    with _device_of(sd):
        adapter = MotionAdapter(**motion_kwargs_for(sd, cfg))
    _load_strict(adapter, sd, name, "motion module", optional=("pos_embed.pe",))
    return adapter
