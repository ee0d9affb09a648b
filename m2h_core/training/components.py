"""What a training run trains with: the noise schedule, the model and frozen encoders from local files, LoRA."""

from __future__ import annotations

import warnings

import torch

from ..checkpoint import load_checkpoint
from ..config import M2HConfig
from ..inference.encoders import FrozenEncoders
from ..models.m2h import M2HModel
from .config import TrainConfig


def make_train_scheduler():
    """The DDPM forward process of SD-1.5 (scaled_linear 0.00085..0.012, 1000 steps) — the sampler's schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False)


def build_components(tc: TrainConfig, cfg: M2HConfig) -> tuple[M2HModel, FrozenEncoders, torch.nn.Module | None]:
    """The trainable model, the frozen encoders and VGG from local files (never downloads)."""
    from ..vgg import VGGFeatures

    need_vgg = tc.mirror and tc.beta > 0
    if tc.random_init and tc.base is None:
        torch.manual_seed(tc.seed)
        model = load_checkpoint(tc.init_checkpoint) if tc.init_checkpoint else M2HModel(cfg)
        encoders = FrozenEncoders.random(cfg, seed=tc.seed)
        vgg = (VGGFeatures.from_file(tc.vgg) if tc.vgg else VGGFeatures.random(tc.seed)) if need_vgg else None
        return model, encoders, vgg
    from ..base_weights import load_clip_vision, load_motion_adapter, load_sd15
    from ..models.unet import build_unet
    from .public_init import narrow_inpainting_conv_in

    if tc.base is None:
        raise ValueError("--base (an SD-1.5 .safetensors or diffusers folder) is needed for the VAE")
    if tc.clip_vision is None:
        raise ValueError("--clip-vision (CLIP ViT-L/14 image encoder .safetensors) is needed")
    unet2d, vae = load_sd15(tc.base, cfg)
    narrow_inpainting_conv_in(unet2d, cfg.unet.latent_channels)  # an inpainting base: 9 -> 8 input channels
    clip = load_clip_vision(tc.clip_vision, cfg)
    encoders = FrozenEncoders(vae.eval().requires_grad_(False), clip.eval().requires_grad_(False), cfg)
    if tc.init_checkpoint:
        model = load_checkpoint(tc.init_checkpoint, expect_base=cfg.base_model)
    else:
        motion = None
        if cfg.use_motion:
            if tc.motion_module is None:
                warnings.warn("no --motion-module: the temporal layers start from random (zero-output) weights; "
                              "AnimateDiff mm_sd_v15_v2.safetensors is recommended")
            else:
                motion = load_motion_adapter(tc.motion_module, cfg)
        model = M2HModel(cfg, build_unet(cfg, unet2d, motion))
    vgg = VGGFeatures.from_file(tc.vgg) if need_vgg else None
    return model, encoders, vgg


def _checkpointed(cls: type) -> type:
    """A subclass of `cls` whose forward runs under torch.utils.checkpoint (non-reentrant) when grad is on."""
    from torch.utils.checkpoint import checkpoint

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(cls.forward, self, *args, use_reentrant=False, **kwargs)
        return cls.forward(self, *args, **kwargs)

    return type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "_m2h_checkpointed": True})


def enable_gradient_checkpointing(unet: torch.nn.Module) -> int:
    """Gradient checkpointing for the whole UNet: diffusers' own (resnets, the spatial transformer blocks) plus
    the AnimateDiff motion modules, which diffusers' UNetMotionModel calls outside any checkpoint - counted on
    the meta device (`preflight.count_step`), they keep 4.7 of the 5.9 GiB of activations an 8-frame 512x256
    SD-1.5 clip saves in bf16 with diffusers' checkpointing alone. Each motion module's class becomes a subclass
    whose forward is re-run in the backward; names and state dicts are unchanged. Returns how many modules."""
    if hasattr(unet, "enable_gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    classes: dict[type, type] = {}
    n = 0
    for name, module in unet.named_modules():
        if name.split(".")[-2:-1] != ["motion_modules"] or getattr(module, "_m2h_checkpointed", False):
            continue
        cls = type(module)
        module.__class__ = classes.setdefault(cls, _checkpointed(cls))
        n += 1
    return n


LORA_TARGETS = r".*\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"


def apply_lora(model: M2HModel, rank: int, alpha: float | None = None) -> None:
    """LoRA (peft) on the UNet's spatial attention projections; freezes the rest of the 2-D UNet except conv_in
    and the adapter's identity projections. Motion modules, E_pose, E_id and H stay fully trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS, init_lora_weights="gaussian")
    inject_adapter_in_model(cfg, model.unet)
    for name, p in model.unet.named_parameters():
        p.requires_grad_("lora_" in name or "motion_modules" in name or name.startswith("conv_in.")
                         or "to_k_id" in name or "to_v_id" in name)


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with LoRA factors merged into their base weights (plain M2H key names)."""
    sd = dict(model.state_dict())
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return sd
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            base_w = sd.pop(f"{name}.base_layer.weight")
            delta = sum(mod.get_delta_weight(a) for a in mod.active_adapters)
            sd[f"{name}.weight"] = (base_w + delta.to(base_w.dtype)).detach()
            if f"{name}.base_layer.bias" in sd:
                sd[f"{name}.bias"] = sd.pop(f"{name}.base_layer.bias")
    return {k: v for k, v in sd.items() if ".lora_" not in k}


