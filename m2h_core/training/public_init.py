"""Warm start from public weights (`train.py --init public`): which M2H parameters start from which public file.

No public M2H weights exist; these are the parts of public SD-1.5 add-ons that do the same job as an M2H part:
A's identity K/V <- IP-Adapter FaceID's `to_k_ip` / `to_v_ip`; H's ArcFace path <- FaceID's projection (a
least-squares linear fit of its MLP, H starting as a pass-through); E_pose's conv stack <- ControlNet OpenPose's hint
encoder (when the widths match); the motion modules <- AnimateDiff; the UNet's 8-channel input <- an SD-1.5
inpainting UNet's 9. FaceID's LoRA is not used (the whole UNet is fine-tuned, and its attn2 keys carry CLIP clothing
tokens, not text). The table of mappings and why: docs/REPRODUCE.md, "Warm start from public weights".

`apply_public_init` returns one line per mapping ("target <- source (how)"); the preflight prints them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: ControlNet 1.1's hint-encoder widths (the stride-1 conv of each stage).
CONTROLNET_HINT_CHANNELS = (16, 32, 96, 256)
#: Unit-norm ArcFace embeddings the linear fit of FaceID's MLP is computed on (insightface's normed_embedding).
FIT_SAMPLES = 8192


@dataclass(frozen=True)
class InitLine:
    target: str
    source: str
    how: str

    def __str__(self) -> str:
        return f"{self.target} <- {self.source} ({self.how})"


# -- the 8-channel input ------------------------------------------------------------------------------------------


def narrow_inpainting_conv_in(unet2d: nn.Module, latent_channels: int) -> bool:
    """An inpainting UNet's conv_in (2c + 1 inputs: z_t, mask, masked-image latents) -> 2c inputs (z_t, clothing
    latents), in place. False (nothing done) when conv_in does not have 2c + 1 inputs."""
    old = unet2d.conv_in
    c = latent_channels
    if old.in_channels != 2 * c + 1:
        return False
    new = nn.Conv2d(2 * c, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.copy_(torch.cat([old.weight[:, :c], old.weight[:, c + 1:]], dim=1))
        new.bias.copy_(old.bias)
    unet2d.conv_in = new
    unet2d.register_to_config(in_channels=2 * c)
    return True


# -- adapter A <- IP-Adapter ---------------------------------------------------------------------------------------


def init_adapter_from_ip(unet: nn.Module, ip) -> int:
    """A's to_k_id / to_v_id <- the IP-Adapter's to_k_ip / to_v_ip (`IPAdapterWeights.ip_kv`, keyed by the
    diffusers name of each spatial attn2). Returns the layers set; raises when a layer has no A or the shapes
    differ."""
    from ..inference.zero_shot import load_ip_kv  # the zero-shot mode's copy: the same mapping, one function

    processors = {name: unet.get_submodule(name).processor for name in ip.ip_kv}
    for name, proc in processors.items():
        if not hasattr(proc, "to_k_id"):
            raise ValueError(f"{name} has no identity projections (adapter A off?): nothing to warm-start from the "
                             "IP-Adapter")
    load_ip_kv(processors, ip.ip_kv)
    return len(processors)


# -- H <- FaceID's projection --------------------------------------------------------------------------------------


def faceid_mlp(proj: dict[str, torch.Tensor]):
    """FaceID's ArcFace projection as a function x (N, 512) -> pre-norm tokens (N, T*D), and its LayerNorm's
    (weight, bias); from `IPAdapterWeights.image_proj` (keys proj.0.*, proj.2.*, norm.*)."""
    need = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
    missing = [k for k in need if k not in proj]
    if missing:
        raise ValueError(f"the IP-Adapter has no FaceID ArcFace projection (missing image_proj {missing}): use "
                         "ip-adapter-faceid_sd15.bin or a FaceID-Plus(V2) file")
    w0, b0, w2, b2 = (proj[k].double() for k in need[:4])

    def mlp(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x.double() @ w0.T + b0) @ w2.T + b2

    return mlp, (proj["norm.weight"], proj["norm.bias"])


def linear_fit(fn, in_dim: int, samples: int = FIT_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Least-squares (W, b) with x @ W.T + b ≈ fn(x) on unit-norm x, and the fit's R² on fresh samples."""
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> torch.Tensor:
        x = torch.randn(n, in_dim, generator=g, dtype=torch.float64)
        return x / x.norm(dim=1, keepdim=True)

    x = draw(samples)
    y = fn(x)
    xa = torch.cat([x, torch.ones(samples, 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(xa, y).solution  # (in+1, out)
    w, b = sol[:-1].T, sol[-1]
    xt = draw(samples // 4)
    yt = fn(xt)
    r2 = 1.0 - float((xt @ w.T + b - yt).square().sum() / (yt - yt.mean(0)).square().sum())
    return w, b, r2


def init_head_from_faceid(head: nn.Module, proj: dict[str, torch.Tensor]) -> float:
    """H's ArcFace path <- FaceID's projection. FaceID's is a 2-layer MLP (Linear, GELU, Linear), H's `arc_in` one
    Linear: it gets the MLP's least-squares fit on unit-norm ArcFace embeddings. So that the tokens reach A as
    FaceID's reach its K/V, H starts as a pass-through: `arc_norm` plain, `norm_out` = FaceID's LayerNorm, `proj_out`
    = identity, the residual branches of its 4 layers (`to_out`, the FFN's last Linear) zero - the pose keys act
    from step 1 on. Returns the fit's R²."""
    mlp, (nw, nb) = faceid_mlp(proj)
    arc_in = head.arc_in
    out_dim = int(proj["proj.2.weight"].shape[0])
    if arc_in.in_features != proj["proj.0.weight"].shape[1] or arc_in.out_features != out_dim:
        raise ValueError(f"FaceID's projection maps {proj['proj.0.weight'].shape[1]} -> {out_dim}, H's arc_in "
                         f"{arc_in.in_features} -> {arc_in.out_features} (arcface_tokens x dim)")
    if head.norm_out.normalized_shape != tuple(nw.shape):
        raise ValueError(f"FaceID's tokens are {nw.shape[0]} wide, H's {head.norm_out.normalized_shape[0]}")
    w, b, r2 = linear_fit(mlp, arc_in.in_features)
    dt = arc_in.weight.dtype
    with torch.no_grad():
        arc_in.weight.copy_(w.to(dt))
        arc_in.bias.copy_(b.to(dt))
        nn.init.ones_(head.arc_norm.weight)
        nn.init.zeros_(head.arc_norm.bias)
        head.norm_out.weight.copy_(nw.to(dt))
        head.norm_out.bias.copy_(nb.to(dt))
        if head.proj_out.weight.shape[0] == head.proj_out.weight.shape[1]:
            head.proj_out.weight.copy_(torch.eye(head.proj_out.weight.shape[0], dtype=dt))
            head.proj_out.bias.zero_()
        for layer in head.layers:  # zero residual branches: H passes its queries through at step 0
            for lin in (layer.to_out, layer.ff[-1]):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
    return r2


# -- E_pose <- ControlNet's hint encoder ---------------------------------------------------------------------------


def controlnet_hint_convs(sd: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of the hint encoder's convs before its last (the one to the UNet's width), in order, from a
    ControlNet state dict in LDM (`control_model.input_hint_block.N`, with or without the prefix) or diffusers
    (`controlnet_cond_embedding.conv_in / blocks.i`) layout."""
    def indices(pattern: str) -> list[int]:
        return sorted(int(m[1]) for m in (re.fullmatch(pattern, k) for k in sd) if m)

    if "controlnet_cond_embedding.conv_in.weight" in sd:
        names = ["controlnet_cond_embedding.conv_in"] + [
            f"controlnet_cond_embedding.blocks.{i}"
            for i in indices(r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")]
    else:
        idx = indices(r"(?:control_model\.)?input_hint_block\.(\d+)\.weight")
        if not idx:
            raise ValueError("no ControlNet hint encoder (input_hint_block / controlnet_cond_embedding) in the file")
        prefix = "control_model." if f"control_model.input_hint_block.{idx[0]}.weight" in sd else ""
        names = [f"{prefix}input_hint_block.{i}" for i in idx[:-1]]  # the last conv maps to the UNet's width
    return [(sd[f"{n}.weight"], sd[f"{n}.bias"]) for n in names]


def init_pose_encoder_from_controlnet(pose_encoder: nn.Module, convs: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """E_pose's conv stack <- the hint encoder's convs (same order, same strides: `ConvStack` mirrors it), the first
    rescaled for E_pose's [-1, 1] input (W/2, b + ΣW/2: exact except the outermost 3 cells of the 1/8-resolution
    features, where the zero padding is black for ControlNet and grey for E_pose). The hint encoder's last conv (to
    the UNet's 320 features) has no counterpart: E_pose's `to_input` stays zero. Returns the convs set; raises when
    the widths differ."""
    ours = [m for m in pose_encoder.stack.net if isinstance(m, nn.Conv2d)]
    theirs = [tuple(w.shape) for w, _ in convs]
    if [tuple(m.weight.shape) for m in ours] != theirs:
        widths = tuple(m.out_channels for m in ours[0::2])
        hint = tuple(s[0] for s in theirs[0::2])
        raise ValueError(f"E_pose's widths {widths} differ from the ControlNet hint encoder's {hint}: set "
                         f"pose_channels: {list(hint)} to warm-start E_pose from it")
    with torch.no_grad():
        for i, (m, (w, b)) in enumerate(zip(ours, convs)):
            w, b = w.to(m.weight.dtype), b.to(m.bias.dtype)
            if i == 0:  # conv(x) with x = (y + 1) / 2, y in [-1, 1]: W/2 · y + (b + ΣW/2)
                b = b + w.sum(dim=(1, 2, 3)) / 2
                w = w / 2
            m.weight.copy_(w)
            m.bias.copy_(b)
    return len(ours)


# -- all together --------------------------------------------------------------------------------------------------


def apply_public_init(model: nn.Module, *, ip_adapter: str | os.PathLike | None = None,
                      controlnet: str | os.PathLike | None = None, motion_module: str | os.PathLike | None = None,
                      inpainting_base: str | os.PathLike | None = None) -> list[InitLine]:
    """Initialise an M2HModel's parts from the public files given (the module docstring); returns what came from where.
    `motion_module` / `inpainting_base` were loaded by the model's builder and are only reported here."""
    from ..public_weights import load_ip_adapter, read_tensors

    lines: list[InitLine] = []
    if motion_module:
        lines.append(InitLine("UNet motion modules", Path(motion_module).name, "AnimateDiff, loaded as is"))
    if inpainting_base:
        lines.append(InitLine("UNet conv_in (8 channels)", Path(inpainting_base).name,
                              "inpainting conv_in: z_t and masked-image channels, mask channel dropped"))
    if ip_adapter:
        name = Path(ip_adapter).name
        ip = load_ip_adapter(ip_adapter, model.unet)
        if model.cfg.adapter.enabled:
            n = init_adapter_from_ip(model.unet, ip)
            lines.append(InitLine(f"A to_k_id / to_v_id ({n} attn2 layers)", name, f"{ip.variant} to_k_ip / to_v_ip"))
        else:
            lines.append(InitLine("A to_k_id / to_v_id", name, "skipped: adapter A is off"))
        if {"proj.0.weight", "proj.2.weight", "norm.weight"} <= set(ip.image_proj):
            r2 = init_head_from_faceid(model.head_encoder, ip.image_proj)
            lines.append(InitLine("H arc_in, norm_out, proj_out (+ zero residual branches)", name,
                                  f"linear fit of FaceID's ArcFace MLP, R²={r2:.4f}; H a pass-through at step 0"))
        else:
            lines.append(InitLine("H ArcFace projection", name, f"skipped: a {ip.variant} file has no FaceID MLP"))
    if controlnet:
        name = Path(controlnet).name
        try:
            n = init_pose_encoder_from_controlnet(model.pose_encoder, controlnet_hint_convs(read_tensors(controlnet)))
            lines.append(InitLine(f"E_pose conv stack ({n} convs)", name,
                                  "ControlNet hint encoder, first conv rescaled for [-1, 1] poses"))
        except ValueError as e:
            lines.append(InitLine("E_pose", name, f"skipped: {e}"))
    return lines


def is_inpainting_base(path: str | os.PathLike | None, latent_channels: int = 4) -> bool:
    """Whether an SD-1.5 single file has an inpainting UNet (2c + 1 input channels); headers only."""
    if not path or not Path(path).is_file():
        return False
    from ..public_weights import read_header

    w = read_header(path).get("model.diffusion_model.input_blocks.0.0.weight")
    return w is not None and w.shape[1] == 2 * latent_channels + 1


def init_from_config(model: nn.Module, tc) -> list[InitLine]:
    """`apply_public_init` with a TrainConfig's files when `tc.init` is "public"; otherwise only the line of an
    inpainting base (`build_components` narrows its input whatever `init` says)."""
    inpaint = tc.base if is_inpainting_base(tc.base, model.cfg.unet.latent_channels) else None
    if tc.init != "public":
        return apply_public_init(model, inpainting_base=inpaint) if inpaint else []
    return apply_public_init(model, ip_adapter=tc.ip_adapter, controlnet=tc.controlnet,
                             motion_module=tc.motion_module, inpainting_base=inpaint)
