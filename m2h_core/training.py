"""The M2HVideo trainer (paper Algorithm 1, Sec. III-E / IV-B), reusable by `train/train.py` and `m2h demo`.

Per optimizer step (x `grad_accum` micro-batches):
  v_h, p_h, x_id, p_id, M_c, M_id ← batch (half resolution for the first `half_res_fraction` of the steps)
  ε ~ N(0, I), t ~ U{0..T-1},  z_t = √ᾱ_t E(v_h) + √(1-ᾱ_t) ε                 (SD-1.5 scaled_linear schedule)
  drop ~ Bernoulli(cond_dropout)  — identity tokens f_pi and CLIP tokens dropped *together*, exactly the
                                    sampler's unconditional branch
  ε̂ = M2HModel(z_t, t, inputs, drop);  L_diff = ‖ε - ε̂‖²  (mean)
  L_mir = MirrorLoss(z_t, ε̂, t, v_h, M_id)  (one-step DDIM x0, face-crop decode, ᾱ_t weight; mirror_loss.py)
  Adam(β1=0, β2=0.99), lr 5e-5 on L_diff + L_mir.
Trainable: E_pose, E_id, H, A (to_k_id/to_v_id), the UNet incl. motion modules (or LoRA on its spatial
attention + conv_in + motion modules when `lora_rank` > 0). Frozen: VAE, CLIP, VGG (ArcFace is precomputed).

Checkpoints: `<output_dir>/checkpoints/step_XXXXXXXX/` holds `m2h.safetensors` (a normal M2H checkpoint, LoRA
merged, loadable with `load_checkpoint`), `training_state.safetensors` (optimizer moments, RNG states, LoRA
factors when used) and `training_state.json` (step, data position, optimizer hyper-parameters, lr scheduler,
config). The folder is written under a temporary name and renamed when complete, so a crash never leaves a
half checkpoint; only the newest `keep_last` are kept. No pickle anywhere. `resume="auto"` continues from the
newest one: model, optimizer, lr schedule, RNG states and data position are restored, so a resumed run follows
the same trajectory as an uninterrupted one.

Distributed / precision: HF accelerate (`accelerate launch --config_file ...` for DDP, FSDP or DeepSpeed,
`mixed_precision`), `gradient_checkpointing` on the UNet. Our own sampler shards data positions across ranks.
Under FSDP (1 or 2) the checkpoint still holds whole tensors: the model and Adam's moments are gathered to rank 0
with PyTorch's distributed state-dict API (`sharded_state.py`) and scattered back on resume, so an FSDP run can
resume without FSDP and vice versa (moments are stored keyed by parameter name under FSDP, by position otherwise,
and converted on load). Not under FSDP: LoRA (refused) and validation videos (skipped: the sampler calls
sub-modules whose parameters are sharded). Under DeepSpeed the optimizer is sharded by accelerate and its moments
are not saved (a resumed run restarts Adam's moments and says so). Each rank's RNG states are saved (keyed by
rank); a rank the saving run did not have is re-seeded from (seed, rank, step). fp16: the GradScaler state is
saved and restored, the lr schedule does not advance on steps the scaler skipped, and a non-finite loss skips its
step with a warning (the run aborts after `max_nonfinite_steps` such steps in a row).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import resource
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .checkpoint import atomic_save_file, load_checkpoint, save_checkpoint
from .config import M2HConfig, preset
from .dataset import ClipCacheDataset, ResumableSampler, SyntheticClipDataset
from .encoders import FrozenEncoders
from .mirror_loss import MirrorLoss
from .models.m2h import M2HModel
from .sharded_state import (decode_optimizer_state, encode_optimizer_state, gather_model_state, gather_optimizer_state,
                            rekey_optimizer_state, set_model_state, set_optimizer_state)

STATE_VERSION = 2  # 2: RNG states per rank, GradScaler state (version 1 still loads)
CKPT_PREFIX = "step_"


# ================================================================================================ config


@dataclass
class TrainConfig:
    """Everything a run needs; YAML keys have the same names (see train/configs/*.yaml)."""

    preset: str = "tiny"
    # data
    data: str | None = None  # prepare_data cache folder (its split.json 'train' split)
    synthetic_clips: int = 0  # > 0: train on this many in-memory synthetic clips instead
    synthetic_frames: int = 24
    num_frames: int = 8
    frame_stride: int = 4
    height: int | None = None  # default: the preset's (512 x 256 for sd15)
    width: int | None = None
    num_workers: int = 0
    # optimisation (paper IV-B)
    max_steps: int = 27500
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-5
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_nonfinite_steps: int = 5  # consecutive non-finite losses (each step skipped) before the run aborts
    progressive: bool = True  # half resolution for the first half_res_fraction of the steps
    half_res_fraction: float = 0.5
    cond_dropout: float = 0.1
    vae_sample: bool = True  # sample the VAE posterior for z_0 (False: its mode)
    # mirror loss (Eq. 5-6)
    mirror: bool = True
    alpha: float = 0.05
    beta: float = 0.001
    mirror_crop: bool = True
    mirror_margin: int = 2
    mirror_weighting: str = "alpha_bar"
    mirror_t_max: int | None = None
    # ablations (Table III)
    use_head_encoder: bool = True
    adapter_enabled: bool = True
    adapter_normalize: bool = True
    # weights
    random_init: bool = False
    base: str | None = None  # SD-1.5 single file or diffusers folder
    clip_vision: str | None = None
    motion_module: str | None = None
    vgg: str | None = None  # vgg16-397923af.pth / .safetensors; None: default model folders
    init_checkpoint: str | None = None  # start from an M2H checkpoint instead of the base UNet
    lora_rank: int = 0
    lora_alpha: float | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # no | fp16 | bf16
    # run
    output_dir: str = "outputs/train"
    seed: int = 0
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    tensorboard: bool = False
    validate_every: int = 0  # 0: off
    validation_steps: int = 20
    validation_guidance: float = 7.5
    validation_frames: int = 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; valid keys: {sorted(known)}")
        tc = cls(**d)
        tc.validate()
        return tc

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "num_frames", "frame_stride", "checkpoint_every",
                     "keep_last", "max_nonfinite_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("cond_dropout must be in [0, 1)")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if not self.random_init and self.init_checkpoint is None and self.base is None:
            raise ValueError("give base weights (base: SD-1.5 file, clip_vision, motion_module), an "
                             "init_checkpoint, or random_init: true (tiny preset / tests)")
        if not self.data and self.synthetic_clips < 1:
            raise ValueError("no training data: set data (a train/prepare_data.py cache) or synthetic_clips")

    def model_config(self) -> M2HConfig:
        cfg = preset(self.preset)
        if self.height:
            cfg.height = int(self.height)
        if self.width:
            cfg.width = int(self.width)
        cfg.num_frames = self.num_frames
        cfg.use_head_encoder = self.use_head_encoder
        cfg.adapter.enabled = self.adapter_enabled
        cfg.adapter.normalize = self.adapter_normalize
        return cfg


def checkpoint_model_config(tc: TrainConfig) -> M2HConfig:
    """The model config of `tc.init_checkpoint` (it, not the YAML's preset, is what gets trained and saved:
    prediction_type, sizes, scaling factors). Raises ValueError when the YAML's model switches or sizes say
    otherwise, rather than silently training something else than the config file describes."""
    from .checkpoint import read_config

    cfg = read_config(tc.init_checkpoint)
    yaml_cfg = tc.model_config()
    conflicts = []
    if cfg.name in ("tiny", "sd15") and cfg.name != tc.preset:
        conflicts.append(f"preset: {tc.preset} (checkpoint: {cfg.name})")
    for key, mine, theirs in (("use_head_encoder", yaml_cfg.use_head_encoder, cfg.use_head_encoder),
                              ("adapter_enabled", yaml_cfg.adapter.enabled, cfg.adapter.enabled),
                              ("adapter_normalize", yaml_cfg.adapter.normalize, cfg.adapter.normalize)):
        if mine != theirs:
            conflicts.append(f"{key}: {mine} (checkpoint: {theirs})")
    for key in ("height", "width"):
        if getattr(tc, key) and int(getattr(tc, key)) != getattr(cfg, key):
            conflicts.append(f"{key}: {getattr(tc, key)} (checkpoint: {getattr(cfg, key)})")
    if conflicts:
        raise ValueError(f"the training config contradicts init_checkpoint {tc.init_checkpoint}: "
                         f"{'; '.join(conflicts)}. The checkpoint's model config is used for training; set these "
                         "keys to the checkpoint's values (or leave height/width out)")
    return cfg


def parse_value(text: str) -> Any:
    """Command-line override values: YAML scalars (numbers, true/false, null) or plain strings."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_train_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
                      ) -> TrainConfig:
    """A YAML file (may be None) with `overrides` (key -> value) on top."""
    import yaml

    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config {p} does not exist (see train/configs/)")
        d = yaml.safe_load(p.read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{p} must hold a mapping of training options")
    d.update({k: v for k, v in (overrides or {}).items()})
    return TrainConfig.from_dict(d)


def size_multiple(cfg: M2HConfig) -> int:
    """Pixel sizes must be multiples of this (VAE downscale x UNet downsampling x 2 for the half phase)."""
    return cfg.vae.downscale * 2 ** (len(cfg.unet.block_out_channels) - 1)


# ================================================================================================ models


def make_train_scheduler():
    """The DDPM forward process of SD-1.5 (scaled_linear 0.00085..0.012, 1000 steps) — the sampler's schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False)


def build_components(tc: TrainConfig, cfg: M2HConfig) -> tuple[M2HModel, FrozenEncoders, torch.nn.Module | None]:
    """The trainable model, the frozen encoders and VGG from local files (never downloads)."""
    from .vgg import VGGFeatures

    need_vgg = tc.mirror and tc.beta > 0
    if tc.random_init and tc.base is None:
        torch.manual_seed(tc.seed)
        model = load_checkpoint(tc.init_checkpoint) if tc.init_checkpoint else M2HModel(cfg)
        encoders = FrozenEncoders.random(cfg, seed=tc.seed)
        vgg = (VGGFeatures.from_file(tc.vgg) if tc.vgg else VGGFeatures.random(tc.seed)) if need_vgg else None
        return model, encoders, vgg
    from .base_weights import load_clip_vision, load_motion_adapter, load_sd15
    from .models.unet import build_unet

    if tc.base is None:
        raise ValueError("--base (an SD-1.5 .safetensors or diffusers folder) is needed for the VAE")
    if tc.clip_vision is None:
        raise ValueError("--clip-vision (CLIP ViT-L/14 image encoder .safetensors) is needed")
    unet2d, vae = load_sd15(tc.base, cfg)
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


class _StateView:
    """What `save_checkpoint` needs (cfg, state_dict) for a merged state dict."""

    def __init__(self, cfg: M2HConfig, sd: dict[str, torch.Tensor]):
        self.cfg, self._sd = cfg, sd

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._sd


# ================================================================================================ state files


def _rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch CPU, its current CUDA device, numpy, python and the trainer's noise
    generator. Keys are relative ("torch", "generator", ...); `Trainer.save` prefixes them with the rank."""
    tensors = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["generator"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["numpy.keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _reseed_rng(seed: int, rank: int, step: int, generator: torch.Generator) -> None:
    """Fresh, distinct per-rank RNG states derived from (seed, rank, step) (resuming with another world size)."""
    s64 = int(np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)[0])
    torch.manual_seed(s64)  # also every CUDA device of this process
    generator.manual_seed(s64)
    np.random.seed(s64 % 2**32)
    random.seed(s64)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return encode_optimizer_state(opt.state_dict(), by_name=False)


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                           ) -> None:
    opt.load_state_dict(decode_optimizer_state(tensors, meta))


def _optimizer_state_keyed(tensors: dict[str, torch.Tensor], meta: dict[str, Any], names: list[str],
                           by_name: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Saved optimizer state -> keyed by parameter name (`sharded_state`) or by position (`optimizer_from_tensors`).

    Positions index `names` (the trainable parameters in optimizer order, the same in every run of a config)."""
    if (meta.get("keyed_by") == "name") == by_name:
        return tensors, meta
    osd = decode_optimizer_state(tensors, meta)
    mapping = dict(enumerate(names)) if by_name else {n: i for i, n in enumerate(names)}
    return encode_optimizer_state(rekey_optimizer_state(osd, mapping), by_name)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            continue
    return out


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
            and (p / "training_state.json").is_file() and (p / "m2h.safetensors").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


# ================================================================================================ trainer


@dataclass
class StepLog:
    step: int
    loss: float
    l_diff: float
    l_mir: float
    l_pix: float
    l_perc: float
    lr: float
    step_time: float
    mem_mb: float
    height: int
    width: int


@dataclass
class TrainResult:
    step: int
    output_dir: Path
    final_checkpoint: Path | None
    logs: list[StepLog] = field(default_factory=list)


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class Trainer:
    """Algorithm 1. Components can be injected (the tiny demo trains its own VAE; tests share models)."""

    def __init__(self, tc: TrainConfig, *, model: M2HModel | None = None, encoders: FrozenEncoders | None = None,
                 vgg: torch.nn.Module | None = None, dataset=None, accelerator=None,
                 log_fn: Callable[[str], None] | None = None):
        from accelerate import Accelerator

        self.tc = tc
        if model is not None:
            self.cfg = model.cfg
        elif tc.init_checkpoint:
            self.cfg = checkpoint_model_config(tc)
        else:
            self.cfg = tc.model_config()
        self._check_size(self.cfg)
        # gradient accumulation is done here (train_step), not by accelerate, so accelerate's backward does not
        # rescale the loss a second time
        self.accelerator = accelerator or Accelerator(mixed_precision=tc.mixed_precision)
        self.sharded = self.accelerator.distributed_type.value == "FSDP"
        if self.sharded and tc.lora_rank > 0:
            raise ValueError(
                "LoRA (lora_rank > 0) under FSDP is not supported: LoRA exists for small GPUs, where the full model "
                "is frozen and FSDP has little to shard; use LoRA on one GPU or DDP, or FSDP without LoRA")
        self.device = self.accelerator.device
        self.log = log_fn or (lambda s: self.accelerator.print(s))
        self.out = Path(tc.output_dir)
        if model is None or encoders is None or (vgg is None and tc.mirror and tc.beta > 0):
            m, e, v = build_components(tc, self.cfg)
            model, encoders, vgg = model or m, encoders or e, vgg if vgg is not None else v
        self.cfg = model.cfg  # what is trained (prediction_type) and written into checkpoints
        self._check_size(self.cfg)
        self.encoders = encoders
        wdtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(tc.mixed_precision, torch.float32)
        if self.device.type != "cuda":
            wdtype = torch.float32
        self.encoders.to(self.device, wdtype)
        self.vgg = vgg.to(self.device) if vgg is not None else None
        self.model = model.to(self.device).train()
        if tc.lora_rank > 0:
            apply_lora(self.model, tc.lora_rank, tc.lora_alpha)
        if tc.gradient_checkpointing and hasattr(self.model.unet, "enable_gradient_checkpointing"):
            self.model.unet.enable_gradient_checkpointing()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                          eps=tc.adam_eps, weight_decay=tc.weight_decay)
        warm = max(0, tc.warmup_steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        # the lr scheduler stays unprepared: accelerate would step it once per process
        self.ddp_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.noise_scheduler = make_train_scheduler()
        self.mirror = (MirrorLoss(self.vgg, tc.alpha, tc.beta, crop=tc.mirror_crop, margin=tc.mirror_margin,
                                  weighting=tc.mirror_weighting, t_max=tc.mirror_t_max)
                       if tc.mirror and (tc.alpha > 0 or tc.beta > 0) else None)
        self.dataset = dataset if dataset is not None else self._make_dataset()
        self.generator = torch.Generator().manual_seed(tc.seed * 1000 + self.accelerator.process_index)
        self.step = 0
        self.position = 0  # samples consumed, all ranks together
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.tb = None
        self.logs: list[StepLog] = []

    def _check_size(self, cfg: M2HConfig) -> None:
        mult = size_multiple(cfg) * (2 if self.tc.progressive else 1)
        for name, v in (("height", cfg.height), ("width", cfg.width)):
            if v % mult:
                raise ValueError(f"{name} {v} must be a multiple of {mult} for this model"
                                 f"{' with the half-resolution phase' if self.tc.progressive else ''}")

    # ---------------------------------------------------------------------------------------------- data
    def _make_dataset(self):
        tc = self.tc
        kw = dict(num_frames=tc.num_frames, stride=tc.frame_stride, height=self.cfg.height, width=self.cfg.width,
                  seed=tc.seed)
        if tc.data:
            return ClipCacheDataset(tc.data, "train", **kw)
        from .synthetic import generate_dataset

        clips = generate_dataset(tc.synthetic_clips, tc.seed, n_frames=tc.synthetic_frames,
                                 height=2 * self.cfg.height, width=2 * self.cfg.width)
        return SyntheticClipDataset(clips, **kw)

    def phase_scale(self, step: int) -> float:
        if self.tc.progressive and step < int(self.tc.half_res_fraction * self.tc.max_steps):
            return 0.5
        return 1.0

    def _loader(self, scale: float):
        from torch.utils.data import DataLoader

        self.dataset.scale = scale
        sampler = ResumableSampler(len(self.dataset), self.tc.seed, self.position, self.accelerator.process_index,
                                   self.accelerator.num_processes)
        loader = DataLoader(self.dataset, batch_size=self.tc.batch_size, sampler=sampler,
                            num_workers=self.tc.num_workers, drop_last=False,
                            persistent_workers=False, pin_memory=self.device.type == "cuda")
        return iter(loader)

    # ---------------------------------------------------------------------------------------------- one step
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """L_total for one micro-batch (Algorithm 1, lines 10-20). Returns loss terms; 'loss' has grad."""
        g = generator or self.generator
        dev = self.device
        frames = batch["frames"].to(dev)
        b = frames.shape[0]
        with torch.no_grad():
            inputs = self.encoders.make_inputs(frames, batch["clothing_masks"].to(dev), batch["pose_images"].to(dev),
                                               batch["identity_image"].to(dev), batch["identity_landmarks"].to(dev),
                                               batch["arcface"].to(dev))
            z0 = self.encoders.encode(frames, sample=self.tc.vae_sample, generator=g).float()
        inputs = inputs.to(dev, torch.float32)
        noise = torch.randn(z0.shape, generator=g).to(dev)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=g)
        drop = (torch.rand(b, generator=g) < self.tc.cond_dropout).to(dev)
        t = t.to(dev)
        z_t = self.noise_scheduler.add_noise(z0, noise, t)
        with self.accelerator.autocast():
            eps = self.ddp_model(z_t, t, inputs, drop)
        if self.cfg.prediction_type == "v_prediction":  # the tiny demo: v = √ᾱ ε - √(1-ᾱ) z_0; ε̂ for L_mir from v̂
            l_diff = F.mse_loss(eps.float(), self.noise_scheduler.get_velocity(z0, noise, t))
            ab = self.noise_scheduler.alphas_cumprod.to(dev)[t].view(-1, *([1] * (z_t.dim() - 1)))
            eps = ab.sqrt() * eps + (1 - ab).sqrt() * z_t
        else:
            l_diff = F.mse_loss(eps.float(), noise)
        out = {"l_diff": l_diff.detach()}
        if self.mirror is not None:
            with self.accelerator.autocast():
                mo = self.mirror(z_t, eps, t, frames, batch["face_masks"].to(dev), self.encoders,
                                 self.noise_scheduler)
            out.update(l_mir=mo.loss.detach(), l_pix=mo.pixel, l_perc=mo.perceptual)
            loss = l_diff + mo.loss.float()
        else:
            zero = torch.zeros((), device=dev)
            out.update(l_mir=zero, l_pix=zero, l_perc=zero)
            loss = l_diff
        out["loss"] = loss
        return out

    def train_step(self, batches: list[dict]) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches."""
        acc = self.accelerator
        sums: dict[str, float] = {}
        n = len(batches)
        for i, batch in enumerate(batches):
            ctx = acc.no_sync(self.ddp_model) if (i < n - 1 and acc.num_processes > 1) else nullcontext()
            with ctx:
                terms = self.compute_loss(batch)
                acc.backward(terms["loss"] / n)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / n
        # every rank takes the same decision (a NaN on one rank reaches the others through the gradients)
        finite = bool(acc.gather(torch.tensor([float(math.isfinite(sums["loss"]))], device=self.device)).min() > 0)
        if finite and self.tc.max_grad_norm and self.tc.max_grad_norm > 0:
            # the prepared model's parameters: under a sharded wrapper self.params are not what holds the grads
            norm = acc.clip_grad_norm_(list(self.ddp_model.parameters()), self.tc.max_grad_norm)
            if norm is not None and acc.scaler is None and not torch.isfinite(torch.as_tensor(norm)).all():
                finite = False  # without a GradScaler nothing else would keep NaN/inf out of the weights
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_a_row += 1
            self.skipped_steps += 1
            if self.nonfinite_in_a_row >= self.tc.max_nonfinite_steps:
                raise FloatingPointError(
                    f"loss or gradients non-finite ({sums['loss']}) for {self.nonfinite_in_a_row} steps in a row "
                    f"(up to step {self.step + 1}); lower the lr or use bf16 instead of fp16. The weights were "
                    "not updated by these steps and the last checkpoint is intact.")
            self.log(f"warning: non-finite loss/gradients ({sums['loss']}) at step {self.step + 1}: step skipped "
                     f"({self.nonfinite_in_a_row} in a row, {self.skipped_steps} in this run)")
            return sums
        self.nonfinite_in_a_row = 0
        self.optimizer.step()
        if not acc.optimizer_step_was_skipped:  # fp16: the GradScaler skipped an overflowing step
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _clean_stale_tmp(self) -> None:
        """Remove `.tmp-step_*` folders a crash during save() left behind (main process only)."""
        root = self.out / "checkpoints"
        if self.accelerator.is_main_process and root.is_dir():
            for stale in root.glob(f".tmp-{CKPT_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)

    def _gather_rng_states(self) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Every rank's RNG states, in rank order (collective: all ranks call it)."""
        from accelerate.utils import gather_object

        return list(gather_object([_rng_state(self.generator)]))

    def save(self) -> Path:
        """Write checkpoints/step_XXXXXXXX atomically (temp folder + rename) and prune old ones."""
        acc = self.accelerator
        acc.wait_for_everyone()
        root = self.out / "checkpoints"
        final = root / f"{CKPT_PREFIX}{self.step:08d}"
        unwrapped = acc.unwrap_model(self.ddp_model)
        inner_opt = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        full_sd = None
        sharded_opt: tuple[dict[str, torch.Tensor], dict[str, Any]] = ({}, {})
        if self.sharded:  # collective: every rank takes part, rank 0 receives whole tensors (sharded_state.py)
            full_sd = gather_model_state(self.ddp_model)
            sharded_opt = gather_optimizer_state(self.ddp_model, inner_opt)
        elif acc.distributed_type.value == "DEEPSPEED":
            full_sd = acc.get_state_dict(self.ddp_model)
        rng_states = self._gather_rng_states()
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            self._clean_stale_tmp()
            tmp = root / f".tmp-{final.name}-{os.getpid()}"
            tmp.mkdir()
            sd = merged_state_dict(unwrapped) if full_sd is None else full_sd
            meta = {"step": self.step, "data_position": self.position, "train_config": self.tc.to_dict()}
            save_checkpoint(_StateView(self.cfg, {k: v.float() for k, v in sd.items()}), tmp / "m2h.safetensors",
                            extra=meta)
            tensors: dict[str, torch.Tensor] = {}
            rng_meta = []
            for rank, (rt, rm) in enumerate(rng_states):  # one set per rank: ranks must not share noise
                tensors.update({f"rng.{rank}.{k}": v.detach().cpu().clone() for k, v in rt.items()})
                rng_meta.append(rm)
            opt_meta: dict[str, Any] = {}
            if self.sharded:
                ot, opt_meta = sharded_opt
                tensors.update(ot)
            elif acc.distributed_type.value in ("NO", "MULTI_GPU", "MULTI_CPU", "MULTI_NPU", "MULTI_XPU"):
                ot, opt_meta = optimizer_to_tensors(inner_opt)
                tensors.update(ot)
            if self.tc.lora_rank > 0:
                for name, p in unwrapped.named_parameters():
                    if p.requires_grad:
                        tensors[f"param.{name}"] = p.detach().float().cpu().contiguous()
            atomic_save_file(tensors, tmp / "training_state.safetensors", {"format": "m2hvideo-train-state"})
            state = {"version": STATE_VERSION, "step": self.step, "data_position": self.position,
                     "max_steps": self.tc.max_steps, "optimizer": opt_meta, "optimizer_saved": bool(opt_meta),
                     "lr_scheduler": _jsonable(self.lr_scheduler.state_dict()), "rng": rng_meta,
                     "param_names": self.param_names, "train_config": self.tc.to_dict(),
                     "world_size": acc.num_processes, "grad_scaler": self._scaler_state()}
            (tmp / "training_state.json").write_text(json.dumps(state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.out)[:-self.tc.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, ckpt_dir: str | os.PathLike) -> None:
        """Restore model, optimizer, lr schedule, RNG states, step and data position from a checkpoint folder."""
        d = Path(ckpt_dir)
        state_path = d / "training_state.json"
        if not state_path.is_file():
            raise FileNotFoundError(f"{d} is not a training checkpoint (no training_state.json)")
        state = json.loads(state_path.read_text())
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"{d}: training state version {state.get('version')}, expected {STATE_VERSION}")
        if state["param_names"] != self.param_names:
            raise ValueError(f"{d} was written for a different set of trainable parameters (other LoRA rank or "
                             "ablation switches?); resume with the same config")
        tensors = load_file(str(d / "training_state.safetensors"))
        unwrapped = self.accelerator.unwrap_model(self.ddp_model)
        if self.tc.lora_rank > 0:
            params = dict(unwrapped.named_parameters())
            with torch.no_grad():
                for name in self.param_names:
                    params[name].copy_(tensors[f"param.{name}"])
        else:
            sd = load_file(str(d / "m2h.safetensors"))  # on the CPU; load_state_dict copies to the device
            if self.sharded:
                set_model_state(self.ddp_model, sd)
            else:
                unwrapped.load_state_dict(sd)
        if state.get("optimizer_saved"):
            opt = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
            # saved by an FSDP run (keyed by parameter name) or not (keyed by position): convert to what this run
            # uses, so a run can resume with or without FSDP
            ot, om = _optimizer_state_keyed(tensors, state["optimizer"], self.param_names,
                                            by_name=self.sharded)
            if self.sharded:
                set_optimizer_state(self.ddp_model, opt, ot, om)
            else:
                # CPU tensors: torch moves the moments to their parameter's device and keeps `step` on the CPU
                # (a `step` on the GPU makes Adam sync with .item() for every parameter at every step)
                optimizer_from_tensors(opt, ot, om)
        else:
            self.log("note: this checkpoint has no optimizer moments (sharded run); Adam restarts its moments")
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self._load_scaler_state(state.get("grad_scaler"))
        self.step = int(state["step"])
        self.position = int(state["data_position"])
        self._load_rng(tensors, state)

    def _scaler_state(self) -> dict[str, Any] | None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None:
            return None
        return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}

    def _load_scaler_state(self, sd: dict[str, Any] | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and sd:
            scaler.load_state_dict(sd)
        elif scaler is not None:
            self.log("note: this checkpoint has no GradScaler state; the fp16 loss scale restarts")

    def _load_rng(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        rank = self.accelerator.process_index
        prefix = f"rng.{rank}."
        if prefix + "generator" in tensors:
            _set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                           state["rng"][rank], self.generator)
        elif "rng.generator" in tensors and rank == 0 and self.accelerator.num_processes == 1:  # version 1
            legacy = {"torch": tensors["rng.torch"], "generator": tensors["rng.generator"],
                      "numpy.keys": tensors["rng.numpy.keys"]}
            _set_rng_state(legacy, state["rng"], self.generator)
        else:  # more ranks than the run that saved it (or a version-1 multi-process state)
            _reseed_rng(self.tc.seed, rank, self.step, self.generator)
            self.log(f"note: no saved RNG state for rank {rank}; re-seeded from (seed, rank, step)")

    def resume(self, spec: str | None) -> bool:
        """spec: None (fresh), 'auto' (newest checkpoint in output_dir, if any) or a checkpoint folder."""
        if not spec:
            return False
        if spec == "auto":
            ckpts = list_checkpoints(self.out)
            if not ckpts:
                self.log(f"no checkpoint in {self.out / 'checkpoints'}: starting from step 0")
                return False
            spec = str(ckpts[-1])
        self.load(spec)
        self.log(f"resumed from {spec} at step {self.step}")
        return True

    # ---------------------------------------------------------------------------------------------- validation
    def validate(self) -> Path | None:
        """Generate one validation video with `sample_video` (target | generated side by side)."""
        from .sampler import SamplerSettings, sample_video
        from .video_io import write_video

        acc = self.accelerator
        if self.sharded:
            if not getattr(self, "_said_no_fsdp_validation", False):
                self.log("note: no validation videos under FSDP (the sampler calls sharded sub-modules); render "
                         "them from a checkpoint with `m2h generate` or train/evaluate.py")
                self._said_no_fsdp_validation = True
            return None
        if not acc.is_main_process:
            return None
        ds = self.val_dataset if getattr(self, "val_dataset", None) is not None else self.dataset
        old = ds.scale
        ds.scale = 1.0
        item = ds[(0, 0)]
        ds.scale = old
        model = acc.unwrap_model(self.ddp_model)
        model.eval()
        try:
            res = sample_video(model, self.encoders, item["frames"], item["clothing_masks"], item["pose_images"],
                               item["identity_image"], item["identity_landmarks"], item["arcface"],
                               SamplerSettings(steps=self.tc.validation_steps,
                                               guidance_scale=self.tc.validation_guidance, seed=self.tc.seed,
                                               context_frames=(ctx := min(self.tc.num_frames, item["frames"].shape[0])),
                                               context_overlap=min(4, ctx // 2)))
        finally:
            model.train()
        both = torch.cat([item["frames"], res.frames], dim=-1)
        video = (both.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        path = self.out / "validation" / f"step_{self.step:08d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video, 8)
        return path

    # ---------------------------------------------------------------------------------------------- loop
    def _log_step(self, terms: dict[str, float], dt: float, h: int, w: int) -> StepLog:
        rec = StepLog(self.step, terms["loss"], terms["l_diff"], terms["l_mir"], terms["l_pix"], terms["l_perc"],
                      self.lr_scheduler.get_last_lr()[0], dt, _memory_mb(self.device), h, w)
        self.logs.append(rec)
        if self.accelerator.is_main_process:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            if self.tb is not None:
                for k in ("loss", "l_diff", "l_mir", "l_pix", "l_perc", "lr", "step_time", "mem_mb"):
                    self.tb.add_scalar(f"train/{k}", getattr(rec, k), self.step)
        return rec

    def run(self, resume: str | None = None, stop_after: int | None = None) -> TrainResult:
        """Train to `max_steps` (or `stop_after` more steps). Checkpoints every `checkpoint_every` and at the end."""
        from tqdm.auto import tqdm

        tc, acc = self.tc, self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(tc.to_dict(), indent=1))
            self._clean_stale_tmp()
        self.resume(resume)
        if tc.tensorboard and acc.is_main_process and self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                self.log("tensorboard is not installed: logging to log.jsonl only")
        end = tc.max_steps if stop_after is None else min(tc.max_steps, self.step + stop_after)
        bar = tqdm(total=end, initial=self.step, disable=not acc.is_main_process, desc="train", dynamic_ncols=True)
        per_step = tc.batch_size * tc.grad_accum * acc.num_processes
        scale, it = None, None
        last_saved = None
        while self.step < end:
            s = self.phase_scale(self.step)
            if s != scale:
                scale, it = s, self._loader(s)
            t0 = time.perf_counter()
            batches = [next(it) for _ in range(tc.grad_accum)]
            terms = self.train_step(batches)
            self.step += 1
            self.position += per_step
            dt = time.perf_counter() - t0
            h, w = batches[0]["frames"].shape[-2:]
            rec = self._log_step(terms, dt, h, w)
            bar.update(1)
            if self.step % max(1, tc.log_every) == 0 or self.step == end:
                bar.set_postfix(loss=f"{rec.loss:.4f}", diff=f"{rec.l_diff:.4f}", mir=f"{rec.l_mir:.4f}",
                                s=f"{dt:.2f}", mem=f"{rec.mem_mb:.0f}M", res=f"{h}x{w}")
            if self.step % tc.checkpoint_every == 0 or self.step == tc.max_steps:
                last_saved = self.save()
            if tc.validate_every and self.step % tc.validate_every == 0:
                try:
                    p = self.validate()
                    if p is not None:
                        self.log(f"validation video: {p}")
                except ImportError as e:  # sampler not available in a stripped install
                    self.log(f"validation skipped: {e}")
        bar.close()
        final = None
        if self.step >= tc.max_steps and acc.is_main_process:
            final = self.out / "m2h_final.safetensors"
            src = last_saved or (list_checkpoints(self.out)[-1] if list_checkpoints(self.out) else None)
            if src is not None:
                tmp = final.with_name(f".{final.name}.tmp")
                shutil.copyfile(src / "m2h.safetensors", tmp)
                os.replace(tmp, final)
        if self.tb is not None:
            self.tb.flush()
        return TrainResult(self.step, self.out, final, self.logs)


def train(tc: TrainConfig, resume: str | None = "auto", **components) -> TrainResult:
    """Convenience wrapper: build a Trainer (components may be injected) and run it."""
    return Trainer(tc, **components).run(resume=resume)
