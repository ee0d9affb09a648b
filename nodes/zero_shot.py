"""The zero-shot nodes' logic without ComfyUI (tested under pytest): file names -> PublicFiles, the sampler
node's inputs fitted to the working size, ComfyUI CONDITIONING -> the model's [positive; negative] text tokens."""

from __future__ import annotations

from typing import Any

import torch

from m2h_core.inference.inputs import VideoInputs, fit_masks
from m2h_core.inference.zero_shot_loader import PublicFiles

from . import logic


def public_files(resolve, base: str, motion: str, controlnet: str, ip_adapter: str, ip_lora: str, clip_vision: str,
                 lora_strength: float, none: str = "none", auto: str = "auto", lora_names=()) -> PublicFiles:
    """The loader node's names as paths; resolve(kind, name) -> path (files.resolve in ComfyUI). ip_lora 'auto' =
    the LoRA inside the IP-Adapter file, or for a FaceID file without one its LoRA found by name among
    `lora_names` (models/loras, as IPAdapter_plus pairs them); 'none' = no LoRA (strength 0)."""
    from m2h_core.inference.zero_shot_loader import paired_lora_name

    def opt(kind, name):
        return None if name in (none, auto, "", None) else resolve(kind, name)

    ip_path = resolve("ipadapter", ip_adapter)
    lora = opt("loras", ip_lora)
    if ip_lora == auto and (want := paired_lora_name(ip_path)) is not None:
        found = next((n for n in lora_names if n.replace("\\", "/").rsplit("/", 1)[-1].lower() == want), None)
        lora = resolve("loras", found) if found else None  # not found: the header check names the file to get
    return PublicFiles(base=resolve("base", base), ip_adapter=ip_path, motion=opt("animatediff_models", motion),
                       controlnet=opt("controlnet", controlnet), ip_lora=lora,
                       clip_vision=opt("clip_vision", clip_vision),
                       lora_strength=0.0 if ip_lora == none else float(lora_strength))


def prepare_inputs(frames: torch.Tensor, regen_mask: torch.Tensor, clothing_mask: torch.Tensor,
                   pose_images: torch.Tensor, height: int, width: int, resize: str = "crop_to_model"
                   ) -> tuple[VideoInputs, torch.Tensor]:
    """(VideoInputs at the working size, regen mask (N, h, w) fitted the same way: centre crop + resize)."""
    video = logic.prepare_sampler_inputs(frames, clothing_mask, pose_images, height, width, resize)
    regen = logic.as_mask_batch(regen_mask, "regen_mask")
    if regen.shape[0] not in (1, video.num_frames):
        raise logic.InputError(f"regen_mask has {regen.shape[0]} masks for {video.num_frames} frames: give one "
                                  "per frame, or one for all")
    fitted, _ = fit_masks(regen.float().numpy(), video.height, video.width)
    return video, torch.from_numpy(fitted).float()


def conditioning_tensor(cond: Any) -> torch.Tensor | None:
    """ComfyUI CONDITIONING ([[tokens (1, T, D), {...}], ...]) -> its first tokens tensor (1, T, D), or None."""
    if cond is None:
        return None
    try:
        t = cond[0][0]
    except (TypeError, IndexError, KeyError):
        raise logic.InputError("positive / negative must be CONDITIONING from CLIP Text Encode") from None
    if not isinstance(t, torch.Tensor) or t.ndim != 3:
        raise logic.InputError("positive / negative must be CONDITIONING from CLIP Text Encode")
    return t[:1]


def prompt_tokens(positive: Any, negative: Any, default: torch.Tensor | None, width: int) -> torch.Tensor | None:
    """[positive; negative] (2, T, D) from CONDITIONING, each side defaulting to the model's empty prompt; None when
    neither is connected (the model's own). Different lengths are padded with each side's last token (EOS/pad)."""
    pos, neg = conditioning_tensor(positive), conditioning_tensor(negative)
    if pos is None and neg is None:
        return None
    if default is None and (pos is None or neg is None):
        raise logic.InputError("the base checkpoint has no text encoder: connect both positive and negative")
    pos = default[:1] if pos is None else pos
    neg = default[1:2] if neg is None else neg
    for t in (pos, neg):
        if t.shape[-1] != width:
            raise logic.InputError(f"the CONDITIONING is {t.shape[-1]}-wide; this SD-1.5 model needs {width} "
                                      "(use the base checkpoint's own CLIP in CLIP Text Encode)")
    n = max(pos.shape[1], neg.shape[1])
    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t[:, -1:].expand(1, n - t.shape[1], -1)], dim=1)

    return torch.cat([pad(pos.float().cpu()), pad(neg.float().cpu())])
