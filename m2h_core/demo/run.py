"""The built-in default: a CPU demo that trains a tiny M2H model and turns a mannequin clip into a person.

`run_demo(out_dir)` runs the whole method end to end at the `tiny` preset's size (64x32 px, latents 16x8), in five
stages, each a function here:

1. data   (`make_data`)    - seeded synthetic human clips for training and a held-out test pair: a mannequin clip
                             and the identity of an unseen person, with that person rendered in it as ground truth;
2. vae    (`prepare_vae`)  - the shipped tiny VAE (`tiny_vae`), or one trained here (`vae_source="train"`);
3. train  (`recipe.train_demo_model`) - the tiny M2H model from random init with the real trainer;
4. sample (`sample_models`) - the real sampler on held-out pairs, for the shipped pretrained model
                             (`pretrained`), the model trained here and that model untrained;
5. write  (`write_outputs`) - result video, contact and identity sheets, checkpoint, metrics.json, README.txt.

Settings: `recipe.DemoSettings`; scores: `evaluation`; what the figures were and why the defaults: docs/demo.md.
Threads: on a busy machine two PyTorch threads on two cores are many times slower than one, so `threads=None`
uses one thread when the load average is high.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..frames import to_nhwc, to_uint8
from ..inference.encoders import FrozenEncoders
from ..inference.sampler import sample_video
from ..metrics import masked_psnr
from ..models.m2h import M2HModel
from ..video_io import write_video
from .evaluation import (METRIC_DEFINITIONS, HeldOutCase, heldout_case, heldout_test_cases,
                         identity_correlations, identity_runs, mean_scores, score_case)
from .pretrained import SHIPPED_M2H, load_pretrained
from .recipe import DemoSettings, quiet_tqdm, train_demo_model
from .report import contact_sheet, identity_sheet, readme_text
from .synthetic import SyntheticClip, generate_dataset
from .tiny_vae import (SHIPPED_VAE, VAETrainResult, load_vae_weights, masked_pairs, reconstruct, train_tiny_vae,
                       vae_training_images)

__all__ = ["DemoSettings", "DemoReport", "run_demo"]


@dataclass
class DemoReport:
    out_dir: Path
    video: Path
    contact_sheet: Path
    checkpoint: Path
    metrics_json: Path
    readme: Path
    metrics: dict
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    num_frames: int = 0
    fps: float = 0.0
    video_size: tuple[int, int] = (0, 0)  # (height, width) of result video frames
    threads: int = 1
    identity_sheet: Path | None = None


# ---------------------------------------------------------------------------------------------------- helpers


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n is None:
        cpus = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        n = 1 if load > cpus - 0.5 else min(cpus, old)
    torch.set_num_threads(max(1, int(n)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------------- the stages


def make_data(s: DemoSettings, seed: int, height: int, width: int, say: Callable[[str], None]
              ) -> tuple[list[SyntheticClip], HeldOutCase]:
    """Stage 1: the training clips (at twice the model's size) and the shown held-out pair."""
    say(f"[1/5 data] generating {s.n_train_clips} synthetic human training clips of {s.clip_frames} frames")
    clips = generate_dataset(s.n_train_clips, seed, n_frames=s.clip_frames, height=2 * height, width=2 * width,
                             fps=s.fps)
    case = heldout_case(seed, s.test_frames, height, width, 2)
    unseen = case.donor.identity not in {c.identity for c in clips}
    say(f"[1/5 data] held-out test: {case.clip.motion} clip in a {case.clip.outfit.top.kind}, identity from "
        f"another person ({'unseen' if unseen else 'SEEN'} in training)")
    return clips, case


def prepare_vae(s: DemoSettings, seed: int, cfg, clips: list[SyntheticClip], case: HeldOutCase,
                say: Callable[[str], None]) -> tuple[FrozenEncoders, VAETrainResult]:
    """Stage 2: the frozen encoders with the shipped tiny VAE (or one trained here: `vae_source="train"`, or the
    file is missing); sets the config's latent scaling factor, which the checkpoint stores."""
    H, W = cfg.height, cfg.width
    encoders = FrozenEncoders.random(cfg, seed=seed)
    holdout = torch.cat([case.ground_truth, case.mannequin])
    vres = None
    if s.vae_source == "shipped":
        try:
            vres = load_vae_weights(encoders.vae, s.vae_path or SHIPPED_VAE)
            vres.recon_psnr = masked_psnr(to_nhwc(reconstruct(encoders.vae, holdout).clamp(0, 1)), to_nhwc(holdout),
                                          pooled=True)
            say(f"[2/5 vae] pretrained tiny VAE {s.vae_path or SHIPPED_VAE} ({vres.steps} steps, made by "
                f"`python -m m2h_core.demo.tiny_vae`): held-out reconstruction PSNR {vres.recon_psnr:.2f} dB")
        except (FileNotFoundError, ValueError) as e:
            say(f"[2/5 vae] {e}\n[2/5 vae] training a tiny VAE here instead ({s.vae_steps} steps)")
    if vres is None:
        images = vae_training_images(clips, H, W, s.vae_max_images)
        say(f"[2/5 vae] training the tiny VAE on {len(images)} frames for {s.vae_steps} steps")
        vres = train_tiny_vae(encoders.vae, images, steps=s.vae_steps, batch_size=s.vae_batch, lr=s.vae_lr,
                              anchor_fraction=s.vae_anchor_fraction, seed=seed, holdout=holdout,
                              progress=lambda i, n, loss: say(f"[2/5 vae] step {i}/{n} loss {loss:.4f}"),
                              progress_every=max(1, s.vae_steps // 6), pairs=masked_pairs(clips, H, W),
                              locality_weight=s.vae_locality_weight)
        say(f"[2/5 vae] done in {vres.seconds:.0f}s: held-out reconstruction PSNR {vres.recon_psnr:.2f} dB, "
            f"latent scaling factor {vres.scaling_factor:.4f}")
    cfg.vae.scaling_factor = vres.scaling_factor  # stored in the checkpoint's config
    return encoders, vres


@dataclass
class Samples:
    """Stage 4's results: each model's frames on each held-out pair, and the identity sheet's runs."""

    cases: list[HeldOutCase]
    results: dict[str, list[torch.Tensor]]  # model name -> frames per case
    best: str  # the model shown: "pretrained" when shipped, else "trained"
    pretrained_meta: dict
    identity_cases: list[HeldOutCase] = field(default_factory=list)
    identity_results: list[torch.Tensor] = field(default_factory=list)


def sample_models(s: DemoSettings, seed: int, case: HeldOutCase, trained: M2HModel, untrained: M2HModel,
                  encoders: FrozenEncoders, dev: torch.device, say: Callable[[str], None]) -> Samples:
    """Stage 4: the shipped pretrained model (if present), the model trained here and that model untrained, each on
    `s.eval_cases` held-out pairs (the shown one first); the shown clip with `identity_sheet_people` more people."""
    encoders.to(dev)
    settings = s.sampler_settings(seed)
    models: dict[str, tuple[M2HModel, FrozenEncoders]] = {}
    pre_meta: dict = {}
    if s.pretrained:
        try:
            pmodel, pencoders, pre_meta = load_pretrained(s.pretrained_path or SHIPPED_M2H)
            models["pretrained"] = (pmodel.to(dev), pencoders.to(dev))
            say(f"[4/5 sample] pretrained tiny M2H model {s.pretrained_path or SHIPPED_M2H} "
                f"({pre_meta.get('total_train_steps', '?')} steps, made by `python -m m2h_core.demo.pretrained`)")
        except (FileNotFoundError, ValueError) as e:
            say(f"[4/5 sample] no pretrained model: {e}")
    models["trained"] = (trained, encoders)
    models["untrained"] = (untrained.to(dev), encoders)
    H, W = case.mannequin.shape[-2:]
    cases = [case] + heldout_test_cases(s, seed, H, W)[1:]
    results: dict[str, list[torch.Tensor]] = {}
    for name, (m, enc) in models.items():
        say(f"[4/5 sample] {name} model: {len(cases)} held-out pairs x {s.test_frames} frames, "
            f"{s.sample_steps} {s.scheduler} steps, CFG {s.guidance_scale}")
        results[name] = [sample_video(m, enc, c.video(), c.identity(), settings).frames for c in cases]
    out = Samples(cases, results, "pretrained" if "pretrained" in models else "trained", pre_meta)
    if s.identity_sheet_people > 0:  # the same mannequin clip with other held-out people
        out.identity_cases, out.identity_results = identity_runs(*models[out.best], case, s, seed)
        say(f"[4/5 sample] the shown clip with {s.identity_sheet_people} more held-out people ({out.best} model)")
    return out


def demo_metrics(s: DemoSettings, seed: int, samples: Samples, encoders: FrozenEncoders, vres: VAETrainResult,
                 train_logs: list[dict], unseen: bool) -> dict:
    """metrics.json: every model and the VAE ceiling per held-out pair and mean, identity, what ran."""
    cases, results, case = samples.cases, samples.results, samples.cases[0]
    per_case = {name: [score_case(r, c) for r, c in zip(results[name], cases)] for name in results}
    per_case["vae_ceiling"] = [score_case(reconstruct(encoders.vae, c.ground_truth), c) for c in cases]
    return {
        "num_frames": s.test_frames,
        **{name: per_case[name][0] for name in results},  # the shown pair
        "vae_reconstruction_of_ground_truth": per_case["vae_ceiling"][0],
        # pretrained (shipped) / trained here / untrained / the VAE's reconstruction of the ground truth (the
        # ceiling), on the same held-out pairs
        "heldout_mean": {name: mean_scores(sc) for name, sc in per_case.items()},
        "heldout_cases": per_case,
        # the shown clip worn by `identity_sheet_people` held-out people (identity_sheet.png)
        "identity": ({"model": samples.best, **identity_correlations(samples.identity_results,
                                                                      samples.identity_cases)}
                     if samples.identity_cases else {}),
        "definitions": dict(METRIC_DEFINITIONS),
        "test_case": {"clip_seed": case.clip.seed, "identity_seed": case.donor.seed, "motion": case.clip.motion,
                      "outfit": case.clip.outfit.top.kind + (f" + {case.clip.outfit.bottom.kind}"
                                                              if case.clip.outfit.bottom else ""),
                      "identity_in_training_set": not unseen},
        "pretrained_model": samples.pretrained_meta,
        "vae": {"steps": vres.steps, "heldout_recon_psnr": round(vres.recon_psnr, 3),
                "scaling_factor": vres.scaling_factor},
        "training": {"steps": len(train_logs), "first_loss": train_logs[0]["loss"] if train_logs else None,
                     "last_loss": float(np.mean([r["loss"] for r in train_logs[-10:]])) if train_logs else None},
        "settings": asdict(s),
        "seed": seed,
    }


def write_outputs(s: DemoSettings, out: Path, samples: Samples, model: M2HModel, encoders: FrozenEncoders,
                  seed: int, train_steps: int, vae_steps: int, say: Callable[[str], None]
                  ) -> tuple[Path, Path, Path | None, Path, np.ndarray]:
    """Stage 5's files: the result video (upscaled), contact sheet, identity sheet, the trained checkpoint.
    Returns (video, contact sheet, identity sheet or None, checkpoint, the video's frames)."""
    say("[5/5 write] metrics, video, contact sheet, checkpoint, README")
    case, best, results = samples.cases[0], samples.best, samples.results
    H, W = case.mannequin.shape[-2:]
    frames_res = to_uint8(to_nhwc(results[best][0]))
    big = np.stack([cv2.resize(f, (W * s.video_scale, H * s.video_scale), interpolation=cv2.INTER_NEAREST)
                    for f in frames_res])
    video = out / "result.mp4"
    try:
        write_video(video, big, s.fps)
    except Exception as e:  # noqa: BLE001 - no H.264 encoder in this PyAV build
        say(f"[5/5 write] mp4 unavailable ({e}); writing a GIF")
        video.unlink(missing_ok=True)
        video = out / "result.gif"
        write_video(video, big, s.fps)
    n_sheet = min(s.sheet_frames, s.test_frames)
    picks = sorted({int(round(i)) for i in np.linspace(0, s.test_frames - 1, n_sheet)})
    pre_steps = samples.pretrained_meta.get("total_train_steps", "?")
    rows = [("mannequin (input)", to_uint8(to_nhwc(case.mannequin))),
            (f"{best} M2H result" + (f" ({pre_steps} steps)" if best == "pretrained" else f" ({train_steps} steps)"),
             frames_res),
            ("ground truth (same identity as human)", to_uint8(to_nhwc(case.ground_truth)))]
    if best == "pretrained":
        rows.append((f"trained here ({train_steps} steps)", to_uint8(to_nhwc(results["trained"][0]))))
    rows.append(("untrained model", to_uint8(to_nhwc(results["untrained"][0]))))
    sheet = contact_sheet(rows, to_uint8(to_nhwc(case.identity_image)), picks)
    sheet_path = out / "contact_sheet.png"
    cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    id_sheet_path = None
    if samples.identity_cases:
        columns = [(to_uint8(to_nhwc(p.identity_image)), to_uint8(to_nhwc(r)), to_uint8(to_nhwc(p.ground_truth)))
                   for p, r in zip(samples.identity_cases, samples.identity_results)]
        id_sheet_path = out / "identity_sheet.png"
        img = identity_sheet(columns, frame=min(s.num_frames, s.test_frames) // 2)
        cv2.imwrite(str(id_sheet_path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    ckpt = out / "m2h_tiny.safetensors"
    save_checkpoint(model, ckpt, encoders=encoders,
                    extra={"demo": "m2h tiny CPU demo", "seed": seed, "train_steps": train_steps,
                           "vae_steps": vae_steps})
    return video, sheet_path, id_sheet_path, ckpt, big


# ---------------------------------------------------------------------------------------------------- the demo


def run_demo(out_dir: str | os.PathLike, *, settings: DemoSettings | None = None, quick: bool = False,
             seed: int = 0, device: str = "cpu", progress: Callable[[str], None] | None = print,
             threads: int | None = None) -> DemoReport:
    """Train a tiny M2H model on CPU and turn a held-out mannequin clip into a person (the module docstring).

    settings: the recipe (default `DemoSettings()`, or `DemoSettings.quick()` with quick=True: the same stages in
    seconds, for tests). Returns a `DemoReport`; writes result.mp4 (result.gif if H.264 is unavailable),
    contact_sheet.png, identity_sheet.png, m2h_tiny.safetensors, metrics.json and README.txt to `out_dir`.
    """
    s = settings if settings is not None else (DemoSettings.quick() if quick else DemoSettings())
    say = progress or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    @contextmanager
    def stage(name: str):
        t0 = time.perf_counter()
        yield
        stages[name] = time.perf_counter() - t0

    with _threads(threads) as n_threads, quiet_tqdm():
        dev = torch.device(device)
        cfg = s.model_config()
        say(f"[demo] {'quick' if quick else 'full'} run, seed {seed}, {n_threads} CPU thread(s), device {dev}, "
            f"load average {load0:.1f} -> {out}")
        with stage("data"):
            clips, case = make_data(s, seed, cfg.height, cfg.width, say)
        with stage("vae"):
            encoders, vres = prepare_vae(s, seed, cfg, clips, case, say)
        with stage("train"):
            model, untrained, train_logs = train_demo_model(s, cfg, encoders, clips, seed, dev,
                                                            say=lambda m: say(f"[3/5 train] {m}"))
        with stage("sample"):
            samples = sample_models(s, seed, case, model, untrained, encoders, dev, say)
        with stage("write"):
            unseen = case.donor.identity not in {c.identity for c in clips}
            metrics = demo_metrics(s, seed, samples, encoders, vres, train_logs, unseen)
            metrics.update(threads=n_threads, load_average_at_start=round(load0, 2))
            video, sheet_path, id_sheet_path, ckpt, big = write_outputs(s, out, samples, model, encoders, seed,
                                                                        len(train_logs), vres.steps, say)
        total = time.perf_counter() - t_start
        metrics["seconds"] = {k: round(v, 1) for k, v in stages.items()} | {"total": round(total, 1)}
        mpath = out / "metrics.json"
        mpath.write_text(json.dumps(metrics, indent=1))
        summary = [f"Wall time {total:.0f} s on {n_threads} thread(s), load average {load0:.1f} at start; stages: "
                   + ", ".join(f"{k} {v:.0f}s" for k, v in stages.items())]
        readme = out / "README.txt"
        readme.write_text(readme_text(s, metrics, summary))
        hm, best = metrics["heldout_mean"], samples.best
        t, u, c = hm[best], hm["untrained"], hm["vae_ceiling"]
        say(f"[demo] held-out mean of {t['cases']} pairs, {best} vs untrained (which copies its clothing frame) vs the "
            f"VAE ceiling: clothing PSNR {t['clothing_psnr']:.2f} / {u['clothing_psnr']:.2f} / "
            f"{c['clothing_psnr']:.2f} dB, head PSNR {t['head_psnr']:.2f} / {u['head_psnr']:.2f} / "
            f"{c['head_psnr']:.2f} dB")
        say(f"[demo] done in {total:.0f}s -> {out}")
    return DemoReport(out_dir=out, video=video, contact_sheet=sheet_path, checkpoint=ckpt, metrics_json=mpath,
                      readme=readme, metrics=metrics, seconds=total, stage_seconds=stages,
                      num_frames=len(big), fps=s.fps, video_size=(big.shape[1], big.shape[2]), threads=n_threads,
                      identity_sheet=id_sheet_path)
