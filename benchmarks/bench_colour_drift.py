"""Colour stability across context windows (issue 15). Prints figures; asserts nothing.

A long synthetic mannequin clip (200 frames) goes through the real sampler (`sample_video`: DDIM, CFG, overlapping
context windows blended by `window_weights`); per output frame we take the mean RGB colour and the mean luma
(Rec. 601), and compare the frame-to-frame jumps at window boundaries (the transitions where a window starts or
ends) with the jumps inside windows. A ratio near 1 means the windows leave no seam in colour; > 1 means the
boundaries are visible as colour/brightness steps. The mannequin video's own jumps at the same transitions are
printed as the content's baseline.

Model: the tiny preset with perturbed random weights (every branch carries signal) and the pretrained tiny VAE
the demo ships, or a checkpoint (`--checkpoint`, e.g. one written by `m2h demo`).

    python benchmarks/bench_colour_drift.py [--frames 200] [--steps 20] [--cfg 1.5] [--context 8] [--overlap 4]
                                           [--static] [--checkpoint m2h_demo_out/m2h_tiny.safetensors]
                                           [--ramp-power 2] [--chunk-frames N]

Chunks of windows (`SamplerSettings.chunk_frames`, default 64): one UNet call per chunk, the windows blended inside
every motion module; chunks are blended at the output as windows are. The transitions at chunk edges (where a chunk
starts or ends, a subset of the window edges) are reported on their own as well. --chunk-frames 8 (= the context)
is the per-window path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.frames import to_float, to_nchw, to_nhwc  # noqa: E402
from m2h_core.inference.inputs import IdentityInputs, VideoInputs  # noqa: E402
from m2h_core.inference.sampler import SamplerSettings, chunk_plan, context_windows, sample_video  # noqa: E402

LUMA = np.array([0.299, 0.587, 0.114])



def typed(args):
    """(frames, masks, poses, identity image, landmarks, arcface) -> the sampler's typed inputs."""
    return VideoInputs(*args[:3]), IdentityInputs(*args[3:])

def model_and_encoders(checkpoint: str | None):
    from m2h_core.inference.encoders import FrozenEncoders

    if checkpoint:
        from m2h_core.inference.pipeline import load_pipeline

        pipe = load_pipeline(checkpoint, device="cpu", dtype=torch.float32)
        return pipe.model.eval(), pipe.encoders
    from m2h_core.demo.recipe import DemoSettings
    from m2h_core.demo.tiny_vae import load_vae_weights
    from tests.fixtures import build_m2h_model

    cfg = DemoSettings().model_config()
    # the figures here were measured with the tiny preset's model defaults on the demo's VAE
    cfg.prediction_type, cfg.clothing_skip, cfg.clothing_fill = "epsilon", False, "black"
    enc = FrozenEncoders.random(cfg)
    load_vae_weights(enc.vae)
    return build_m2h_model(cfg, seed=0, perturb=True), enc


def clip_tensors(cfg, n: int, seed: int, static: bool):
    """A walking mannequin clip, or (static) its first frame held for n frames: then the content does not change
    at all, and every frame-to-frame change of the output comes from the sampler (noise, windows)."""
    from m2h_core.demo.synthetic import generate_clip

    clip = generate_clip(seed, n_frames=1 if static else n, height=cfg.height, width=cfg.width, motion="walk")
    rep = (lambda a: np.repeat(a, n, axis=0)) if static else (lambda a: a)  # noqa: E731
    t = lambda a: to_nchw(to_float(a))  # noqa: E731
    args = (t(rep(clip.mannequin)), torch.from_numpy(rep(clip.clothing_mask).astype(np.float32)),
            t(rep(clip.pose_images)), t(clip.identity_image[None])[0], t(clip.identity_landmarks[None])[0],
            torch.from_numpy(clip.identity_embedding))
    return args, rep(clip.mannequin)


def boundary_transitions(n: int, context: int, overlap: int) -> np.ndarray:
    """Bool (n-1,): transition t -> t+1 crosses a window edge (a window starts at t+1 or ends at t)."""
    edges = np.zeros(n - 1, bool)
    for w in context_windows(n, context, overlap):
        s, e = int(w[0]), int(w[-1])
        if s > 0:
            edges[s - 1] = True
        if e < n - 1:
            edges[e] = True
    return edges


def chunk_transitions(n: int, context: int, overlap: int, chunk_frames: int) -> np.ndarray:
    """Bool (n-1,): transition t -> t+1 crosses a chunk edge (a chunk starts at t+1 or ends at t)."""
    edges = np.zeros(n - 1, bool)
    for c in chunk_plan(n, context, overlap, chunk_frames):
        s, e = int(c.index[0]), int(c.index[-1])
        if s > 0:
            edges[s - 1] = True
        if e < n - 1:
            edges[e] = True
    return edges


def jumps(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """frames (N, H, W, 3) in [0, 255] -> |mean colour step| (L2 over RGB) and |mean luma step| per transition."""
    mean = frames.reshape(len(frames), -1, 3).mean(axis=1)
    colour = np.linalg.norm(np.diff(mean, axis=0), axis=1)
    luma = np.abs(np.diff(mean @ LUMA))
    return colour, luma


def report(name: str, frames: np.ndarray, edges: np.ndarray) -> dict[str, float]:
    colour, luma = jumps(frames)
    out = {}
    for what, j in (("colour", colour), ("luma", luma)):
        b, i = j[edges].mean(), j[~edges].mean()
        se = np.sqrt(j[edges].var() / edges.sum() + j[~edges].var() / (~edges).sum())  # s.e. of b - i
        out[what] = b / i
        print(f"{name}: mean {what} jump at window boundaries {b:.3f}, inside windows {i:.3f} (0-255 scale), "
              f"ratio {b / i:.3f}, difference {b - i:+.3f} +- {se:.3f} (1 s.e.)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=1.5, help="guidance scale (the demo's)")
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="an M2H checkpoint (default: perturbed random tiny model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--static", action="store_true", help="hold the first frame: content never changes")
    ap.add_argument("--chunk-frames", type=int, default=-1,
                    help="SamplerSettings.chunk_frames (-1: its default; the context length: the per-window path)")
    ap.add_argument("--ramp-power", type=float, default=1.0,
                    help="experiment: blend with sampler.window_weights ** p (p > 1: the edge weight 1/(overlap+1) "
                         "shrinks to its p-th power, so less of the prediction switches windows at an edge)")
    a = ap.parse_args()
    if a.ramp_power != 1.0:  # a proposed sampler change, tried here without editing the sampler
        import m2h_core.inference.sampler as sampler_mod

        plain = sampler_mod.window_weights
        sampler_mod.window_weights = lambda *args: plain(*args) ** a.ramp_power
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, enc = model_and_encoders(a.checkpoint)
    args, source = clip_tensors(model.cfg, a.frames, seed=7, static=a.static)
    settings = SamplerSettings(steps=a.steps, guidance_scale=a.cfg, seed=a.seed, context_frames=a.context,
                               context_overlap=a.overlap)
    if a.chunk_frames >= 0:
        settings = SamplerSettings(**{**settings.__dict__, "chunk_frames": a.chunk_frames})
    t0 = time.perf_counter()
    out = sample_video(model, enc, *typed(args), settings=settings)
    frames = to_nhwc(out.frames).numpy() * 255
    edges = boundary_transitions(a.frames, a.context, a.overlap)
    print(f"{a.frames} frames {model.cfg.height}x{model.cfg.width}, {a.steps} steps, CFG {a.cfg}, context "
          f"{a.context}/{a.overlap}, chunks of <= {settings.chunk_frames} frames, ramp power {a.ramp_power:g}: "
          f"{int(edges.sum())} boundary and {int((~edges).sum())} inner transitions "
          f"({time.perf_counter() - t0:.0f} s)")
    if not a.static:
        report("mannequin (input)", source.astype(np.float64), edges)
    r = report("generated", frames, edges)
    print(f"boundary_vs_inside_colour_jump={r['colour']:.3f}")
    print(f"boundary_vs_inside_luma_jump={r['luma']:.3f}")
    chunk_edges = chunk_transitions(a.frames, a.context, a.overlap, settings.chunk_frames)
    if chunk_edges.any():
        print(f"{int(chunk_edges.sum())} transitions at chunk edges:")
        rc = report("generated, chunk edges vs the rest", frames, chunk_edges)
        print(f"chunk_edge_vs_rest_colour_jump={rc['colour']:.3f}")


if __name__ == "__main__":
    main()
