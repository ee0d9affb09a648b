"""Zero-shot sampler vs diffusers' AnimateDiffControlNetPipeline (issue 28): step time and peak memory, same weights.

Both sides run the same random weights of a preset's sizes (tiny by default, at --size): SD-1.5-layout UNet +
AnimateDiff motion modules + ControlNet + IP-Adapter FaceID (projection, to_k_ip/to_v_ip), DDIM, CFG 6, the same
pose images and ArcFace embedding. Diffusers: `AnimateDiffControlNetPipeline` with its own IP-Adapter loader
(`_load_ip_adapter_weights` on the file's keys) and `ip_adapter_image_embeds`, FreeNoise context windows of the
same length/stride as ours for videos longer than one window. Ours: `zero_shot.sample_zero_shot` with the
sampler's defaults (chunks, split CFG, per-window key/value cache) plus the masked latent blend (half the frame
regenerated). Step time: median gap between step callbacks (both timed alternately in one process); peak RSS: one
subprocess per run (models built, then the peak window reset). Ratios < 1 are better for ours. Prints figures;
asserts nothing.

    python benchmarks/bench_zero_shot.py --threads 1 [--size 128x64] [--frames 16 48] [--steps 3] [--batch-cfg on]
    python benchmarks/bench_zero_shot.py --seam --threads 1      (mask modes: seam energy at a feathered edge)

--seam: latent_blend vs differential on one 16-frame video with a feathered regenerate mask (a 16 px linear ramp):
the mean absolute image gradient of the decoded frames inside the ramp, relative to the source's there (1 = as
smooth as the source). Random weights: the generated region is noise-like, so this measures how abruptly each
mode joins generated and kept content, not quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sampler import peak_rss_kib, reset_peak_rss, sized, step_times, tiny_text_encoder

from m2h_core.inference.inputs import IdentityInputs, VideoInputs
from m2h_core.inference.sampler import SamplerSettings, make_scheduler
from m2h_core.inference.zero_shot import ZeroShotEncoders, ZeroShotModel, ZeroShotPipeline, sample_zero_shot
from m2h_core.models.faceid import build_image_projection
from tests.zero_shot_fixtures import ip_kv_from_file, tiny_public

CFG_SCALE, CONTEXT, OVERLAP = 6.0, 16, 4
BATCH_CFG: bool | None = None  # --batch-cfg on|off: our SamplerSettings.batch_cfg (None: its default)


def parts(preset: str, size: str | None):
    base = sized(preset, size)
    p = tiny_public(0, base)
    tokenizer, text_encoder = tiny_text_encoder(p.cfg.unet.cross_attention_dim)
    return p, tokenizer, text_encoder


def inputs(p, n: int):
    g = torch.Generator().manual_seed(0)
    h, w = p.cfg.height, p.cfg.width
    frames = torch.rand(n, 3, h, w, generator=g)
    poses = torch.rand(n, 3, h, w, generator=g)
    cloth = torch.zeros(n, h, w)
    cloth[:, h // 2:] = 1
    arc = torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0)
    return VideoInputs(frames, cloth, poses), IdentityInputs(torch.rand(3, h, w), torch.zeros(3, h, w), arc), 1 - cloth


def ours(p, text_encoder, tokenizer):
    import copy

    ids = tokenizer(["a person walking", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = text_encoder(input_ids=ids).last_hidden_state
    model = ZeroShotModel.build(p.cfg, copy.deepcopy(p.unet2d), p.motion, copy.deepcopy(p.controlnet),
                                build_image_projection(p.ip_file["image_proj"], "faceid"),
                                ip_kv_from_file(p.unet2d, p.ip_file["ip_adapter"]), text)
    return ZeroShotPipeline(model, ZeroShotEncoders(copy.deepcopy(p.vae), None, p.cfg.vae.scaling_factor))


def theirs(p, text_encoder, tokenizer, n: int):
    import copy

    from diffusers import AnimateDiffControlNetPipeline

    pipe = AnimateDiffControlNetPipeline(vae=copy.deepcopy(p.vae), text_encoder=text_encoder, tokenizer=tokenizer,
                                         unet=copy.deepcopy(p.unet2d), motion_adapter=p.motion,
                                         controlnet=copy.deepcopy(p.controlnet),
                                         scheduler=make_scheduler("ddim"))
    pipe.unet._load_ip_adapter_weights([p.ip_file], low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    if n > CONTEXT:
        pipe.enable_free_noise(context_length=CONTEXT, context_stride=CONTEXT - OVERLAP)
    return pipe


def run_ours(pipe, p, n, steps, on_step=None):
    video, ident, regen = inputs(p, n)
    settings = SamplerSettings(steps=steps, guidance_scale=CFG_SCALE, context_frames=CONTEXT, context_overlap=OVERLAP,
                               **({} if BATCH_CFG is None else {"batch_cfg": BATCH_CFG}))
    cb = None if on_step is None else (lambda *_: on_step())
    return sample_zero_shot(pipe, video, ident, regen, settings, progress=cb)


def run_theirs(pipe, p, n, steps, on_step=None):
    from PIL import Image

    video, ident, _ = inputs(p, n)
    poses = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).astype("uint8")) for f in video.pose_images]
    embeds = torch.stack([torch.zeros_like(ident.arcface), ident.arcface])[:, None]  # [negative; positive]

    def callback(pipe_, i, t, kwargs):
        if on_step is not None:
            on_step()
        return kwargs

    with torch.no_grad():
        return pipe(prompt="a person walking", num_frames=n, height=p.cfg.height, width=p.cfg.width,
                    num_inference_steps=steps, guidance_scale=CFG_SCALE, conditioning_frames=poses,
                    ip_adapter_image_embeds=[embeds], generator=torch.Generator().manual_seed(0), output_type="np",
                    callback_on_step_end=callback, decode_chunk_size=16)


def child(preset, size, n, steps, who):
    p, tok, te = parts(preset, size)
    if who == "ours":
        pipe = ours(p, te, tok)
        run_ours(pipe, p, min(n, CONTEXT), 1)  # allocator warm-up
    else:
        pipe = theirs(p, te, tok, n)
        run_theirs(pipe, p, min(n, CONTEXT) if n <= CONTEXT else n, 1)
    reset_peak_rss()
    base = peak_rss_kib()
    (run_ours if who == "ours" else run_theirs)(pipe, p, n, steps)
    peak = peak_rss_kib()
    print(json.dumps({"growth_kib": peak - base, "peak_kib": peak}))


def memory(preset, size, n, steps, who):
    cmd = [sys.executable, __file__, "--child", str(n), "--who", who, "--preset", preset, "--steps", str(steps),
           "--threads", str(torch.get_num_threads()),
           "--batch-cfg", {None: "default", True: "on", False: "off"}[BATCH_CFG]] + (["--size", size] if size else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def seam(preset: str, size: str | None, steps: int) -> None:
    p, tok, te = parts(preset, size)
    pipe = ours(p, te, tok)
    video, ident, _ = inputs(p, 16)
    h, w = p.cfg.height, p.cfg.width
    ramp = ((torch.arange(w, dtype=torch.float32) - (w / 2 - 8)) / 16).clamp(0, 1)  # 0 left .. 1 right, 16 px
    mask = ramp.view(1, 1, w).expand(16, h, w)
    band = (mask > 0.02) & (mask < 0.98)

    def grad(x):  # (N, 3, H, W) -> (N, H, W) |dx| + |dy|
        gx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(1)
        gy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(1)
        return torch.nn.functional.pad(gx, (0, 1)) + torch.nn.functional.pad(gy, (0, 0, 0, 1))

    src = float(grad(pipe.encoders.decode(pipe.encoders.encode(video.frames)))[band].mean())
    settings = SamplerSettings(steps=steps, guidance_scale=CFG_SCALE, context_frames=CONTEXT, context_overlap=OVERLAP)
    for mode in ("latent_blend", "differential"):
        out = sample_zero_shot(pipe, video, ident, mask, settings, mode).frames
        print(f"seam energy {mode}: {float(grad(out)[band].mean()) / src:.3f} x the source's (in the 16 px ramp)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", default="128x64", help="HxW pixels")
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 48])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--seam", action="store_true", help="mask modes: seam energy at a feathered edge")
    ap.add_argument("--batch-cfg", choices=("default", "on", "off"), default="default",
                    help="our sampler's batch_cfg: CFG's two passes as one UNet call (on, as diffusers) or two (off)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--who", default="ours", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    global BATCH_CFG
    BATCH_CFG = {"default": None, "on": True, "off": False}[a.batch_cfg]
    if a.child:
        return child(a.preset, a.size, a.child, a.steps, a.who)
    if a.seam:
        return seam(a.preset, a.size, max(a.steps, 10))
    p, tok, te = parts(a.preset, a.size)
    print(f"zero-shot vs diffusers AnimateDiffControlNetPipeline (+ IP-Adapter FaceID): {a.preset} sizes at "
          f"{p.cfg.height}x{p.cfg.width}, windows {CONTEXT}/{OVERLAP}, DDIM, CFG {CFG_SCALE}, {a.steps} steps, "
          f"{torch.get_num_threads()} thread(s), our batch_cfg "
          f"{SamplerSettings(**({} if BATCH_CFG is None else {'batch_cfg': BATCH_CFG})).batch_cfg}")
    mine = ours(p, te, tok)
    for n in a.frames:
        pipe = theirs(p, te, tok, n)
        t_o, t_t = [], []
        for _ in range(2):  # alternate, best of two each
            t_o.append(step_times(lambda cb: run_ours(mine, p, n, a.steps, cb)))  # noqa: B023
            t_t.append(step_times(lambda cb: run_theirs(pipe, p, n, a.steps, cb)))  # noqa: B023
        o, t = min(t_o), min(t_t)
        line = f"{n} frames: step {o * 1e3:.1f} ms ours vs {t * 1e3:.1f} ms diffusers (ratio {o / t:.3f})"
        if not a.no_memory:
            mo, mt = (memory(a.preset, a.size, n, a.steps, w) for w in ("ours", "theirs"))
            line += (f"; peak RSS {mo['peak_kib'] / 1024:.0f} vs {mt['peak_kib'] / 1024:.0f} MiB, growth during the "
                     f"call {mo['growth_kib'] / 1024:.1f} vs {mt['growth_kib'] / 1024:.1f} MiB")
        print(line, flush=True)


if __name__ == "__main__":
    main()
