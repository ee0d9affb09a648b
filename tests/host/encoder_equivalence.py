#!/usr/bin/env python
"""ComfyUI's VAE and CLIP_VISION through the pack's encoder interface vs the pack's own encoders, same weights.

    <ComfyUI python> tests/host/encoder_equivalence.py --comfyui DIR --vae FILE --clip-vision FILE

Run with ComfyUI's Python (it imports comfy.*); tests/host/run_host_test.py runs it on the files it writes.
Loads each file twice: with ComfyUI's loaders (comfy.sd.VAE, comfy.clip_vision.load) wrapped by
nodes/comfy_encoders.py, and with m2h_core's (diffusers AutoencoderKL, transformers CLIP); encodes and decodes the
same random frames through `FrozenEncoders` both ways and prints one JSON line of max / mean abs differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True, type=Path)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--clip-vision", required=True)
    a = ap.parse_args()
    sys.path[:0] = [str(a.comfyui), str(ROOT)]
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # as the host test's server (--cpu); read when comfy.model_management is imported
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils

    from m2h_core.base_weights import load_clip_vision
    from m2h_core.config import VAEConfig, sd15, tiny
    from m2h_core.inference.encoders import FrozenEncoders
    import importlib.util  # ComfyUI's own nodes.py shadows the pack's nodes/ package here: load the file

    spec = importlib.util.spec_from_file_location("m2h_comfy_encoders", ROOT / "nodes" / "comfy_encoders.py")
    adapters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapters)
    ComfyClipVision, ComfyVAE = adapters.ComfyClipVision, adapters.ComfyVAE

    cfg = dataclasses.replace(tiny(), unet=dataclasses.replace(tiny().unet, cross_attention_dim=768), vae=VAEConfig(),
                              clip=sd15().clip)
    vae = AutoencoderKL(**cfg.vae.vae_kwargs())
    vae.load_state_dict(load_file(a.vae))
    ours = FrozenEncoders(vae.eval(), load_clip_vision(a.clip_vision, cfg).float(), cfg)
    theirs = FrozenEncoders(None, None, cfg, codec=ComfyVAE(comfy.sd.VAE(sd=comfy.utils.load_torch_file(a.vae))),
                            embedder=ComfyClipVision(comfy.clip_vision.load(a.clip_vision)))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 32, generator=g)
    with torch.no_grad():
        z1, z2 = ours.encode(x), theirs.encode(x)
        d1, d2 = ours.decode(z1), theirs.decode(z1)
        c1, c2 = ours.clip_tokens(x), theirs.clip_tokens(x)
    rel = lambda p, q: float((p - q).abs().max() / q.abs().max().clamp_min(1e-12))  # noqa: E731
    print(json.dumps({
        "latent_max_abs": float((z1 - z2).abs().max()), "latent_rel": rel(z2, z1),
        "decode_max_abs": float((d1 - d2).abs().max()), "decode_mean_abs": float((d1 - d2).abs().mean()),
        "clip_rel": rel(c2, c1), "clip_cosine_min": float(torch.nn.functional.cosine_similarity(
            c1.flatten(1), c2.flatten(1)).min()),
        "latent_shape": list(z1.shape), "clip_shape": list(c1.shape)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
