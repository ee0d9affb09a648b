"""Sampler speed and memory (issue 3), tiny preset on the CPU. Prints figures; asserts nothing.

overhead = sampler wall time / (steps x one bare UNet forward on the same batch)        target <= 1.10
naive    = the same for a straightforward sampler: separate cond / uncond passes, conditioning recomputed
           every step
memory   = peak RSS growth of a whole `sample_video` call for 64 frames / for 16 frames   target <= 1.25

    python benchmarks/bench_sampler.py [--steps 50] [--preset tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.config import preset  # noqa: E402
from m2h_core.inference.encoders import FrozenEncoders  # noqa: E402
from m2h_core.models.m2h import M2HModel  # noqa: E402
from m2h_core.inference.sampler import SamplerSettings, make_scheduler, sample_video  # noqa: E402


def inputs(cfg, n):
    g = torch.Generator().manual_seed(0)
    h, w = cfg.height, cfg.width
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = (torch.rand(n, h, w, generator=g) > 0.5).float()
    ident = torch.rand(3, h, w, generator=g)
    return frames, masks, frames.flip(1), ident, ident, torch.randn(512, generator=g)


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def naive_sample(model, enc, args, settings):
    """The straightforward loop this project avoids: everything recomputed, two UNet passes per step."""
    frames, masks, poses, ident, lm, arc = args
    sched = make_scheduler(settings.scheduler)
    sched.set_timesteps(settings.steps)
    g = torch.Generator().manual_seed(settings.seed)
    z = torch.randn(1, frames.shape[0], 4, *model.cfg.latent_size, generator=g)
    for t in sched.timesteps:
        inp = enc.make_inputs(frames[None], masks[None], poses[None], ident[None], lm[None], arc[None])
        e_c = model.denoise(z, t, model.encode_conditions(inp))
        e_u = model.denoise(z, t, model.encode_conditions(inp, drop=torch.tensor([True])))
        z = sched.step(e_u + settings.guidance_scale * (e_c - e_u), t, z).prev_sample
    return enc.decode(z[0])


def speed(cfg, steps):
    torch.manual_seed(0)
    model, enc = M2HModel(cfg).eval(), FrozenEncoders.random(cfg)
    n = cfg.num_frames
    args = inputs(cfg, n)
    settings = SamplerSettings(steps=steps, context_frames=n)
    with torch.no_grad():
        inp = enc.make_inputs(*(a[None] for a in args[:5]), args[5][None])
        cond = model.encode_conditions(inp, classifier_free=True)
        z = torch.randn(2, n, 4, *cfg.latent_size)
        model.denoise(z, torch.tensor(500), cond)  # warm-up
        unet = best_of(lambda: model.denoise(z, torch.tensor(500), cond), 5)
    sample_video(model, enc, *args, settings=SamplerSettings(steps=2, context_frames=n))  # warm-up
    ours = best_of(lambda: sample_video(model, enc, *args, settings=settings))
    naive = best_of(lambda: naive_sample(model, enc, args, settings))
    return unet, ours, naive


def sized(cfg_name, size):
    cfg = preset(cfg_name)
    if size:
        cfg.height, cfg.width = (int(v) for v in size.lower().split("x"))
    return cfg


def child(cfg_name, n, size=None, steps=2):
    cfg = sized(cfg_name, size)
    torch.manual_seed(0)
    model, enc = M2HModel(cfg).eval(), FrozenEncoders.random(cfg)
    args = inputs(cfg, n)
    sample_video(model, enc, *inputs(cfg, 2), settings=SamplerSettings(steps=1))  # allocator warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample_video(model, enc, *args, settings=SamplerSettings(steps=steps, context_frames=cfg.num_frames))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": peak - base, "peak_kib": peak}))


def memory(cfg_name, n, size=None, steps=2):
    cmd = [sys.executable, __file__, "--child", str(n), "--preset", cfg_name, "--steps", str(steps)]
    out = subprocess.run(cmd + (["--size", size] if size else []), check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--size", default=None, help="HxW pixels instead of the preset's (e.g. 128x64)")
    ap.add_argument("--memory-only", action="store_true", help="skip the speed figures (large presets on a CPU)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        return child(a.preset, a.child, a.size, a.steps)
    cfg = sized(a.preset, a.size)
    print(f"preset={a.preset} frames={cfg.num_frames} size={cfg.height}x{cfg.width} steps={a.steps} "
          f"threads={torch.get_num_threads()}")
    if not a.memory_only:
        unet, ours, naive = speed(cfg, a.steps)
        print(f"one UNet forward (cond+uncond batch): {unet * 1e3:.1f} ms")
        print(f"sampler:  {ours:.2f} s  = {ours / (a.steps * unet):.2f} x steps*UNet")
        print(f"naive:    {naive:.2f} s  = {naive / (a.steps * unet):.2f} x steps*UNet")
    mem_steps = a.steps if a.memory_only else 2
    m16, m64 = memory(a.preset, 16, a.size, mem_steps), memory(a.preset, 64, a.size, mem_steps)
    print(f"peak RSS growth during sampling: 16 frames {m16['growth_kib'] / 1024:.1f} MiB, "
          f"64 frames {m64['growth_kib'] / 1024:.1f} MiB (peak RSS {m16['peak_kib'] / 1024:.0f} / "
          f"{m64['peak_kib'] / 1024:.0f} MiB)")
    if not a.memory_only:
        print(f"sampler_overhead={ours / (a.steps * unet):.3f}")
        print(f"naive_overhead={naive / (a.steps * unet):.3f}")
    print(f"memory_ratio_64_vs_16={m64['peak_kib'] / m16['peak_kib']:.3f}")
    print(f"memory_growth_ratio_64_vs_16={max(m64['growth_kib'], 1) / max(m16['growth_kib'], 1):.3f}")


if __name__ == "__main__":
    main()
