"""Loading everything inference needs (M2H model + frozen VAE and CLIP) from files on disk.

An M2H checkpoint holds every trainable part (including the whole UNet). The frozen encoders come from:
- the M2H checkpoint itself when it embeds them (`vae.*`, `clip_vision.*` keys: small self-contained models such
  as the tiny demo's), or
- the SD-1.5 base checkpoint (VAE) and a CLIP ViT-L/14 image-encoder file (`clip_vision`).
Without an M2H checkpoint, the model is assembled from the base files (SD-1.5 UNet + optional AnimateDiff motion
module) with the M2H parts freshly initialised: the starting point for training, not for generation.
A host may hand in its own VAE and CLIP image encoder (`codec`, `embedder`: the `VAECodec` / `ImageEmbedder`
interface of encoders.py, e.g. ComfyUI's VAE and CLIP_VISION); the files for those parts are then not needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

from ..base_weights import (check_base_files, hf_clip_config, load_clip_vision, load_motion_adapter, load_sd15,
                            quiet_empty_fp32_notice)
from ..checkpoint import check_checkpoint_file, has_embedded_encoders, load_checkpoint
from ..config import M2HConfig, sd15
from .encoders import FrozenEncoders, ImageEmbedder, VAECodec, check_codec, check_embedder
from ..models.m2h import M2HModel
from ..models.unet import build_unet

ENCODER_PREFIXES = ("vae.", "clip_vision.")


@dataclass
class M2HPipeline:
    model: M2HModel
    encoders: FrozenEncoders

    @property
    def cfg(self) -> M2HConfig:
        return self.model.cfg

    def to(self, device=None, dtype=None) -> "M2HPipeline":
        if dtype == next(self.model.parameters()).dtype:
            dtype = None  # diffusers warns on every dtype cast, even a no-op one
        self.model.to(device=device, dtype=dtype)
        self.encoders.to(device=device, dtype=dtype)
        return self


def embedded_encoders(path: str | os.PathLike, cfg: M2HConfig) -> FrozenEncoders | None:
    """The VAE and CLIP stored inside an M2H checkpoint, or None if it has none."""
    sd = load_file(str(path))
    vae_sd = {k[4:]: v for k, v in sd.items() if k.startswith("vae.")}
    clip_sd = {k[12:]: v for k, v in sd.items() if k.startswith("clip_vision.")}
    if not vae_sd or not clip_sd:
        return None
    vae = AutoencoderKL(**cfg.vae.vae_kwargs())
    vae.load_state_dict(vae_sd)
    clip = CLIPVisionModelWithProjection(hf_clip_config(cfg))
    clip.load_state_dict(clip_sd, strict=False)
    return FrozenEncoders(vae.eval().requires_grad_(False), clip.eval().requires_grad_(False), cfg)


def check_model_files(checkpoint: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                      clip_vision: str | os.PathLike | None = None, motion_module: str | os.PathLike | None = None,
                      config: M2HConfig | None = None, have_vae: bool = False, have_clip: bool = False
                      ) -> M2HConfig:
    """Every check on the model files that needs no model (file headers only): they exist and are readable, the
    checkpoint is complete, the encoders it lacks are given, and the base / CLIP files are of its preset (a tiny
    checkpoint with an SD-1.5 base is named as such). have_vae / have_clip: the host gives that encoder.
    Returns the model's config."""
    for what, p in (("M2H checkpoint", checkpoint), ("base model", base), ("CLIP image encoder", clip_vision),
                    ("motion module", motion_module)):
        if p is not None and not Path(p).exists():
            raise FileNotFoundError(f"{what} not found: {p}")
    if checkpoint is None:
        if base is None:
            raise ValueError("give an M2H checkpoint, or an SD-1.5 base checkpoint to start training from")
        cfg, name, embedded = config or sd15(), None, False
    else:
        cfg, name = check_checkpoint_file(checkpoint), Path(checkpoint).name
        embedded = has_embedded_encoders(checkpoint)
    if not embedded:
        missing = [n for n, p, have in (("an SD-1.5 base checkpoint (for its VAE)", base, have_vae),
                                        ("a CLIP ViT-L/14 image encoder (clip_vision)", clip_vision, have_clip))
                   if p is None and not have]
        if missing:
            raise ValueError(f"{name or 'this model'} does not embed its VAE and CLIP image encoder: also give "
                             f"{' and '.join(missing)}")
        check_base_files(cfg, base, clip_vision, name)
    return cfg


def load_pipeline(checkpoint: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                  clip_vision: str | os.PathLike | None = None, motion_module: str | os.PathLike | None = None,
                  config: M2HConfig | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, codec: VAECodec | None = None,
                  embedder: ImageEmbedder | None = None) -> M2HPipeline:
    """Assemble the pipeline from local files (`check_model_files` first: a bad file fails before any model).
    codec / embedder: a host's VAE / CLIP image encoder, used instead of the files' (checked against the model)."""
    cfg = check_model_files(checkpoint, base, clip_vision, motion_module, config, have_vae=codec is not None,
                            have_clip=embedder is not None)
    if codec is not None:
        check_codec(codec, cfg, "the connected VAE")
    if embedder is not None:
        check_embedder(embedder, cfg, "the connected CLIP vision model")
    encoders = None
    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
        if codec is None or embedder is None:
            encoders = embedded_encoders(checkpoint, cfg)
    else:
        unet2d, _ = load_sd15(base, cfg)
        motion = load_motion_adapter(motion_module, cfg) if motion_module and cfg.use_motion else None
        with quiet_empty_fp32_notice():
            model = M2HModel(cfg, unet=build_unet(cfg, unet2d, motion))
    if encoders is None:
        vae = None if codec is not None else load_sd15(base, cfg)[1].eval().requires_grad_(False)
        clip = None if embedder is not None else load_clip_vision(clip_vision, cfg)
        encoders = FrozenEncoders(vae, clip, cfg, codec=codec, embedder=embedder)
    elif codec is not None or embedder is not None:  # the host's part replaces the embedded one
        encoders = FrozenEncoders(None if codec is not None else encoders.vae,
                                  None if embedder is not None else encoders.clip, cfg, codec=codec, embedder=embedder)
    return M2HPipeline(model.eval(), encoders).to(device, dtype)
