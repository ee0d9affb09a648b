"""`train/train.py --preflight`: what a run will cost and whether its losses are balanced, before any GPU-day.

With the same config and flags as the real run it:

* **measures** (a GPU, or the CPU when the configured size is small enough): builds the real model (the base
  weights of the config) on the run's device, runs a few real optimizer steps at the configured size and batch in
  both resolution phases (Algorithm 1, lines 6-9), and reports peak memory, seconds per step, the hours to
  `max_steps`, the ratio of the gradient norms of the mirror term (Eq. 6) and of L_diff (Eq. 4) on the trainable
  parameters - with the α (and β) that would give a target ratio -, how far the face-crop decode is from a
  full-frame decode on the face pixels of these batches, and whether fp16/bf16 losses stay finite;
* **estimates** (always; alone when measuring is not feasible, e.g. SD-1.5 on a CPU): FLOPs counted with
  torch's FlopCounterMode and activation memory as the bytes autograd saves for the backward, both on the meta
  device (no weights, no memory), plus weights, gradients and Adam's moments from the parameter counts. Every
  such key starts with `est_`; they are estimates, not measurements.

Output: `key=value` lines and `preflight.json` (the same keys). `PREFLIGHT_KEYS` lists every key.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import M2HConfig
from ..metrics import psnr_from_mse
from .config import TrainConfig

#: The paper's global batch (Sec. IV-B: 4 per GPU on 2 GPUs); GPU-count hours keep it.
PAPER_GLOBAL_BATCH = 8
#: A typical UBC face at 512x256 (h, w in pixels); the estimate's crop is this box + the margin.
FACE_PX_AT_512x256 = (40, 30)
#: Reference GPUs for the estimate: (memory GiB, dense bf16 tensor TFLOP/s from the vendors' data sheets).
REFERENCE_GPUS: dict[str, tuple[float, float]] = {
    "rtx4090_24gb": (24.0, 165.0), "a6000_48gb": (48.0, 155.0), "a100_80gb": (80.0, 312.0),
    "h100_80gb": (80.0, 989.0)}
#: Assumed fraction of peak throughput a training step reaches (convolutions, attention, small batches).
ASSUMED_MFU = 0.3
GPU_COUNTS = (1, 2, 4, 8)
#: VGG16 conv1_1 ... conv3_3 (the mirror loss's φ) parameter count.
VGG16_TO_RELU3_3_PARAMS = 1_735_488
#: Allocator fragmentation, workspaces, the encoders' transient activations: added to the estimated peak.
EST_OVERHEAD = 1.15

PREFLIGHT_KEYS: tuple[str, ...] = (
    # what was run
    "mode", "device", "preset", "height", "width", "num_frames", "batch_size", "grad_accum", "mixed_precision",
    "gradient_checkpointing", "lora_rank", "max_steps", "progressive", "mirror", "mirror_reduction", "alpha",
    "beta", "trainable_params", "frozen_params", "inputs_missing", "init_sources",
    # measured (n/a in estimate mode)
    "steps_measured", "step_s_half", "step_s_full", "peak_mem_gib_half", "peak_mem_gib_full", "peak_mem_gib",
    "peak_mem_kind", "device_mem_gib", "fits_device", "first_change", "hours_to_max_steps",
    *(f"hours_paper_batch_gpus{n}" for n in GPU_COUNTS), "hours_note",
    "grad_ratio", "grad_ratio_pixel", "grad_ratio_perceptual", "grad_ratio_paper", "grad_ratio_normalized",
    "grad_ratio_literal",
    "target_ratio", "alpha_for_target", "beta_for_target", "grad_batches",
    "crop_vs_full_face_rmse", "crop_vs_full_face_max_abs", "crop_vs_full_face_psnr_db", "crop_vs_full_loss_rel",
    "loss_finite", "fp16_loss_finite", "bf16_loss_finite",
    # estimated on the meta device (always)
    "est_step_tflops_half", "est_step_tflops_full", "est_mirror_crop_tflops_full", "est_crop_cells_full",
    "est_weights_optimizer_gib", "est_frozen_gib", "est_activations_gib_half", "est_activations_gib_full",
    "est_peak_mem_gib", *(f"est_fits_{g}" for g in REFERENCE_GPUS), "est_first_change_24gb",
    *(f"est_step_s_full_{g}" for g in REFERENCE_GPUS),
    *(f"est_hours_paper_batch_{g}_gpus{n}" for g in REFERENCE_GPUS for n in GPU_COUNTS),
    "est_cpu_step_s", "estimate_note",
)


@dataclass
class PreflightOptions:
    steps: int = 2  # timed steps per resolution phase (after one warm-up step)
    target_ratio: float = 0.1  # |∇ L_mir| / |∇ L_diff| that alpha_for_target / beta_for_target aim at
    mode: str = "auto"  # auto | measure | estimate
    cpu_step_limit_s: float = 60.0  # auto on a CPU: measure only when a step is estimated below this
    out: str | None = None  # preflight.json path (default: <output_dir>/preflight.json)


NA = "n/a"


# ================================================================================================ estimate


def _gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def face_cells(cfg_h: int, cfg_w: int, downscale: int, margin: int, face_px=FACE_PX_AT_512x256
               ) -> tuple[int, int]:
    """Latent cells of the estimate's face crop at (cfg_h, cfg_w): the face box scaled from 512x256 + margin."""
    fh, fw = face_px[0] * cfg_h / 512, face_px[1] * cfg_w / 256
    lh, lw = cfg_h // downscale, cfg_w // downscale
    return (min(lh, -(-round(fh) // downscale) + 2 * margin), min(lw, -(-round(fw) // downscale) + 2 * margin))


def count_step(cfg: M2HConfig, batch: int, frames: int, height: int, width: int, *, mirror_cells=None,
               gradient_checkpointing: bool = False, dtype: torch.dtype = torch.float32, lora_rank: int = 0,
               model=None, encoders=None, vgg=None) -> dict[str, float]:
    """FLOPs and saved-for-backward bytes of one training micro-batch, on the meta device (no weights, no memory).

    Counts the model's forward + backward (conditioning included, Algorithm 1 lines 14-15), the frozen encoders
    (E(v_h), E(v_h ⊙ M_c), E(x_id), CLIP; no grad) and, with `mirror_cells` = (ch, cw) latent cells, the mirror
    loss's crop decode + VGG forward and backward. Returns step_flops, encoder_flops, mirror_flops,
    activation_bytes (what autograd keeps between forward and backward: the activation memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..inference.encoders import FrozenEncoders
    from ..models.m2h import M2HInputs, M2HModel
    from ..vgg import VGGFeatures, build_vgg16_features
    from .components import apply_lora, enable_gradient_checkpointing

    dev = torch.device("meta")
    if model is None:
        with dev:
            model = M2HModel(cfg)
        if lora_rank:
            apply_lora(model, lora_rank)
        model = model.to(dtype)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model.unet)  # as the trainer does
        model.train()
    if encoders is None:
        with dev:
            encoders = FrozenEncoders.random(cfg)
        encoders.to(dtype=dtype)
    if vgg is None:
        vgg = VGGFeatures(features=build_vgg16_features("meta"))
    c = cfg.unet.latent_channels
    ds = cfg.vae.downscale
    h, w = height // ds, width // ds
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t  # kept alive so ids are not reused; meta tensors hold no memory
        return t

    def r(*s) -> torch.Tensor:
        return torch.randn(*s, device=dev, dtype=dtype)

    out: dict[str, float] = {}
    with FlopCounterMode(display=False) as fc:
        inp = M2HInputs(r(batch, frames, c, h, w), r(batch, frames, 3, height, width), r(batch, c, h, w),
                        r(batch, 3, height, width), r(batch, 512), r(batch, frames, 1, cfg.clip.projection_dim))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            eps = model(r(batch, frames, c, h, w), torch.full((batch,), 500, device=dev), inp)
        eps.float().square().mean().backward()
    out["step_flops"] = float(fc.get_total_flops())
    out["activation_bytes"] = float(sum(t.numel() * t.element_size() for t in saved.values()))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        x = r(batch * frames, 3, height, width)
        encoders.vae.encode(x)  # E(v_h)
        encoders.vae.encode(x)  # E(v_h ⊙ M_c)
        encoders.vae.encode(r(batch, 3, height, width))  # E(x_id)
        size = cfg.clip.image_size
        encoders.clip(pixel_values=r(batch * frames, 3, size, size))
    out["encoder_flops"] = float(fc.get_total_flops())
    out["mirror_flops"] = 0.0
    if mirror_cells is not None:
        saved.clear()
        with FlopCounterMode(display=False) as fc:
            z = r(batch * frames, c, *mirror_cells).requires_grad_()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                img = encoders.vae.decode(z).sample
                feats = vgg(torch.cat([img, img.detach()]).float())
            sum(v.sum() for v in feats.values()).backward()
        out["mirror_flops"] = float(fc.get_total_flops())
        out["activation_bytes"] += float(sum(t.numel() * t.element_size() for t in saved.values()))
    return out


def _param_counts(cfg: M2HConfig, lora_rank: int) -> tuple[int, int, int]:
    """(trainable, frozen model, frozen encoders) parameter counts, built on the meta device."""
    from ..inference.encoders import FrozenEncoders
    from ..models.m2h import M2HModel
    from .components import apply_lora

    with torch.device("meta"):
        model = M2HModel(cfg)
        enc = FrozenEncoders.random(cfg)
    if lora_rank:
        apply_lora(model, lora_rank)
    tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fr = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return tr, fr, sum(p.numel() for p in enc.vae.parameters()) + sum(p.numel() for p in enc.clip.parameters())


def memory_estimate(cfg: M2HConfig, tc: TrainConfig, *, batch: int, gradient_checkpointing: bool, lora_rank: int,
                    cuda: bool = True, counts: dict | None = None) -> dict[str, float]:
    """Peak training memory (bytes) estimated on the meta device: fp32 weights, gradients and Adam's two moments
    (16 B per trainable parameter), frozen weights (fp32 model parts, encoders in the mixed-precision dtype on a
    GPU), the larger phase's activations at `batch`, times EST_OVERHEAD."""
    half = tc.mixed_precision in ("fp16", "bf16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(tc.mixed_precision, torch.float32)
    act_dtype = dtype if half else torch.float32
    tr, fr, enc = _param_counts(cfg, lora_rank)
    weights_opt = 16.0 * tr + 4.0 * fr
    frozen = (2.0 if (half and cuda) else 4.0) * enc + 4.0 * VGG16_TO_RELU3_3_PARAMS
    cells = face_cells(cfg.height, cfg.width, cfg.vae.downscale, tc.mirror_margin) if tc.mirror else None
    acts = {}
    for tag, s in (("half", 0.5), ("full", 1.0)):
        if tag == "half" and not tc.progressive:
            acts[tag] = 0.0
            continue
        hh, ww = int(cfg.height * s), int(cfg.width * s)
        c = face_cells(hh, ww, cfg.vae.downscale, tc.mirror_margin) if tc.mirror else None
        key = (tag, batch, gradient_checkpointing, lora_rank)
        if counts is not None and key in counts:
            acts[tag] = counts[key]["activation_bytes"]
            continue
        res = count_step(cfg, batch, tc.num_frames, hh, ww, mirror_cells=c,
                         gradient_checkpointing=gradient_checkpointing, dtype=act_dtype, lora_rank=lora_rank)
        if counts is not None:
            counts[key] = res
        acts[tag] = res["activation_bytes"]
    peak = (weights_opt + frozen + max(acts.values())) * EST_OVERHEAD
    return {"trainable": tr, "frozen_params": fr + enc, "weights_optimizer": weights_opt, "frozen": frozen,
            "act_half": acts["half"], "act_full": acts["full"], "peak": peak, "cells": cells}


def first_change(tc: TrainConfig, fits: Callable[[TrainConfig], bool]) -> str:
    """The first setting to change (in this order: gradient checkpointing, LoRA rank 16, then halving the batch
    with more accumulation) after which `fits(config)` holds; 'none' when it fits as it is."""
    if fits(tc):
        return "none"
    cand = copy.copy(tc)
    steps = []
    if not cand.gradient_checkpointing:
        cand.gradient_checkpointing = True
        steps.append("gradient_checkpointing: true")
        if fits(cand):
            return ", ".join(steps)
    if cand.lora_rank == 0:
        cand.lora_rank = 16
        steps.append("lora_rank: 16")
        if fits(cand):
            return ", ".join(steps)
    while cand.batch_size > 1:
        cand.batch_size //= 2
        cand.grad_accum *= 2
        if fits(cand):
            return ", ".join(steps + [f"batch_size: {cand.batch_size}, grad_accum: {cand.grad_accum}"])
    return ", ".join(steps + ["batch_size: 1", "and still too big: fewer frames (num_frames) or a smaller size"])


def cpu_gflops(seconds: float = 0.5) -> float:
    """This CPU's float32 matmul rate (GFLOP/s, an upper bound for a training step's mix of kernels)."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 512**3 * n / (time.perf_counter() - t0) / 1e9


def estimate(tc: TrainConfig, cfg: M2HConfig) -> dict[str, Any]:
    """The `est_*` keys (meta device)."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(tc.mixed_precision, torch.float32)
    counts: dict = {}
    mem = memory_estimate(cfg, tc, batch=tc.batch_size, gradient_checkpointing=tc.gradient_checkpointing,
                          lora_rank=tc.lora_rank, counts=counts)
    out: dict[str, Any] = {}
    flops = {}
    for tag, s in (("half", 0.5), ("full", 1.0)):
        key = (tag, tc.batch_size, tc.gradient_checkpointing, tc.lora_rank)
        if key not in counts:  # progressive off: the half phase was not counted for memory
            hh, ww = int(cfg.height * s), int(cfg.width * s)
            c = face_cells(hh, ww, cfg.vae.downscale, tc.mirror_margin) if tc.mirror else None
            counts[key] = count_step(cfg, tc.batch_size, tc.num_frames, hh, ww, mirror_cells=c,
                                     gradient_checkpointing=tc.gradient_checkpointing, dtype=dtype,
                                     lora_rank=tc.lora_rank)
        r = counts[key]
        flops[tag] = (r["step_flops"] + r["encoder_flops"] + r["mirror_flops"]) * tc.grad_accum
        out[f"est_step_tflops_{tag}"] = flops[tag] / 1e12
        if tag == "full":
            out["est_mirror_crop_tflops_full"] = r["mirror_flops"] * tc.grad_accum / 1e12
    cells = mem["cells"]
    out["est_crop_cells_full"] = f"{cells[0]}x{cells[1]}" if cells else NA
    out["est_weights_optimizer_gib"] = _gib(mem["weights_optimizer"])
    out["est_frozen_gib"] = _gib(mem["frozen"])
    out["est_activations_gib_half"] = _gib(mem["act_half"])
    out["est_activations_gib_full"] = _gib(mem["act_full"])
    out["est_peak_mem_gib"] = _gib(mem["peak"])
    out["_trainable"], out["_frozen"] = mem["trainable"], mem["frozen_params"]

    def fits_gib(gib: float) -> Callable[[TrainConfig], bool]:
        def fits(c: TrainConfig) -> bool:
            m = memory_estimate(cfg, c, batch=c.batch_size, gradient_checkpointing=c.gradient_checkpointing,
                                lora_rank=c.lora_rank, counts=counts)
            return _gib(m["peak"]) <= 0.95 * gib
        return fits

    for g, (gib, _) in REFERENCE_GPUS.items():
        out[f"est_fits_{g}"] = _gib(mem["peak"]) <= 0.95 * gib
    out["est_first_change_24gb"] = first_change(tc, fits_gib(24.0))
    n_half = int(tc.half_res_fraction * tc.max_steps) if tc.progressive else 0
    for g, (_, tflops) in REFERENCE_GPUS.items():
        rate = tflops * 1e12 * ASSUMED_MFU
        out[f"est_step_s_full_{g}"] = flops["full"] / rate
        per_sample = {k: v / rate / (tc.batch_size * tc.grad_accum) for k, v in flops.items()}
        total = (n_half * per_sample["half"] + (tc.max_steps - n_half) * per_sample["full"]) * PAPER_GLOBAL_BATCH
        for n in GPU_COUNTS:
            out[f"est_hours_paper_batch_{g}_gpus{n}"] = total / n / 3600
    out["est_cpu_step_s"] = flops["full"] / (cpu_gflops() * 1e9)
    out["estimate_note"] = (
        "est_* are ESTIMATES from the meta device, not measurements: FLOPs by torch FlopCounterMode; memory = "
        "16 B per trainable parameter (fp32 weight, grad, Adam's 2 moments) + frozen weights + the bytes autograd "
        f"saves for the backward (the larger phase), x{EST_OVERHEAD}; gradient checkpointing as configured; times "
        f"assume {ASSUMED_MFU:.0%} of each GPU's dense bf16 peak and ideal multi-GPU scaling; face crop = a "
        f"{FACE_PX_AT_512x256[0]}x{FACE_PX_AT_512x256[1]} px face at 512x256 + mirror_margin cells")
    return out


# ================================================================================================ measure


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return _gib(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB; the process peak


def _device_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return _gib(torch.cuda.get_device_properties(device).total_memory)
    return _gib(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def grad_sq_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    """|∇θ loss|² over `params` (float64 accumulation; one gradient set alive at a time, the graph is kept)."""
    if not loss.requires_grad:
        return 0.0
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(sum(float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2 for g in gs if g is not None))


def solve_weight(a2: float, ab: float, b2: float, d2: float, other: float, target: float) -> float | None:
    """The w >= 0 with |w·g1 + other·g2|² = target²·|g_diff|² summed over batches, where a2 = Σ|g1|²,
    ab = Σ<g1, g2>, b2 = Σ|g2|², d2 = Σ|g_diff|². None when no such w exists (the other term alone is larger)."""
    if a2 <= 0:
        return None
    c = other * other * b2 - target * target * d2
    disc = (other * ab) ** 2 - a2 * c
    if disc < 0:
        return None
    w = (-other * ab + math.sqrt(disc)) / a2
    return w if w >= 0 else None


def gradient_balance(tr, batches: list[dict], target: float, seed: int = 0) -> dict[str, Any]:
    """|∇θ L_mir| / |∇θ L_diff| on the trainable parameters, as RMS over `batches` (each with its own t, noise):
    for the configured α, β and reduction, per term, for all three reductions; and the α (β fixed) and β (α fixed)
    that give `target`. Also the crop-vs-full mirror loss on the same predictions. "literal" is "paper"'s Eq. 6
    divided by each batch's latent elements per clip (mirror_loss.py), so it comes from the same passes."""
    from .mirror_loss import MirrorLoss

    tc = tr.tc
    params = [p for p in tr.model.parameters() if p.requires_grad]
    real_mirror = tr.mirror
    beta_ok = tr.vgg is not None
    sums = {red: dict(d2=0.0, a2=0.0, ab=0.0, b2=0.0) for red in ("normalized", "paper", "literal")}
    cfg = tr.cfg
    seen: list[tuple] = []

    def recording(loss: MirrorLoss):
        def call(z_t, eps, t, frames, masks, enc, sched):
            seen.append((z_t.detach(), eps.detach(), t, frames, masks))
            return loss(z_t, eps, t, frames, masks, enc, sched)
        return call

    try:
        for i, batch in enumerate(batches):
            for red in ("normalized", "paper"):
                tr.mirror = recording(tr.make_mirror_loss(1.0, 1.0 if beta_ok else 0.0, reduction=red))
                terms = tr.compute_loss(batch, generator=torch.Generator().manual_seed(seed + i), keep_graph=True)
                s = sums[red]
                d2_before, before = s["d2"], dict(s)
                s["d2"] += grad_sq_norm(terms["g_diff"], params)
                a2 = grad_sq_norm(terms["g_pix"], params)
                s["a2"] += a2
                if beta_ok:  # <∇pix, ∇perc> from |∇(pix + perc)|²: never two gradient sets in memory at once
                    b2 = grad_sq_norm(terms["g_perc"], params)
                    s["b2"] += b2
                    s["ab"] += (grad_sq_norm(terms["g_pix"] + terms["g_perc"], params) - a2 - b2) / 2
                del terms
                if red == "paper":  # literal = paper / n_lat: its squared norms / n_lat², L_diff's unchanged
                    _, f, _, hh, ww = batch["frames"].shape
                    n_lat = f * cfg.unet.latent_channels * (hh // cfg.vae.downscale) * (ww // cfg.vae.downscale)
                    lit = sums["literal"]
                    lit["d2"] += s["d2"] - d2_before
                    for k in ("a2", "ab", "b2"):
                        lit[k] += (s[k] - before[k]) / n_lat**2
    finally:
        tr.mirror = real_mirror
    out: dict[str, Any] = {"grad_batches": len(batches), "target_ratio": target}
    al, be = tc.alpha, tc.beta if beta_ok else 0.0

    def ratio(s, a, b) -> float:
        num = a * a * s["a2"] + 2 * a * b * s["ab"] + b * b * s["b2"]
        return math.sqrt(max(num, 0.0) / s["d2"]) if s["d2"] > 0 else float("nan")

    own = sums[tc.mirror_reduction]
    out["grad_ratio"] = ratio(own, al, be) if tc.mirror else f"{NA} (mirror off; with alpha, beta: {ratio(own, al, be):.4g})"
    out["grad_ratio_pixel"] = ratio(own, al, 0.0)
    out["grad_ratio_perceptual"] = ratio(own, 0.0, be) if beta_ok else f"{NA} (no VGG: beta = 0)"
    out["grad_ratio_paper"] = ratio(sums["paper"], al, be)
    out["grad_ratio_normalized"] = ratio(sums["normalized"], al, be)
    out["grad_ratio_literal"] = ratio(sums["literal"], al, be)
    a_t = solve_weight(own["a2"], own["ab"], own["b2"], own["d2"], be, target)
    out["alpha_for_target"] = a_t if a_t is not None else f"{NA} (beta's term alone exceeds the target)"
    if beta_ok:
        b_t = solve_weight(own["b2"], own["ab"], own["a2"], own["d2"], al, target)
        out["beta_for_target"] = b_t if b_t is not None else f"{NA} (alpha's term alone exceeds the target)"
    else:
        out["beta_for_target"] = f"{NA} (no VGG: beta = 0)"
    # crop vs full mirror loss on the configured reduction, on the recorded predictions
    rels = []
    with torch.no_grad():
        for z_t, eps, t, frames, masks in seen[::2]:
            kw = dict(reduction=tc.mirror_reduction, weighting=tc.mirror_weighting, t_max=tc.mirror_t_max,
                      margin=tc.mirror_margin)
            vgg = tr.vgg if beta_ok else None
            full = MirrorLoss(vgg, al or 1.0, be, crop=False, **kw)(z_t, eps, t, frames, masks, tr.encoders,
                                                                    tr.noise_scheduler).loss
            crop = MirrorLoss(vgg, al or 1.0, be, crop=True, **kw)(z_t, eps, t, frames, masks, tr.encoders,
                                                                   tr.noise_scheduler).loss
            if float(full) > 0:
                rels.append(abs(float(crop) - float(full)) / float(full))
    out["crop_vs_full_loss_rel"] = statistics.mean(rels) if rels else f"{NA} (no face in these batches)"
    return out


def crop_decode_on_batches(tr, batches: list[dict]) -> dict[str, Any]:
    """Face-crop decode vs full-frame decode on the VAE latents of these batches' frames (`crop_decode_error`)."""
    from .mirror_loss import crop_decode_error

    se, n, mx = 0.0, 0, 0.0
    for batch in batches:
        with torch.no_grad():
            z0 = tr.encoders.encode(batch["frames"].to(tr.device), sample=False).float()
        e = crop_decode_error(z0.flatten(0, 1), batch["face_masks"].flatten(0, 1).to(tr.device), tr.encoders,
                              tr.tc.mirror_margin)
        if e:
            se += e["face_rmse"] ** 2 * e["frames"]
            n += e["frames"]
            mx = max(mx, e["face_max_abs"])
    if not n:
        return {k: f"{NA} (no face in these batches)" for k in
                ("crop_vs_full_face_rmse", "crop_vs_full_face_max_abs", "crop_vs_full_face_psnr_db")}
    rmse = math.sqrt(se / n)
    return {"crop_vs_full_face_rmse": rmse, "crop_vs_full_face_max_abs": mx,
            "crop_vs_full_face_psnr_db": psnr_from_mse(rmse ** 2)}


def precision_checks(tr, batch: dict) -> dict[str, Any]:
    """Whether the loss terms of one forward pass stay finite under fp16 and bf16 autocast on this device."""
    out = {}
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        try:
            with torch.no_grad(), torch.autocast(tr.device.type, dtype=dt):
                terms = tr.compute_loss(batch, generator=torch.Generator().manual_seed(7))
            out[f"{name}_loss_finite"] = all(bool(torch.isfinite(v).all()) for v in terms.values())
        except (RuntimeError, NotImplementedError) as e:
            out[f"{name}_loss_finite"] = f"error: {str(e).strip().splitlines()[0][:160]}"
    return out


def measure(tc: TrainConfig, opts: PreflightOptions, trainer_factory: Callable[[TrainConfig], Any],
            log: Callable[[str], None]) -> dict[str, Any]:
    """Real steps on the run's device (see module docstring)."""
    tr = trainer_factory(tc)
    dev = tr.device
    out: dict[str, Any] = {"device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda"
                                                 else ""),
                           "init_sources": "; ".join(getattr(tr, "init_report", [])) or init_sources(tc),
                           "trainable_params": sum(p.numel() for p in tr.params),
                           "frozen_params": sum(p.numel() for p in tr.model.parameters() if not p.requires_grad)
                           + sum(p.numel() for p in tr.encoders.vae.parameters())
                           + sum(p.numel() for p in tr.encoders.clip.parameters())}
    phases = (("half", 0.5), ("full", 1.0)) if tc.progressive else (("full", 1.0),)
    finite = True
    kept: list[dict] = []
    for tag, scale in phases:
        it = tr._loader(scale)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for i in range(1 + opts.steps):
            batches = [next(it) for _ in range(tc.grad_accum)]
            _sync(dev)
            t0 = time.perf_counter()
            terms = tr.train_step(batches)
            _sync(dev)
            if i:
                times.append(time.perf_counter() - t0)
                kept.append(batches[0])  # the gradient balance and the crop check run on these
            finite = finite and math.isfinite(terms["loss"])
        out[f"step_s_{tag}"] = statistics.median(times)
        out[f"peak_mem_gib_{tag}"] = _peak_gib(dev)
        log(f"preflight: {tag} resolution {tuple(batches[0]['frames'].shape[-2:])}: "
            f"{out[f'step_s_{tag}']:.3f} s/step, peak {out[f'peak_mem_gib_{tag}']:.2f} GiB")
    if not tc.progressive:
        out["step_s_half"] = out["peak_mem_gib_half"] = f"{NA} (progressive: false)"
    out["steps_measured"] = opts.steps * len(phases)
    out["peak_mem_gib"] = max(v for k, v in out.items() if k.startswith("peak_mem_gib_") and isinstance(v, float))
    out["peak_mem_kind"] = ("torch.cuda.max_memory_allocated" if dev.type == "cuda"
                            else "process peak RSS (CPU: includes Python and libraries)")
    out["device_mem_gib"] = _device_gib(dev)
    out["fits_device"] = out["peak_mem_gib"] <= 0.95 * out["device_mem_gib"]
    out["loss_finite"] = finite
    n_half = int(tc.half_res_fraction * tc.max_steps) if tc.progressive else 0
    s_half = out["step_s_half"] if tc.progressive else 0.0
    out["hours_to_max_steps"] = (n_half * s_half + (tc.max_steps - n_half) * out["step_s_full"]) / 3600
    samples = tc.batch_size * tc.grad_accum
    for n in GPU_COUNTS:
        out[f"hours_paper_batch_gpus{n}"] = (out["hours_to_max_steps"] / samples * PAPER_GLOBAL_BATCH / n)
    out["hours_note"] = (f"hours_to_max_steps: this config on this device; hours_paper_batch_gpusN: max_steps at "
                         f"the paper's global batch {PAPER_GLOBAL_BATCH} split over N such devices (per-sample time "
                         "measured here, ideal scaling, communication not included)")
    log("preflight: gradient norms of the mirror and diffusion terms ...")
    out.update(gradient_balance(tr, kept, opts.target_ratio, seed=tc.seed))
    out.update(crop_decode_on_batches(tr, kept))
    out.update(precision_checks(tr, kept[-1]))
    return out


# ================================================================================================ driver


def missing_inputs(tc: TrainConfig) -> str:
    """The files/folders the config names that do not exist ('none' when all do): checked in every mode, so an
    estimate on a laptop already catches a typo in the command meant for the GPU machine."""
    missing = [f"{k}={getattr(tc, k)}" for k in ("data", "base", "clip_vision", "motion_module", "vgg",
                                                 "init_checkpoint", "ip_adapter", "controlnet")
               if getattr(tc, k) and not Path(getattr(tc, k)).exists()]
    return ", ".join(missing) if missing else "none"


def init_sources(tc: TrainConfig) -> str:
    """Where a new model's weights come from, by file (the measured preflight lists each mapping instead)."""
    if tc.init_checkpoint:
        return f"everything <- {Path(tc.init_checkpoint).name}"
    parts = [f"{what} <- {Path(getattr(tc, key)).name}" for what, key in (
        ("UNet (+ VAE)", "base"), ("motion modules", "motion_module"), ("A, H (init public)", "ip_adapter"),
        ("E_pose (init public)", "controlnet")) if getattr(tc, key)]
    return "; ".join(parts) or "random (random_init)"


def _settings(tc: TrainConfig, cfg: M2HConfig) -> dict[str, Any]:
    return {"preset": tc.preset, "height": cfg.height, "width": cfg.width, "num_frames": tc.num_frames,
            "batch_size": tc.batch_size, "grad_accum": tc.grad_accum, "mixed_precision": tc.mixed_precision,
            "gradient_checkpointing": tc.gradient_checkpointing, "lora_rank": tc.lora_rank,
            "max_steps": tc.max_steps, "progressive": tc.progressive, "mirror": tc.mirror,
            "mirror_reduction": tc.mirror_reduction, "alpha": tc.alpha, "beta": tc.beta}


def run_preflight(tc: TrainConfig, opts: PreflightOptions | None = None, *,
                  trainer_factory: Callable[[TrainConfig], Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Estimate, then measure when feasible (see module docstring); write preflight.json; return the report
    (every key of PREFLIGHT_KEYS)."""
    opts = opts or PreflightOptions()
    if opts.mode not in ("auto", "measure", "estimate"):
        raise ValueError(f"preflight mode must be auto, measure or estimate, got {opts.mode!r}")
    if trainer_factory is None:
        from .trainer import Trainer

        trainer_factory = Trainer
    cfg = tc.model_config()
    if tc.init_checkpoint:
        from .config import checkpoint_model_config

        cfg = checkpoint_model_config(tc)
    log("preflight: counting FLOPs and memory on the meta device ...")
    est = estimate(tc, cfg)
    report: dict[str, Any] = {k: f"{NA} (estimate mode)" for k in PREFLIGHT_KEYS}
    report.update(_settings(tc, cfg))
    report["trainable_params"], report["frozen_params"] = est.pop("_trainable"), est.pop("_frozen")
    report["inputs_missing"] = missing_inputs(tc)
    report["init_sources"] = init_sources(tc)
    report.update(est)
    cuda = torch.cuda.is_available()
    ram = _device_gib(torch.device("cpu"))
    feasible_cpu = est["est_cpu_step_s"] <= opts.cpu_step_limit_s and est["est_peak_mem_gib"] <= 0.7 * ram
    mode = opts.mode
    if mode == "auto":
        mode = "measure" if (cuda or feasible_cpu) else "estimate"
    if mode == "measure":
        report.update(measure(tc, opts, trainer_factory, log))
        report["mode"] = "measured"
        dev_gib = report["device_mem_gib"]
        if report["fits_device"]:
            report["first_change"] = "none"
        else:  # scale the measured peak by the estimate's ratios for each candidate change
            base = est["est_peak_mem_gib"]
            counts: dict = {}

            def fits(c: TrainConfig) -> bool:
                m = memory_estimate(cfg, c, batch=c.batch_size, gradient_checkpointing=c.gradient_checkpointing,
                                    lora_rank=c.lora_rank, counts=counts)
                return report["peak_mem_gib"] * _gib(m["peak"]) / base <= 0.95 * dev_gib
            report["first_change"] = first_change(tc, fits)
    else:
        report["mode"] = "estimate"
        report["device"] = "cuda" if cuda else "cpu (no GPU: meta-device estimates only)"
        why = (f"a step on this CPU is estimated at {est['est_cpu_step_s']:.0f} s (limit {opts.cpu_step_limit_s:g} s)"
               f" and {est['est_peak_mem_gib']:.1f} GiB (RAM {ram:.1f} GiB)")
        for k in PREFLIGHT_KEYS:
            if isinstance(report[k], str) and report[k].startswith(NA):
                report[k] = f"{NA} (estimate mode: {why})" if k == "steps_measured" else f"{NA} (estimate mode)"
    missing = [k for k in PREFLIGHT_KEYS if k not in report]
    if missing:  # pragma: no cover - a programming error
        raise RuntimeError(f"preflight report misses {missing}")
    report = {k: report[k] for k in PREFLIGHT_KEYS}
    path = Path(opts.out) if opts.out else Path(tc.output_dir) / "preflight.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v))
                                for k, v in report.items()}, indent=1))
    report["_json"] = str(path)
    return report


def format_report(report: dict[str, Any]) -> list[str]:
    """`key=value` lines (floats with 4 significant digits)."""
    lines = []
    for k in PREFLIGHT_KEYS:
        v = report[k]
        lines.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    if "_json" in report:
        lines.append(f"preflight_json={report['_json']}")
    return lines
