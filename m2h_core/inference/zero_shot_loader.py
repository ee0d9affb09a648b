"""Loading the zero-shot pipeline from the public files a ComfyUI user already has (no M2H checkpoint).

Files (ComfyUI folders): an SD-1.5 checkpoint (models/checkpoints: UNet, VAE and its text encoder, used once for
the empty prompt's tokens), an AnimateDiff v2/v3 motion module (models/animatediff_models), ControlNet 1.1 OpenPose
(models/controlnet), an IP-Adapter FaceID / FaceID-PlusV2 / Plus-Face (models/ipadapter) with the FaceID LoRA (in
the .bin, or models/loras), and for the Plus variants CLIP ViT-H/14 (models/clip_vision). Headers are checked
before anything is built (`public_weights.check_public_files`); the loaders are `public_weights` / `base_weights`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..base_weights import UNET_CONV_IN, file_shapes, load_clip_vision, load_motion_adapter, load_sd15, preset_widths
from ..config import PRESETS, M2HConfig
from ..models.faceid import build_image_projection
from .zero_shot import ZeroShotEncoders, ZeroShotModel, ZeroShotPipeline, zero_shot_config

log = logging.getLogger("m2h")

TEXT_PREFIX = "cond_stage_model.transformer."  # SD-1.5 single files: CLIP ViT-L/14 text encoder (transformers names)
DEFAULT_LORA_STRENGTH = 0.6  # IPAdapter_plus's FaceID default
SUPPORTED_IP = ("faceid", "faceid_plusv2", "faceid_plus", "plus_face", "plus")


@dataclass
class PublicFiles:
    """Paths of the public files; `check` reads headers only, `load` builds the pipeline."""

    base: str
    ip_adapter: str
    motion: str | None = None
    controlnet: str | None = None
    ip_lora: str | None = None  # kohya LoRA; None: the LoRA inside the IP-Adapter .bin, if it has one
    clip_vision: str | None = None
    lora_strength: float = DEFAULT_LORA_STRENGTH

    def check(self) -> M2HConfig:
        """Every file exists and is what its slot needs (SD-1.5 files: `check_public_files`); the model config."""
        from ..public_weights import PublicWeightsError, check_public_files

        for what, p in (("base", self.base), ("ip_adapter", self.ip_adapter), ("motion", self.motion),
                        ("controlnet", self.controlnet), ("ip_lora", self.ip_lora), ("clip_vision", self.clip_vision)):
            if p is not None and not Path(p).exists():
                raise PublicWeightsError(f"{Path(p).name} not found ({p}): the zero-shot mode needs it as its "
                                         f"{what.replace('_', ' ')} file (see docs/zero-shot.md)")
        cfg = preset_of(self.base)
        if cfg.name == "sd15":
            check_public_files(base=self.base, motion=self.motion, controlnet=self.controlnet,
                               ip_adapter=self.ip_adapter, ip_lora=self.ip_lora, clip_vision=self.clip_vision)
        if not -2.0 <= self.lora_strength <= 2.0:
            raise ValueError(f"LoRA strength must be between -2 and 2, got {self.lora_strength}")
        return cfg


def paired_lora_name(ip_adapter: str | os.PathLike) -> str | None:
    """The LoRA file a FaceID IP-Adapter needs beside it (`ip-adapter-faceid-plusv2_sd15_lora.safetensors`, ...), or
    None when it carries its LoRA (the .bin files) or is a variant without one (Plus-Face). Headers only."""
    from ..public_weights import identify

    info = identify(ip_adapter)
    if info.family != "ip_adapter" or not info.variant.startswith("faceid") or "LoRA inside" in info.words:
        return None
    return f"ip-adapter-{info.variant.replace('_', '-')}_sd15_lora.safetensors"


def preset_of(base: str | os.PathLike) -> M2HConfig:
    """The preset whose UNet width the base file has (SD-1.5, or the tests' tiny one); SD-1.5 when unknown."""
    shapes = file_shapes(base, (UNET_CONV_IN,))
    width = shapes.get(UNET_CONV_IN, (None,))[0]
    for make in PRESETS.values():
        cfg = make()
        if preset_widths(cfg)["unet"] == width:
            return cfg
    return PRESETS["sd15"]()


def empty_prompt_tokens(base: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The SD-1.5 text encoder's tokens (1, 77, D) of the empty prompt, from the base checkpoint's own text encoder
    (`cond_stage_model.transformer.*`, or a diffusers folder's text_encoder/); None when the file has none.

    The empty prompt needs no tokenizer vocabulary: it is BOS followed by EOS padding (SD-1.5's tokenizer pads with
    EOS), i.e. ids [vocab-2, vocab-1, ..., vocab-1] (49406, 49407... for CLIP's 49408-token vocabulary)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(base)
    if path.is_dir():
        sub = path / "text_encoder"
        if not sub.is_dir():
            return None
        model = CLIPTextModel.from_pretrained(sub, local_files_only=True)
    else:
        # real files: "text_model.embeddings..."; keep the names without that prefix, then match the model's
        sd = {k.removeprefix("text_model."): v for k, v in _text_state_dict(path).items()}
        need = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                "final_layer_norm.weight", "encoder.layers.0.mlp.fc1.weight")
        if not all(k in sd for k in need):
            return None
        tok = sd["embeddings.token_embedding.weight"]
        layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")}
        hidden, vocab = tok.shape[1], tok.shape[0]
        config = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers),
                                num_attention_heads=max(1, hidden // 64),
                                intermediate_size=sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
                                max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0],
                                hidden_act="quick_gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                pad_token_id=vocab - 1)
        model = CLIPTextModel(config)
        prefixed = next(iter(model.state_dict())).startswith("text_model.")
        sd = {("text_model." if prefixed else "") + k: v for k, v in sd.items() if not k.endswith("position_ids")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            log.warning("%s: incomplete text encoder (%d missing, %d unexpected tensors); no prompt tokens from it",
                        path.name, len(missing), len(unexpected))
            return None
    cfg = model.config
    ids = torch.full((1, cfg.max_position_embeddings), cfg.vocab_size - 1, dtype=torch.long)
    ids[0, 0] = cfg.vocab_size - 2
    with torch.no_grad():
        out = model.eval()(input_ids=ids).last_hidden_state
    return out.to(dtype)


def _text_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The base file's text-encoder tensors, without reading the rest where the format allows (safetensors)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k[len(TEXT_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(TEXT_PREFIX)}  # noqa: SIM118
    from ..base_weights import read_state_dict

    return {k[len(TEXT_PREFIX):]: v for k, v in read_state_dict(path).items() if k.startswith(TEXT_PREFIX)}


def load_zero_shot(files: PublicFiles, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   codec=None) -> ZeroShotPipeline:
    """Build the zero-shot pipeline (checks first). codec: a host's VAE (ComfyUI's) instead of the base file's."""
    from ..public_weights import PublicWeightsError, load_controlnet, load_ip_adapter, merge_lora

    base_cfg = files.check()
    unet2d, vae = load_sd15(files.base, base_cfg)
    if unet2d.config.in_channels == 2 * base_cfg.unet.latent_channels + 1:
        log.info("%s: inpainting UNet: it also reads the regenerate mask and the masked frames", Path(files.base).name)
    ip = load_ip_adapter(files.ip_adapter, unet2d)
    if ip.variant not in SUPPORTED_IP:
        raise PublicWeightsError(f"{Path(files.ip_adapter).name} is an IP-Adapter {ip.variant}; the zero-shot mode "
                                 "takes FaceID, FaceID-PlusV2 or Plus-Face (models/ipadapter)")
    lora = files.ip_lora or ip.lora
    if lora is not None and files.lora_strength != 0.0:
        n = merge_lora(unet2d, lora, files.lora_strength)
        log.info("FaceID LoRA merged into %d layers at strength %g", n, files.lora_strength)
    elif ip.variant.startswith("faceid"):
        log.info("no FaceID LoRA applied: identity is weaker without it")
    motion = load_motion_adapter(files.motion, base_cfg) if files.motion else None
    cfg = zero_shot_config(base_cfg, None if motion is None else bool(motion.config.use_motion_mid_block))
    controlnet = None
    if files.controlnet:
        controlnet = load_controlnet(files.controlnet, cfg=None if base_cfg.name == "sd15" else base_cfg)
    proj = build_image_projection(ip.image_proj, ip.variant,
                                  head_dim=64 if base_cfg.name == "sd15" else _head_dim(ip.image_proj))
    clip = load_clip_vision(files.clip_vision) if proj.needs_clip and files.clip_vision else None
    if proj.needs_clip and clip is None:
        raise PublicWeightsError(f"{Path(files.ip_adapter).name} ({ip.variant}) needs the CLIP ViT-H/14 image "
                                 "encoder: put CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in models/clip_vision")
    text = empty_prompt_tokens(files.base)
    model = ZeroShotModel.build(cfg, unet2d, motion, controlnet, proj.float(), ip.ip_kv, text)
    encoders = ZeroShotEncoders(vae.eval().requires_grad_(False) if codec is None else None, clip,
                                cfg.vae.scaling_factor, codec)
    _to(model, encoders, device, dtype)
    return ZeroShotPipeline(model, encoders)


def _head_dim(image_proj: dict[str, torch.Tensor]) -> int:
    """Tiny test files: the resampler's head width (64 in every released file, or its whole width if less)."""
    q = next((v for k, v in image_proj.items() if k.endswith("layers.0.0.to_q.weight")), None)
    return 64 if q is None else min(64, q.shape[0])


def _to(model: ZeroShotModel, encoders: ZeroShotEncoders, device, dtype) -> None:
    torch.nn.Module.to(model, device=device, dtype=dtype)
    for m in (encoders.vae, encoders.clip):
        if m is not None:
            torch.nn.Module.to(m, device=device, dtype=dtype)
