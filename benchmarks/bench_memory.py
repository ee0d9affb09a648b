"""Memory against video length (issue 15). Prints figures; asserts nothing.

e2e:  the whole `m2h generate` command (video file -> parsing, DWPose, face analysis -> sampler -> video file) as a
      subprocess, on tiny model files in the real formats (as tests/test_generate.py builds them) and a synthetic
      mannequin video written to disk at 720x1280 (W x H), for 16, 64 and 200 frames. Peak RSS of each run comes
      from the kernel (os.wait4).                                           e2e_memory_ratio_200_vs_16  target <= 1.10
sd15: the sd15 preset (random weights) at a reduced size, 1 step, CFG on, context windows 16/4, through
      `sample_video` in a subprocess, 16 vs 256 frames: peak RSS while sampling (the peak is reset after the model
      is built, which briefly holds two copies of the UNet); and the conditioning held per frame
      (M2HConditioning.nbytes: the UNet's extra input channels and A's tokens) at the reduced and the paper's
      512x256 size, with A's keys/values for the whole video (the former design) for comparison.
                                                                          sd15_memory_ratio_256_vs_16  target <= 1.15

    python benchmarks/bench_memory.py [--threads 1] [--steps 2] [--repo PATH] [--skip-e2e] [--skip-sd15]
                                      [--sd15-frames 16,256]

--repo runs `m2h generate` from another checkout (e.g. a copy with a patched generate.py); the model files are
built with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sampler import peak_rss_kib, reset_peak_rss, typed  # noqa: E402  (the same peak-RSS window)
from m2h_core.config import preset  # noqa: E402


# ------------------------------------------------------------------------------------------------ e2e (m2h generate)


def build_files(d: Path) -> None:
    """Tiny M2H checkpoint (VAE + CLIP embedded), tiny DWPose / face / parsing model files, an identity photo."""
    from PIL import Image

    from m2h_core.checkpoint import save_checkpoint
    from m2h_core.demo.synthetic import generate_clip
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.models.m2h import M2HModel
    from tests.test_preprocess_builders import build_dwpose_pair, build_face_pack, build_segformer

    cfg = preset("tiny")
    torch.manual_seed(0)
    save_checkpoint(M2HModel(cfg), d / "m2h_tiny.safetensors", encoders=FrozenEncoders.random(cfg))
    Image.fromarray(generate_clip(4, n_frames=1, height=256, width=192).identity_image).save(d / "person.png")
    models = d / "models"
    build_dwpose_pair(models / "dwpose")
    build_face_pack(models / "insightface" / "models" / "antelopev2")
    build_segformer(models / "human_parsing" / "segformer_b2_clothes")


def write_source_video(path: Path, n: int, height: int, width: int) -> None:
    """A synthetic mannequin clip rendered small and scaled up frame by frame to height x width (H.264)."""
    import cv2

    from m2h_core.demo.synthetic import generate_clip
    from m2h_core.video_io import VideoWriter

    clip = generate_clip(3, n_frames=n, height=128, width=72, motion="sway")
    with VideoWriter(path, 24) as out:
        for f in clip.mannequin:
            out.write(cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC))


def run_generate(repo: Path, d: Path, video: Path, steps: int, threads: int) -> dict:
    """One `python -m m2h_core generate` subprocess; returns its peak RSS (KiB), wall time and exit status."""
    out = d / f"out_{video.stem}.mp4"
    cmd = [sys.executable, "-m", "m2h_core", "generate", "--video", str(video), "--identity", str(d / "person.png"),
           "--out", str(out), "--checkpoint", str(d / "m2h_tiny.safetensors"), "--steps", str(steps),
           "--models-dir", str(d / "models"), "--device", "cpu", "--precision", "fp32"]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = open(d / f"log_{video.stem}.txt", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0:
        tail = (d / f"log_{video.stem}.txt").read_text()[-2000:]
        raise RuntimeError(f"m2h generate failed ({proc.returncode}):\n{tail}")
    from m2h_core.video_io import read_video

    return {"peak_kib": usage.ru_maxrss, "wall_s": time.perf_counter() - t0, "frames_out": read_video(out).num_frames}


def e2e(frame_counts: list[int], size: tuple[int, int], steps: int, threads: int, repo: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="m2h_bench_mem_") as tmp:
        d = Path(tmp)
        build_files(d)
        peaks = {}
        for n in frame_counts:
            video = d / f"mannequin_{n}.mp4"
            write_source_video(video, n, *size)
            r = run_generate(repo, d, video, steps, threads)
            if r["frames_out"] != n:
                raise RuntimeError(f"{n} frames in, {r['frames_out']} out")
            peaks[n] = r["peak_kib"]
            print(f"m2h generate, {n} frames of {size[1]}x{size[0]} (WxH): peak RSS {r['peak_kib'] / 1024:.0f} MiB, "
                  f"{r['wall_s']:.1f} s")
            print(f"e2e_peak_rss_mib_{n}={r['peak_kib'] / 1024:.0f}")
        lo, hi = min(frame_counts), max(frame_counts)
        for n in frame_counts:
            if n != lo:
                print(f"e2e_memory_ratio_{n}_vs_{lo}={peaks[n] / peaks[lo]:.3f}")
        if (lo, hi) != (16, 200):
            print(f"(asked ratio is 200 vs 16; measured {hi} vs {lo})")


# ------------------------------------------------------------------------------------------------ sd15 sampler


def sd15_inputs(cfg, n: int):
    g = torch.Generator().manual_seed(0)
    h, w = cfg.height, cfg.width
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = (torch.rand(n, h, w, generator=g) > 0.5).float()
    ident = torch.rand(3, h, w, generator=g)
    return frames, masks, frames.flip(1), ident, ident, torch.randn(512, generator=g)


def conditioning_bytes(model, enc, cfg, n: int) -> tuple[float, float]:
    """Bytes per frame held by the conditioning (CFG on): per-window keys/values, and whole-video keys/values."""
    args = sd15_inputs(cfg, n)
    out = []
    with torch.no_grad():
        inputs = enc.make_inputs(*(a[None] for a in args[:5]), args[5][None])
        for budget in (model.kv_cache_bytes, None):
            keep, model.kv_cache_bytes = model.kv_cache_bytes, budget
            try:
                out.append(model.encode_conditions(inputs, classifier_free=True).nbytes() / n)
            finally:
                model.kv_cache_bytes = keep
    return out[0], out[1]


def sd15_child(n: int, size: str, steps: int, context: int, overlap: int) -> None:
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.inference.sampler import SamplerSettings, sample_video
    from m2h_core.models.m2h import M2HModel

    cfg = preset("sd15")
    cfg.height, cfg.width = (int(v) for v in size.lower().split("x"))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, enc = M2HModel(cfg).eval(), FrozenEncoders.random(cfg)
    build_s = time.perf_counter() - t0
    sample_video(model, enc, *typed(sd15_inputs(cfg, 2)), settings=SamplerSettings(steps=1, context_frames=2,
                                                                            context_overlap=0))  # warm-up
    args = sd15_inputs(cfg, n)
    reset_peak_rss()
    base = peak_rss_kib()  # the model, encoders and inputs
    t0 = time.perf_counter()
    sample_video(model, enc, *typed(args), settings=SamplerSettings(steps=steps, context_frames=context,
                                                             context_overlap=overlap))
    peak = peak_rss_kib()
    result = {"growth_kib": peak - base, "peak_kib": peak, "sample_s": time.perf_counter() - t0, "build_s": build_s,
              "context": f"{context}/{overlap}"}
    if n <= 16:  # conditioning per frame, here and at the paper's size (2 frames suffice: it is per frame)
        result["cond_bytes"], result["cond_bytes_whole"] = conditioning_bytes(model, enc, cfg, n)
        cfg.height, cfg.width = 512, 256
        result["cond_bytes_512"], result["cond_bytes_whole_512"] = conditioning_bytes(model, enc, cfg, 2)
    print(json.dumps(result))


def sd15(frame_counts: list[int], size: str, steps: int, threads: int, context: int, overlap: int) -> None:
    res = {}
    for n in frame_counts:
        cmd = [sys.executable, __file__, "--sd15-child", str(n), "--sd15-size", size, "--steps", str(steps),
               "--threads", str(threads), "--sd15-context", str(context), "--sd15-overlap", str(overlap)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        res[n] = json.loads(out)
        r = res[n]
        print(f"sd15 at {size}, {n} frames, {steps} step(s), CFG, context {r['context']}: peak RSS during sampling "
              f"{r['peak_kib'] / 1024:.0f} MiB, above the loaded model and inputs {r['growth_kib'] / 1024:.0f} MiB, "
              f"sampling {r['sample_s']:.0f} s (model build {r['build_s']:.0f} s)")
    lo, hi = min(frame_counts), max(frame_counts)
    r = res[lo]
    print(f"sd15_memory_ratio_{hi}_vs_{lo}={res[hi]['peak_kib'] / res[lo]['peak_kib']:.3f}")
    print(f"sd15_growth_ratio_{hi}_vs_{lo}={max(res[hi]['growth_kib'], 1) / max(res[lo]['growth_kib'], 1):.3f}")
    print(f"conditioning_bytes_per_frame={r['cond_bytes']:.0f}")
    print(f"conditioning_bytes_per_frame_whole_video_kv={r['cond_bytes_whole']:.0f}")
    print(f"conditioning_bytes_per_frame_512x256={r['cond_bytes_512']:.0f}")
    print(f"conditioning_bytes_per_frame_512x256_whole_video_kv={r['cond_bytes_whole_512']:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the e2e runs")
    ap.add_argument("--frames", default="16,64,200", help="e2e frame counts")
    ap.add_argument("--size", default="1280x720", help="e2e source video H x W")
    ap.add_argument("--repo", default=str(ROOT), help="checkout whose `m2h generate` is measured")
    ap.add_argument("--sd15-frames", default="16,256")
    ap.add_argument("--sd15-size", default="128x64")
    ap.add_argument("--sd15-steps", type=int, default=1)
    ap.add_argument("--sd15-context", type=int, default=16, help="context window frames (AnimateDiff's 16)")
    ap.add_argument("--sd15-overlap", type=int, default=4)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-sd15", action="store_true")
    ap.add_argument("--sd15-child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.sd15_child:
        return sd15_child(a.sd15_child, a.sd15_size, a.steps, a.sd15_context, a.sd15_overlap)
    print(f"threads={a.threads} (other processes share this CPU: times are indicative, memory is not affected)")
    if not a.skip_e2e:
        e2e([int(v) for v in a.frames.split(",")], tuple(int(v) for v in a.size.lower().split("x")), a.steps,
            a.threads, Path(a.repo).resolve())
    if not a.skip_sd15:
        sd15([int(v) for v in a.sd15_frames.split(",")], a.sd15_size, a.sd15_steps, a.threads, a.sd15_context,
             a.sd15_overlap)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
