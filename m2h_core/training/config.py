"""Training configuration (paper Sec. IV-B defaults): `TrainConfig`, YAML loading with command-line overrides.

YAML keys have the same names as the fields (see train/configs/*.yaml).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CLOTHING_FILLS, M2HConfig, preset
from .mirror_loss import MIRROR_REDUCTIONS  # per-pixel means, Eq. 4 and 6 both as sums, or Eq. 6's sums vs Eq. 4's mean

LR_SCHEDULES = ("constant", "cosine")
#: where a new model's weights come from (`init`): the base files only, or public add-ons too (public_init.py)
INITS = ("base", "public")
#: what of the identity image x_id the model sees (M2HConfig.identity_input)
IDENTITY_INPUTS = ("head", "full")


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
    lr_schedule: str = "constant"  # after the warm-up: "constant" (the paper's) or "cosine" (decays to 0 at max_steps)
    max_grad_norm: float = 1.0  # ours: the paper names no clipping (0 = off)
    max_nonfinite_steps: int = 5  # consecutive non-finite losses (each step skipped) before the run aborts
    progressive: bool = True  # half resolution for the first half_res_fraction of the steps
    half_res_fraction: float = 0.5
    cond_dropout: float = 0.1  # ours: the paper samples with CFG 7.5 but names no condition dropout rate
    # input perturbation against exposure bias (Ning et al. 2023): z_t is made with ε + γ ξ, the targets keep
    # ε / z_0, so the model learns not to trust z_t's details fully (the sampler's z_t carries its own earlier
    # errors). 0 = off
    input_perturbation: float = 0.0
    vae_sample: bool = True  # sample the VAE posterior for z_0 (False: its mode)
    # mirror loss (Eq. 5-6). alpha, beta: Eq. 6's weights. beta = 0.005, not the 0.001 of Sec. IV-B's text: Table I's
    # M2HVideo row (23.47 / 0.886 / 0.069 / 0.935 / 13.35) is Table IV's alpha = 0.05, beta = 0.005 row, and
    # Sec. IV-D names beta = 0.005 the best; the paper contradicts itself and its reported numbers use 0.005.
    mirror: bool = True
    alpha: float = 0.05
    beta: float = 0.005
    # "normalized": means, ᾱ_t-weighted (ours); "literal": Eq. 4 and Eq. 6 both as written (sums); "paper": Eq. 6's
    # sums against Eq. 4's mean (mixed; earlier runs). docs/REPRODUCE.md, "The mirror loss in detail"
    mirror_reduction: str = "normalized"
    mirror_crop: bool = True
    mirror_margin: int = 2
    # per-clip weight: alpha_bar | none; None (default): the reduction's own (normalized: alpha_bar, otherwise none)
    mirror_weighting: str | None = None
    mirror_t_max: int | None = None
    # ablations (Table III)
    use_head_encoder: bool = True
    adapter_enabled: bool = True
    adapter_normalize: bool = True
    # what of x_id E sees (M2HConfig.identity_input): "full" = the whole frame, as the paper's x_id ("randomly
    # selected from the frames in v_h", Sec. III-D); "head" = x_id ⊙ M_head (`identity.head_only`, ours: a whole
    # frame lets the model copy x_id's clothes). None: the preset's ("head"), or the init_checkpoint's
    identity_input: str | None = None
    # the clothing frame's fill outside M_c: "black" (the paper's v ⊙ M_c) or "backdrop" (M2HConfig.clothing_fill);
    # None: the preset's (black), or the init_checkpoint's
    clothing_fill: str | None = None
    # weights
    random_init: bool = False
    base: str | None = None  # SD-1.5 single file or diffusers folder
    clip_vision: str | None = None
    motion_module: str | None = None
    vgg: str | None = None  # vgg16-397923af.pth / .safetensors; None: default model folders
    init_checkpoint: str | None = None  # start from an M2H checkpoint instead of the base UNet
    # "base": the base UNet (+ motion module) and fresh M2H parts; "public": also warm-start M2H parts from public
    # add-ons (`public_init.py`): A's identity K/V and H's ArcFace path from an IP-Adapter FaceID file, E_pose
    # from a ControlNet OpenPose file (widths must match: pose_channels)
    init: str = "base"
    ip_adapter: str | None = None  # ip-adapter-faceid_sd15.bin (or FaceID-Plus(V2)) for init: public
    controlnet: str | None = None  # control_v11p_sd15_openpose.pth for init: public
    pose_channels: list[int] | None = None  # E_pose widths (None: the preset's); ControlNet 1.1's: [16, 32, 96, 256]
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
        if not 0 <= self.input_perturbation < 1:
            raise ValueError("input_perturbation must be in [0, 1)")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if self.mirror_reduction not in MIRROR_REDUCTIONS:
            raise ValueError(f"mirror_reduction must be one of {MIRROR_REDUCTIONS}, got {self.mirror_reduction!r}")
        if self.mirror_weighting not in (None, "alpha_bar", "none"):
            raise ValueError(f"mirror_weighting must be alpha_bar, none or null (the reduction's own), got "
                             f"{self.mirror_weighting!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "public" and self.init_checkpoint:
            raise ValueError("init: public warm-starts a new model from public files; init_checkpoint is already a "
                             "whole M2H model - give one or the other")
        if self.init == "public" and not (self.ip_adapter or self.controlnet or self.motion_module or self.base):
            raise ValueError("init: public needs public files: --ip-adapter (IP-Adapter FaceID), --controlnet "
                             "(ControlNet OpenPose), --motion-module (AnimateDiff), --base (SD-1.5 or its "
                             "inpainting UNet)")
        if (self.ip_adapter or self.controlnet) and self.init != "public":
            raise ValueError("ip_adapter / controlnet are read only with init: public (--init public)")
        if self.pose_channels is not None and (len(self.pose_channels) < 2 or min(self.pose_channels) < 1):
            raise ValueError(f"pose_channels must list at least 2 positive widths, got {self.pose_channels}")
        if self.identity_input is not None and self.identity_input not in IDENTITY_INPUTS:
            raise ValueError(f"identity_input must be one of {IDENTITY_INPUTS}, got {self.identity_input!r}")
        if self.clothing_fill is not None and self.clothing_fill not in CLOTHING_FILLS:
            raise ValueError(f"clothing_fill must be one of {CLOTHING_FILLS}, got {self.clothing_fill!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
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
        if self.clothing_fill is not None:
            cfg.clothing_fill = self.clothing_fill
        if self.identity_input is not None:
            cfg.identity_input = self.identity_input
        if self.pose_channels is not None:
            if len(self.pose_channels) != len(cfg.head.pose_channels):
                raise ValueError(f"pose_channels needs {len(cfg.head.pose_channels)} widths for the {self.preset} "
                                 f"preset (one stride-2 stage per VAE downsampling), got {self.pose_channels}")
            cfg.head.pose_channels = tuple(int(c) for c in self.pose_channels)
        return cfg


def checkpoint_model_config(tc: TrainConfig) -> M2HConfig:
    """The model config of `tc.init_checkpoint` (it, not the YAML's preset, is what gets trained and saved:
    prediction_type, sizes, scaling factors). Raises ValueError when the YAML's model switches or sizes say
    otherwise, rather than silently training something else than the config file describes."""
    from ..checkpoint import read_config

    cfg = read_config(tc.init_checkpoint)
    yaml_cfg = tc.model_config()
    conflicts = []
    if cfg.name in ("tiny", "sd15") and cfg.name != tc.preset:
        conflicts.append(f"preset: {tc.preset} (checkpoint: {cfg.name})")
    for key, mine, theirs in (("use_head_encoder", yaml_cfg.use_head_encoder, cfg.use_head_encoder),
                              ("adapter_enabled", yaml_cfg.adapter.enabled, cfg.adapter.enabled),
                              ("adapter_normalize", yaml_cfg.adapter.normalize, cfg.adapter.normalize),
                              ("clothing_fill", tc.clothing_fill or cfg.clothing_fill, cfg.clothing_fill),
                              ("identity_input", tc.identity_input or cfg.identity_input, cfg.identity_input)):
        if mine != theirs:
            conflicts.append(f"{key}: {mine} (checkpoint: {theirs})")
    if tc.pose_channels is not None and tuple(tc.pose_channels) != tuple(cfg.head.pose_channels):
        conflicts.append(f"pose_channels: {list(tc.pose_channels)} (checkpoint: {list(cfg.head.pose_channels)})")
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


def read_config_file(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The options of a YAML config. `extends: other.yaml` (relative to the file) reads that one first and
    lets this file's keys override it (the Table III/IV configs extend sd15.yaml)."""
    import yaml

    p = Path(path).resolve()
    if not p.is_file():
        what = f"config {_chain[-1]} extends {p}, which" if _chain else f"training config {p}"
        raise FileNotFoundError(f"{what} does not exist (see train/configs/)")
    if p in _chain:
        raise ValueError(f"training configs extend each other in a loop: {' -> '.join(map(str, _chain + (p,)))}")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p} must hold a mapping of training options")
    parent = d.pop("extends", None)
    if parent:
        base = read_config_file(p.parent / str(parent), _chain + (p,))
        base.update(d)
        d = base
    return d


def load_train_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
                      ) -> TrainConfig:
    """A YAML file (may be None; may `extends:` another) with `overrides` (key -> value) on top."""
    d: dict[str, Any] = read_config_file(path) if path is not None else {}
    d.update({k: v for k, v in (overrides or {}).items()})
    return TrainConfig.from_dict(d)


def size_multiple(cfg: M2HConfig) -> int:
    """Pixel sizes must be multiples of this (VAE downscale x UNet downsampling x 2 for the half phase)."""
    return cfg.vae.downscale * 2 ** (len(cfg.unet.block_out_channels) - 1)

