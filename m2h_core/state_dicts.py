"""What the weight-file loaders share (`base_weights`, `public_weights`): nested state dicts flattened, CLIP widths."""

from __future__ import annotations

import torch

# CLIP vision widths (projection / hidden size) -> the model they belong to
CLIP_WIDTHS = {768: "ViT-B", 1024: "ViT-L/14", 1280: "ViT-H/14", 1408: "ViT-g/14", 1664: "ViT-bigG/14"}


def flatten_state(obj: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts of tensors (IP-Adapter .bin: image_proj / ip_adapter) as one flat "a.b.c" state dict."""
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, dict):
            out.update(flatten_state(v, f"{prefix}{k}."))
    return out
