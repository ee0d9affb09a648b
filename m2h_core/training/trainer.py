"""The M2HVideo trainer (paper Algorithm 1, Sec. III-E / IV-B), reusable by `train/train.py` and `m2h demo`.

Per optimizer step (x `grad_accum` micro-batches):
  v_h, p_h, x_id, p_id, M_c, M_id ← batch (half resolution for the first `half_res_fraction` of the steps)
  ε ~ N(0, I), t ~ U{0..T-1},  z_t = √ᾱ_t E(v_h) + √(1-ᾱ_t) ε                 (SD-1.5 scaled_linear schedule)
  drop ~ Bernoulli(cond_dropout)  — identity tokens f_pi and CLIP tokens dropped *together*, exactly the
                                    sampler's unconditional branch
  ε̂ = M2HModel(z_t, t, inputs, drop);  L_diff = ‖ε - ε̂‖²  (mean)
  L_mir = MirrorLoss(z_t, ε̂, t, v_h, M_id)  (one-step DDIM x0, face-crop decode; Eq. 6 reduced as
                                            `mirror_reduction` says; mirror_loss.py)
  Adam(β1=0, β2=0.99), lr 5e-5 on L_diff + L_mir.
  (v-prediction: ε̂ = √ᾱ_t v̂ + √(1-ᾱ_t) z_t, `mirror_loss.eps_from_v`; x0-prediction, the tiny demo: `eps_from_x0`.)
Trainable: E_pose, E_id, H, A (to_k_id/to_v_id), the UNet incl. motion modules (or LoRA on its spatial
attention + conv_in + motion modules when `lora_rank` > 0). Frozen: VAE, CLIP, VGG (ArcFace is precomputed).

Checkpoints and resuming: `state.py`; distributed runs, precision and FSDP: the `Trainer` class.
"""


from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import M2HConfig
from ..frames import to_nhwc, to_uint8
from ..inference.encoders import FrozenEncoders
from ..models.m2h import M2HModel
from .components import apply_lora, build_components, enable_gradient_checkpointing, make_train_scheduler
from .config import TrainConfig, checkpoint_model_config, size_multiple
from .dataset import ClipCacheDataset, ResumableSampler, sampler_inputs
from .mirror_loss import MirrorLoss, eps_from_v, eps_from_x0
from .state import clean_stale_tmp, list_checkpoints, load_training_checkpoint, save_training_checkpoint


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


def lr_factor(tc: TrainConfig) -> Callable[[int], float]:
    """The lr multiplier after `s` optimizer steps: linear warm-up over `warmup_steps`, then constant or a cosine
    decay to 0 at `max_steps` (`lr_schedule`). A function of the config only, so a resumed run rebuilds it."""
    warm, total = max(0, tc.warmup_steps), max(1, tc.max_steps)

    def factor(s: int) -> float:
        w = min(1.0, (s + 1) / warm) if warm else 1.0
        if tc.lr_schedule == "cosine":
            w *= 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        return w

    return factor


class Trainer:
    """Algorithm 1. Components can be injected (the tiny demo trains its own VAE; tests share models); `dataset`
    is a Dataset or a factory `(tc, cfg) -> Dataset` (synthetic clips), else `tc.data`'s cache.

    Distributed / precision: HF accelerate (`accelerate launch --config_file ...` for DDP, FSDP or DeepSpeed,
    `mixed_precision`), `gradient_checkpointing` on the UNet including its motion modules (`components.py`). Our
    own sampler shards data positions across ranks.
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

    def __init__(self, tc: TrainConfig, *, model: M2HModel | None = None, encoders: FrozenEncoders | None = None,
                 vgg: torch.nn.Module | None = None,
                 dataset: Dataset | Callable[[TrainConfig, M2HConfig], Dataset] | None = None, accelerator=None,
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
        built = model is None
        if model is None or encoders is None or (vgg is None and tc.mirror and tc.beta > 0):
            m, e, v = build_components(tc, self.cfg)
            model, encoders, vgg = model or m, encoders or e, vgg if vgg is not None else v
        # what was initialised from which public file (init: public; the preflight prints it)
        from .public_init import init_from_config

        self.init_report = [str(line) for line in init_from_config(model, tc)] if built else []
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
        if tc.gradient_checkpointing:
            enable_gradient_checkpointing(self.model.unet)  # incl. the motion modules (components.py)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                                          eps=tc.adam_eps, weight_decay=tc.weight_decay)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(tc))
        # the lr scheduler stays unprepared: accelerate would step it once per process
        self.ddp_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.noise_scheduler = make_train_scheduler()
        self.mirror = (self.make_mirror_loss(tc.alpha, tc.beta)
                       if tc.mirror and (tc.alpha > 0 or tc.beta > 0) else None)
        self.dataset = self._make_dataset(dataset)
        self.generator = torch.Generator().manual_seed(tc.seed * 1000 + self.accelerator.process_index)
        self.step = 0
        self.position = 0  # samples consumed, all ranks together
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.tb = None
        self.logs: list[StepLog] = []

    def make_mirror_loss(self, alpha: float, beta: float, **overrides) -> MirrorLoss:
        """Eq. 6 with this run's settings (reduction, crop, weighting); `overrides` replace any of them."""
        tc = self.tc
        kw = dict(crop=tc.mirror_crop, margin=tc.mirror_margin, weighting=tc.mirror_weighting,
                  t_max=tc.mirror_t_max, reduction=tc.mirror_reduction)
        kw.update(overrides)
        return MirrorLoss(self.vgg if beta else None, alpha, beta, **kw)

    def _check_size(self, cfg: M2HConfig) -> None:
        mult = size_multiple(cfg) * (2 if self.tc.progressive else 1)
        for name, v in (("height", cfg.height), ("width", cfg.width)):
            if v % mult:
                raise ValueError(f"{name} {v} must be a multiple of {mult} for this model"
                                 f"{' with the half-resolution phase' if self.tc.progressive else ''}")

    # ---------------------------------------------------------------------------------------------- data
    def _make_dataset(self, dataset):
        """The given dataset, or one made by a given factory `(tc, cfg) -> Dataset` (the model's config is known
        only here: e.g. `m2h_core.demo.synthetic.synthetic_training_data`), else `tc.data`'s cache."""
        tc = self.tc
        if dataset is not None:
            return dataset if isinstance(dataset, Dataset) else dataset(tc, self.cfg)
        if tc.data:
            return ClipCacheDataset(tc.data, "train", num_frames=tc.num_frames, stride=tc.frame_stride,
                                    height=self.cfg.height, width=self.cfg.width, seed=tc.seed)
        raise ValueError("no training data: set data (a train/prepare_data.py cache), or give the trainer a "
                         "dataset (synthetic_clips: dataset=m2h_core.demo.synthetic.synthetic_training_data)")

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
    def compute_loss(self, batch: dict, generator: torch.Generator | None = None, *, keep_graph: bool = False
                     ) -> dict[str, torch.Tensor]:
        """L_total for one micro-batch (Algorithm 1, lines 10-20). Returns loss terms; 'loss' has grad.
        keep_graph: also 'g_diff', 'g_pix', 'g_perc' - L_diff and the two reduced Eq. 6 terms (without α, β) with
        their graphs, for gradient-norm calibration (`preflight.py`)."""
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
        noise_in = noise
        if self.tc.input_perturbation > 0:  # TrainConfig.input_perturbation: the input's noise only, not the target's
            noise_in = noise + self.tc.input_perturbation * torch.randn(z0.shape, generator=g).to(dev)
        z_t = self.noise_scheduler.add_noise(z0, noise_in, t)
        with self.accelerator.autocast():
            eps = self.ddp_model(z_t, t, inputs, drop)
        if self.cfg.prediction_type == "v_prediction":  # v = √ᾱ ε - √(1-ᾱ) z_0; ε̂ for L_mir from v̂
            l_diff = F.mse_loss(eps.float(), self.noise_scheduler.get_velocity(z0, noise, t))
            eps = eps_from_v(eps, z_t, t, self.noise_scheduler)
        elif self.cfg.prediction_type == "sample":  # the tiny demo: x̂_0 (+ f_c, cfg.clothing_skip); ε̂ for L_mir
            l_diff = F.mse_loss(eps.float(), z0)
            eps = eps_from_x0(eps, z_t, t, self.noise_scheduler)
        else:
            l_diff = F.mse_loss(eps.float(), noise)
        out = {"l_diff": l_diff.detach()}
        if self.mirror is not None:
            with self.accelerator.autocast():
                mo = self.mirror(z_t, eps, t, frames, batch["face_masks"].to(dev), self.encoders,
                                 self.noise_scheduler)
            out.update(l_mir=mo.loss.detach(), l_pix=mo.pixel, l_perc=mo.perceptual)
            if keep_graph:
                out.update(g_pix=mo.pixel_term, g_perc=mo.perceptual_term)
            loss = l_diff + mo.loss.float()
        else:
            zero = torch.zeros((), device=dev)
            out.update(l_mir=zero, l_pix=zero, l_perc=zero)
            loss = l_diff
        out["loss"] = loss
        if keep_graph:
            out["g_diff"] = l_diff
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
    def save(self) -> Path:
        """Write checkpoints/step_XXXXXXXX atomically (temp folder + rename) and prune old ones (state.py)."""
        return save_training_checkpoint(self)

    def load(self, ckpt_dir: str | os.PathLike) -> None:
        """Restore model, optimizer, lr schedule, RNG states, step and data position (state.py)."""
        load_training_checkpoint(self, ckpt_dir)

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
        from ..inference.sampler import SamplerSettings, sample_video
        from ..video_io import write_video

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
            res = sample_video(model, self.encoders, *sampler_inputs(item),
                               SamplerSettings(steps=self.tc.validation_steps,
                                               guidance_scale=self.tc.validation_guidance, seed=self.tc.seed,
                                               context_frames=(ctx := min(self.tc.num_frames, item["frames"].shape[0])),
                                               context_overlap=min(4, ctx // 2)))
        finally:
            model.train()
        both = torch.cat([item["frames"], res.frames], dim=-1)
        video = to_uint8(to_nhwc(both))
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
            clean_stale_tmp(self)
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
