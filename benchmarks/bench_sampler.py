"""Sampler speed and memory (issue 3), tiny preset on the CPU. Prints figures; asserts nothing.

overhead = sampler wall time / (steps x the bare UNet calls of one step: the [cond; uncond] batch, or the two CFG
           calls with SamplerSettings.batch_cfg False, the default)                      target <= 1.10
naive    = the same for a straightforward sampler: separate cond / uncond passes, conditioning recomputed
           every step
memory   = peak RSS of a whole `sample_video` call for 64 frames / for 16 frames   target <= 1.25 (the peak is
           reset after the models are built: Linux /proc/self/clear_refs)
vs diffusers (issue 15): diffusers' own `AnimateDiffPipeline` on a UNet of the same size (the same UNet2D + motion
           adapter configs, 4 input channels, text embeddings of 77 tokens in place of M2H's conditioning), with its
           FreeNoise context windows of the same length and stride as ours, DDIM, CFG 7.5, for 16 and 64 frames:
           wall time per denoising step (median over steps, both pipelines timed alternately in one process, so
           load from other processes hits both alike) and peak RSS of a whole call including the VAE decode (one
           subprocess each). Printed as ours / theirs: < 1 is better. Ours runs with SamplerSettings' defaults
           (`chunk_frames` 64, `batch_cfg` False: CFG's two passes as two calls) unless --chunk-frames / --batch-cfg
           say otherwise (--chunk-frames 8 = one window per UNet call, the per-window path). Diffusers runs CFG as
           one batch; ours takes the exact CFG shortcuts of adapter.py (the first spatial self-attention once for
           both passes, no attention over the unconditional branch's zero tokens).

    python benchmarks/bench_sampler.py [--steps 50] [--preset tiny] [--threads 1] [--no-diffusers]
    python benchmarks/bench_sampler.py --diffusers-only --threads 1 [--vs-steps 4] [--chunk-frames N]
    python benchmarks/bench_sampler.py --diffusers-only --threads 1 --only-frames 64 --vs-steps 3   (step time only)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.config import preset  # noqa: E402
from m2h_core.inference.encoders import FrozenEncoders  # noqa: E402
from m2h_core.models.m2h import M2HModel  # noqa: E402
from m2h_core.inference.inputs import IdentityInputs, VideoInputs  # noqa: E402
from m2h_core.inference.sampler import SamplerSettings, make_scheduler, sample_video  # noqa: E402



def typed(args):
    """(frames, masks, poses, identity image, landmarks, arcface) -> the sampler's typed inputs."""
    return VideoInputs(*args[:3]), IdentityInputs(*args[3:])

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
    settings = SamplerSettings(steps=steps, context_frames=n, **chunk_kw())
    with torch.no_grad():
        inp = enc.make_inputs(*(a[None] for a in args[:5]), args[5][None])
        cond = model.encode_conditions(inp, classifier_free=True)
        z = torch.randn(1, n, 4, *cfg.latent_size)
        t = torch.tensor(500)
        if settings.batch_cfg:  # the CFG pair the sampler passes, as one batch
            bare = lambda: model.denoise(torch.cat([z, z]), t, cond)  # noqa: E731
        else:  # the sampler's two calls (the second reuses the first's first self-attention)
            c, u = cond.branches()

            def bare():
                shared: dict = {}
                model.denoise(z, t, c, shared_first=shared)
                model.denoise(z, t, u, shared_first=shared)
        bare()  # warm-up
        unet = best_of(bare, 5)
    sample_video(model, enc, *typed(args), settings=SamplerSettings(steps=2, context_frames=n))  # warm-up
    ours = best_of(lambda: sample_video(model, enc, *typed(args), settings=settings))
    naive = best_of(lambda: naive_sample(model, enc, args, settings))
    return unet, ours, naive


# -- side by side with diffusers' AnimateDiffPipeline ---------------------------------------------------------------


def diffusers_pipeline(cfg, context: int, overlap: int):
    """AnimateDiffPipeline with a UNetMotionModel of the M2H UNet's size, FreeNoise windows like our context windows."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

    kw = cfg.unet.unet_kwargs()
    kw["in_channels"] = cfg.unet.latent_channels
    enc = FrozenEncoders.random(cfg)
    tokenizer, text_encoder = tiny_text_encoder(cfg.unet.cross_attention_dim)
    pipe = AnimateDiffPipeline(vae=enc.vae, text_encoder=text_encoder, tokenizer=tokenizer,
                               unet=UNet2DConditionModel(**kw),
                               motion_adapter=MotionAdapter(**cfg.unet.motion_kwargs()),
                               scheduler=make_scheduler("ddim", prediction_type=cfg.prediction_type))
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    if context:
        pipe.enable_free_noise(context_length=context, context_stride=context - overlap)
    return pipe


def tiny_text_encoder(width: int):
    """A CLIP tokenizer (a few-word vocabulary, written to a temp folder) and a one-layer CLIP text encoder of the
    UNet's cross-attention width: FreeNoise encodes the prompt itself (77 tokens, as SD's text encoder gives)."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    words = ["<|startoftext|>", "<|endoftext|>", "a</w>", "person</w>", "walking</w>"]
    d = tempfile.mkdtemp(prefix="m2h_bench_tok_")
    Path(d, "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    Path(d, "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")), model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(words), hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                        projection_dim=width))
    return tokenizer, text.eval()


def run_diffusers(pipe, cfg, n: int, steps: int, output_type: str = "np", on_step=None):
    g = torch.Generator().manual_seed(0)

    def callback(p, i, t, kwargs):
        if on_step is not None:
            on_step()
        return kwargs

    with torch.no_grad():
        return pipe(num_frames=n, height=cfg.height, width=cfg.width, num_inference_steps=steps, guidance_scale=7.5,
                    prompt="a person walking", output_type=output_type,
                    generator=g, callback_on_step_end=callback, decode_chunk_size=16)


def step_times(run) -> float:
    """Median wall time between consecutive step callbacks of one run (the first step's warm-up excluded)."""
    stamps = []
    run(lambda *_: stamps.append(time.perf_counter()))
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return gaps[len(gaps) // 2]


CHUNK = -1  # SamplerSettings.chunk_frames of our runs (--chunk-frames; -1 = the default)
BATCH_CFG = "default"  # SamplerSettings.batch_cfg of our runs (--batch-cfg on|off|default)


def chunk_kw() -> dict:
    kw = {} if CHUNK < 0 else {"chunk_frames": CHUNK}
    if BATCH_CFG != "default":
        kw["batch_cfg"] = BATCH_CFG == "on"
    return kw


def vs_diffusers_speed(cfg, frames, steps: int, context: int, overlap: int) -> dict[int, tuple[float, float]]:
    torch.manual_seed(0)
    model, enc = M2HModel(cfg).eval(), FrozenEncoders.random(cfg)
    pipe = diffusers_pipeline(cfg, context, overlap)
    out = {}
    for n in frames:
        args = inputs(cfg, n)
        settings = SamplerSettings(steps=steps, context_frames=context, context_overlap=overlap, **chunk_kw())
        ours = lambda cb: sample_video(model, enc, *typed(args), settings=settings, progress=cb)  # noqa: E731
        theirs = lambda cb: run_diffusers(pipe, cfg, n, steps, "latent", cb)  # noqa: E731
        t_ours, t_theirs = [], []
        for _ in range(2):  # alternate, best of two each
            t_ours.append(step_times(ours))
            t_theirs.append(step_times(theirs))
        out[n] = (min(t_ours), min(t_theirs))
    return out


def diffusers_child(cfg_name, n, size=None, steps=2, context=8, overlap=4):
    cfg = sized(cfg_name, size)
    torch.manual_seed(0)
    pipe = diffusers_pipeline(cfg, context, overlap)
    run_diffusers(pipe, cfg, context, 1)  # allocator warm-up (FreeNoise needs at least one window)
    reset_peak_rss()
    base = peak_rss_kib()
    run_diffusers(pipe, cfg, n, steps)
    peak = peak_rss_kib()
    print(json.dumps({"growth_kib": peak - base, "peak_kib": peak}))


def vs_diffusers(cfg_name, size, steps: int, threads: int, frames=(16, 64), with_memory: bool = True) -> None:
    cfg = sized(cfg_name, size)
    context, overlap = cfg.num_frames, min(4, cfg.num_frames - 1)
    print(f"vs diffusers AnimateDiffPipeline + FreeNoise: {cfg_name} UNet, {cfg.height}x{cfg.width}, windows of "
          f"{context} frames, stride {context - overlap}, DDIM, CFG 7.5, {threads} thread(s), our chunk_frames "
          f"{CHUNK if CHUNK >= 0 else SamplerSettings().chunk_frames}, "
          f"batch_cfg {SamplerSettings(**chunk_kw()).batch_cfg}")
    speed_ = vs_diffusers_speed(cfg, frames, steps, context, overlap)
    mem = {}
    for who in ("ours", "theirs") if with_memory else ():
        for n in frames:
            mem[who, n] = memory(cfg_name, n, size, steps, diffusers=who == "theirs")
    for n in frames:
        o, t = speed_[n]
        line = f"{n} frames: step {o * 1e3:.1f} ms ours vs {t * 1e3:.1f} ms diffusers"
        if with_memory:
            line += (f"; peak RSS {mem['ours', n]['peak_kib'] / 1024:.0f} vs {mem['theirs', n]['peak_kib'] / 1024:.0f} "
                     f"MiB, growth during the call {mem['ours', n]['growth_kib'] / 1024:.1f} vs "
                     f"{mem['theirs', n]['growth_kib'] / 1024:.1f} MiB")
        print(line)
    for n in frames:
        print(f"vs_diffusers_step_time_{n}={speed_[n][0] / speed_[n][1]:.3f}")
    for n in frames if with_memory else ():
        print(f"vs_diffusers_memory_{n}={mem['ours', n]['peak_kib'] / mem['theirs', n]['peak_kib']:.3f}")
        growth = max(mem['ours', n]['growth_kib'], 1) / max(mem['theirs', n]['growth_kib'], 1)
        print(f"vs_diffusers_memory_growth_{n}={growth:.3f}")
    if 64 in frames:
        print(f"vs_diffusers_step_time={speed_[64][0] / speed_[64][1]:.3f}")


def sized(cfg_name, size):
    cfg = preset(cfg_name)
    if size:
        cfg.height, cfg.width = (int(v) for v in size.lower().split("x"))
    return cfg


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: VmHWM := VmRSS), so building the models does not set the peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def child(cfg_name, n, size=None, steps=2):
    cfg = sized(cfg_name, size)
    torch.manual_seed(0)
    model, enc = M2HModel(cfg).eval(), FrozenEncoders.random(cfg)
    args = inputs(cfg, n)
    warm = SamplerSettings(steps=1)
    sample_video(model, enc, *typed(inputs(cfg, cfg.num_frames)), settings=warm)  # allocator warm-up
    reset_peak_rss()
    base = peak_rss_kib()
    sample_video(model, enc, *typed(args), settings=SamplerSettings(steps=steps, context_frames=cfg.num_frames,
                                                             context_overlap=min(4, cfg.num_frames - 1),
                                                             **chunk_kw()))
    peak = peak_rss_kib()
    print(json.dumps({"growth_kib": peak - base, "peak_kib": peak}))


def memory(cfg_name, n, size=None, steps=2, diffusers=False):
    cmd = [sys.executable, __file__, "--child", str(n), "--preset", cfg_name, "--steps", str(steps),
           "--threads", str(torch.get_num_threads()), "--chunk-frames", str(CHUNK), "--batch-cfg", BATCH_CFG] + (
        ["--child-diffusers"] if diffusers else [])
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
    ap.add_argument("--no-diffusers", action="store_true", help="skip the side-by-side with AnimateDiffPipeline")
    ap.add_argument("--diffusers-only", action="store_true", help="only the side-by-side with AnimateDiffPipeline")
    ap.add_argument("--vs-steps", type=int, default=4, help="denoising steps of each side-by-side run")
    ap.add_argument("--vs-size", default="256x128",
                    help="HxW of the side-by-side (at the tiny preset's 64x32 both peaks are the libraries')")
    ap.add_argument("--chunk-frames", type=int, default=-1,
                    help="our sampler's chunk_frames (at most this many frames per UNet call; -1 = its default, <= the "
                         "context window = one window per call, the per-window path)")
    ap.add_argument("--batch-cfg", choices=("default", "on", "off"), default="default",
                    help="our sampler's batch_cfg: CFG's two passes as one UNet call (on) or two calls (off)")
    ap.add_argument("--only-frames", type=int, default=0,
                    help="side by side at this many frames only, step time only (a quick look)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-diffusers", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    global CHUNK, BATCH_CFG
    CHUNK, BATCH_CFG = a.chunk_frames, a.batch_cfg
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        if a.child_diffusers:
            return diffusers_child(a.preset, a.child, a.size, a.steps)
        return child(a.preset, a.child, a.size, a.steps)
    if a.diffusers_only:
        frames = (a.only_frames,) if a.only_frames else (16, 64)
        return vs_diffusers(a.preset, a.vs_size, a.vs_steps, torch.get_num_threads(), frames, not a.only_frames)
    cfg = sized(a.preset, a.size)
    print(f"preset={a.preset} frames={cfg.num_frames} size={cfg.height}x{cfg.width} steps={a.steps} "
          f"threads={torch.get_num_threads()}")
    if not a.memory_only:
        unet, ours, naive = speed(cfg, a.steps)
        how = "one batch" if SamplerSettings(**chunk_kw()).batch_cfg else "two calls"
        print(f"the UNet calls of one step (CFG {how}): {unet * 1e3:.1f} ms")
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
    if not (a.no_diffusers or a.memory_only):
        vs_diffusers(a.preset, a.vs_size, a.vs_steps, torch.get_num_threads())


if __name__ == "__main__":
    main()
