"""Cost of the mirror loss in a training step: no mirror vs mirror with face-crop decoding vs full-frame decoding.

    python benchmarks/bench_train_step.py                 # tiny preset, CPU (default)
    python benchmarks/bench_train_step.py --preset sd15 --frames 2 --device cuda   # the paper's sizes
    python benchmarks/bench_train_step.py --decoder-only  # + SD-1.5-sized VAE decode+backward, crop vs full
    python benchmarks/bench_train_step.py --flops --skip-step   # SD-1.5 sizes by FLOP count (meta device, no memory)
(`train/train.py --preflight` gives the whole picture for a config: memory, hours, loss balance.)

Prints key=value lines: step_s_nomirror, step_s_crop, step_s_full, mirror_overhead_crop (fraction of the
no-mirror step), mirror_overhead_full, decoded_pixels_crop/full. Target: mirror_overhead_crop <= 0.30.
Random weights (the cost does not depend on them); synthetic clips with a real face mask.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.inference.encoders import FrozenEncoders  # noqa: E402
from m2h_core.training.mirror_loss import MirrorLoss  # noqa: E402
from m2h_core.training.config import TrainConfig  # noqa: E402
from m2h_core.demo.synthetic import synthetic_training_data  # noqa: E402
from m2h_core.training.trainer import Trainer  # noqa: E402


def time_steps(tr: Trainer, batch: dict, n: int, warmup: int = 1) -> float:
    times = []
    for i in range(warmup + n):
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr.train_step([batch])
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_step(preset: str, frames: int, batch_size: int, n: int, device: str | None) -> dict[str, float]:
    from accelerate import Accelerator

    tc = TrainConfig.from_dict(dict(preset=preset, random_init=True, synthetic_clips=batch_size,
                                    synthetic_frames=max(12, frames), num_frames=frames, frame_stride=1,
                                    batch_size=batch_size, max_steps=10**6, progressive=False,
                                    output_dir="/tmp/m2h_bench", vae_sample=False,
                                    mixed_precision="bf16" if device == "cuda" else "no",
                                    gradient_checkpointing=preset == "sd15"))
    acc = Accelerator(mixed_precision=tc.mixed_precision, cpu=device == "cpu")
    tr = Trainer(tc, accelerator=acc, dataset=synthetic_training_data)
    batch = next(tr._loader(1.0))
    out: dict[str, float] = {}
    modes = {"nomirror": None, "crop": MirrorLoss(tr.vgg, crop=True), "full": MirrorLoss(tr.vgg, crop=False)}
    for _ in range(2):  # interleave the modes twice, keep the faster, to damp machine noise
        for name, loss in modes.items():
            tr.mirror = loss
            t = time_steps(tr, batch, n)
            out[f"step_s_{name}"] = min(out.get(f"step_s_{name}", float("inf")), t)
    base = out["step_s_nomirror"]
    out["mirror_overhead_crop"] = (out["step_s_crop"] - base) / base
    out["mirror_overhead_full"] = (out["step_s_full"] - base) / base
    face = batch["face_masks"].float().mean().item()
    out["face_area_fraction"] = face
    # decoded pixels per step, from one mirror evaluation
    g = torch.Generator().manual_seed(0)
    for name in ("crop", "full"):
        z = torch.randn(batch_size, frames, 4, *tr.cfg.latent_size, generator=g).to(tr.device)
        mo = modes[name](z, z, torch.full((batch_size,), 100, device=tr.device), batch["frames"].to(tr.device),
                         batch["face_masks"].to(tr.device), tr.encoders, tr.noise_scheduler)
        out[f"decoded_pixels_{name}"] = mo.decoded_pixels
    return out


def bench_decoder_sd15(device: str, n: int = 2) -> dict[str, float]:
    """SD-1.5 VAE decoder (random weights) + VGG: forward+backward for one 512x256 frame, full vs a face crop of
    8x6 latent cells (a ~40x30 px face + 2-cell margin)."""
    from m2h_core.config import sd15
    from m2h_core.training.components import make_train_scheduler
    from m2h_core.vgg import VGGFeatures

    cfg = sd15()
    enc = FrozenEncoders.random(cfg).to(device)
    vgg = VGGFeatures.random(0).to(device)
    sched = make_train_scheduler()
    h, w = cfg.latent_size
    masks = torch.zeros(1, 1, cfg.height, cfg.width, device=device)
    masks[..., 40:80, 110:140] = 1
    target = torch.rand(1, 1, 3, cfg.height, cfg.width, device=device)
    out = {}
    for name, crop in (("crop", True), ("full", False)):
        loss_fn = MirrorLoss(vgg, crop=crop)
        ts = []
        for i in range(n + 1):
            z = torch.randn(1, 1, 4, h, w, device=device, requires_grad=True)
            t0 = time.perf_counter()
            mo = loss_fn(z.detach(), z, torch.tensor([100]), target, masks, enc, sched)
            mo.loss.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                ts.append(time.perf_counter() - t0)
        out[f"sd15_decoder_s_{name}"] = statistics.median(ts)
        out[f"sd15_decoded_pixels_{name}"] = mo.decoded_pixels
    out["sd15_decoder_crop_speedup"] = out["sd15_decoder_s_full"] / out["sd15_decoder_s_crop"]
    return out


def flops_sd15(frames: int = 8, margin: int = 2) -> dict[str, float]:
    """FLOPs of one SD-1.5-sized training step (batch 1, `frames` frames) and of the mirror loss, counted on the
    meta device (no memory, no weights) by `m2h_core.training.preflight.count_step`, at 512x256 and at the half
    phase. The face is preflight.FACE_PX_AT_512x256 (UBC framing) + `margin` cells per side."""
    from m2h_core.config import sd15
    from m2h_core.training.preflight import count_step, face_cells

    cfg = sd15()
    out: dict[str, float] = {}
    for tag, (hh, ww) in (("", (512, 256)), ("_half", (256, 128))):
        cells = face_cells(hh, ww, cfg.vae.downscale, margin)
        crop = count_step(cfg, 1, frames, hh, ww, mirror_cells=cells)
        full = count_step(cfg, 1, frames, hh, ww, mirror_cells=(hh // 8, ww // 8))
        total = crop["step_flops"] + crop["encoder_flops"]
        out[f"sd15{tag}_step_tflops"] = total / 1e12
        out[f"sd15{tag}_mirror_full_tflops"] = full["mirror_flops"] / 1e12
        out[f"sd15{tag}_mirror_crop_tflops"] = crop["mirror_flops"] / 1e12
        out[f"sd15{tag}_crop_cells"] = f"{cells[0]}x{cells[1]}"
        out[f"sd15{tag}_mirror_overhead_full_flops"] = full["mirror_flops"] / total
        out[f"sd15{tag}_mirror_overhead_crop_flops"] = crop["mirror_flops"] / total
        out[f"sd15{tag}_activations_gib_fp32"] = crop["activation_bytes"] / 2**30
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=("tiny", "sd15"))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (median)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--decoder-only", action="store_true", help="also time the SD-1.5 VAE decoder crop vs full")
    ap.add_argument("--flops", action="store_true", help="also count SD-1.5-sized step / mirror FLOPs (meta device)")
    ap.add_argument("--skip-step", action="store_true", help="skip the timed steps")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is steadiest on a shared CPU)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"preset={a.preset} device={a.device} frames={a.frames} batch={a.batch_size} "
          f"threads={torch.get_num_threads()}")
    res = {} if a.skip_step else bench_step(a.preset, a.frames, a.batch_size, a.steps, a.device)
    if a.flops:
        res.update(flops_sd15(a.frames))
    if a.decoder_only:
        res.update(bench_decoder_sd15(a.device))
    for k, v in res.items():
        print(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
