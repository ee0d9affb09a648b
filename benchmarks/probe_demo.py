"""Why does the tiny demo's model not draw the garment it is given? Cheap probes on a trained demo checkpoint.

    python benchmarks/probe_demo.py --checkpoint OUT/m2h_tiny.safetensors [--cases 3] [--frames 8]

OUT is a finished `m2h demo` output folder (its checkpoint embeds the VAE and CLIP). Prints, on the demo's held-out
pairs (seeds 0, 1000, 2000 as `run_demo` makes them), clothing PSNR (dB, inside the clothing mask, vs the ground
truth human frames) of:

  ceiling   - the ground truth through the VAE (`vae_reconstruction_of_ground_truth` in metrics.json)
  copy      - the decoded clothing latents f_c = VAE(mannequin ⊙ M_c) themselves: what a model that copied its
              clothing input into z_0 would score (the best a pixel-aligned copy can do at this VAE)
  x0@t      - the model's one-step x0 estimate at timestep t from z_t = noised VAE(ground truth) (t = 999: from
              almost pure noise, so the garment can come only from the conditioning)
  sampler   - the full sampler (DDIM, CFG, steps) as the demo runs it, and variants

and the shift test: the mannequin's clothing pixels are moved inside the same mask by 1 and 2 px (vertical stripes:
horizontally), and we report how the model's output texture follows: the correlation of the output's high-pass
(pixels minus 3x3 box blur, clothing interior) with the high-pass of its own input (original and shifted), so
"follows" ~ corr(out(shifted), in(shifted)) and "stays" ~ corr(out(shifted), in(original)).

Every figure is a mean over the held-out cases. Uses one CPU thread.

`--train-steps N` trains the demo's model here first (`--variant demo|baseline|clothing-skip|x0-skip`, `--save`);
`--identity` adds the face / hair colour correlations. What it measured and the reading: docs/demo.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from m2h_core.checkpoint import load_checkpoint, read_config
from m2h_core.demo.evaluation import heldout_case
from m2h_core.frames import to_nhwc
from m2h_core.inference.inputs import IdentityInputs, VideoInputs
from m2h_core.inference.pipeline import embedded_encoders
from m2h_core.inference.sampler import SamplerSettings, sample_video
from m2h_core.metrics import masked_psnr
from m2h_core.models.m2h import M2HModel
from m2h_core.training.components import make_train_scheduler as noise_scheduler


def cloth_psnr(pred: torch.Tensor, case) -> float:
    return float(masked_psnr(to_nhwc(pred.clamp(0, 1)), to_nhwc(case.ground_truth), case.clothing_masks.numpy() > 0.5))


def highpass(x: torch.Tensor) -> torch.Tensor:
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)


def hp_corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Correlation of the high-pass of a and b over the eroded mask (so the silhouette edge does not count)."""
    m = (-F.max_pool2d(-mask[:, None].float(), 5, 1, 2))[:, 0] > 0.5
    ha, hb = highpass(a).permute(0, 2, 3, 1)[m], highpass(b).permute(0, 2, 3, 1)[m]
    ha, hb = ha - ha.mean(), hb - hb.mean()
    return float((ha * hb).sum() / (ha.norm() * hb.norm() + 1e-8))


def shifted_clothing(case, k: int) -> torch.Tensor:
    """The mannequin frames with the pixels inside the clothing mask moved by k px across the stripes."""
    vertical = bool(case.clip.outfit.top.vertical)
    dims = (-1,) if vertical else (-2,)
    moved = torch.roll(case.mannequin, shifts=k, dims=dims)
    m = case.clothing_masks[:, None] > 0.5
    return torch.where(m, moved, case.mannequin)


@torch.no_grad()
def x0_estimate(model, encoders, case, t: int, n: int, seed: int = 0) -> torch.Tensor:
    sched = noise_scheduler()
    inputs = encoders.make_inputs(case.mannequin[None, :n], case.clothing_masks[None, :n], case.pose_images[None, :n],
                                  case.identity_image[None], case.identity_landmarks[None], case.arcface[None])
    z0 = encoders.encode(case.ground_truth[None, :n])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(z0.shape, generator=g)
    tt = torch.tensor([t])
    z_t = sched.add_noise(z0, noise, tt)
    cond = model.encode_conditions(inputs)
    out = model.denoise(z_t, tt, cond).float()
    ab = sched.alphas_cumprod[t]
    if model.cfg.prediction_type == "sample":
        x0 = out
    elif model.cfg.prediction_type == "v_prediction":
        x0 = ab.sqrt() * z_t - (1 - ab).sqrt() * out
    else:
        x0 = (z_t - (1 - ab).sqrt() * out) / ab.sqrt()
    return encoders.decode(x0[0]).float()


class ClothingSkipModel(M2HModel):
    """Probe only (not shipped): M2HModel whose v prediction is written relative to the clothing latents,

        v_hat = UNet(...) - sqrt(1 - alpha_bar_t) * f_c

    i.e. the UNet predicts the v of the residual z_0 - f_c, so "copy the given garment" is the zero function
    (the pixel-aligned analogue of a skip connection from the clothing input to the output). Same parameters."""

    def encode_conditions(self, inputs, *a, classifier_free: bool = False, **kw):
        cond = super().encode_conditions(inputs, *a, classifier_free=classifier_free, **kw)
        f_c = inputs.clothing_latents
        cond.f_c = torch.cat([f_c, f_c]) if classifier_free else f_c
        return cond

    def denoise(self, z_t, t, cond, frames=None):
        out = super().denoise(z_t, t, cond, frames)
        f_c = cond.f_c if frames is None else cond.f_c[:, frames]
        ab = _ALPHAS.to(out.device)[torch.as_tensor(t, device="cpu").long()].to(out.dtype)
        ab = ab.reshape(-1, *([1] * (out.ndim - 1))) if ab.ndim else ab
        return out - (1 - ab).sqrt() * f_c.to(out.dtype)


_ALPHAS = noise_scheduler().alphas_cumprod


def train_variant(variant: str, steps: int, seed: int = 0, lr: float = 2e-3, batch: int = 2):
    """Train the demo's model (DemoSettings defaults, shipped VAE) for `steps` steps; returns (model, encoders)."""
    import tempfile

    from accelerate import Accelerator

    from m2h_core.demo.recipe import DemoSettings, with_head_mask
    from m2h_core.demo.synthetic import generate_dataset
    from m2h_core.demo.tiny_vae import SHIPPED_VAE, load_vae_weights
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.training.config import TrainConfig
    from m2h_core.training.dataset import SyntheticClipDataset
    from m2h_core.training.trainer import Trainer

    s = DemoSettings()
    cfg = DemoSettings().model_config()
    cfg.num_frames, cfg.prediction_type, cfg.clothing_skip = s.num_frames, s.prediction_type, s.clothing_skip
    if variant == "x0-skip":
        cfg.prediction_type, cfg.clothing_skip = "sample", True
    elif variant in ("baseline", "clothing-skip"):
        cfg.prediction_type, cfg.clothing_skip = "v_prediction", False
    clips = generate_dataset(s.n_train_clips, seed, n_frames=s.clip_frames, height=2 * cfg.height,
                             width=2 * cfg.width, fps=s.fps)
    encoders = FrozenEncoders.random(cfg, seed=seed)
    cfg.vae.scaling_factor = load_vae_weights(encoders.vae, SHIPPED_VAE).scaling_factor
    torch.manual_seed(seed)
    model = (ClothingSkipModel if variant == "clothing-skip" else M2HModel)(cfg)
    tmp = tempfile.TemporaryDirectory()
    tc = TrainConfig(preset="tiny", random_init=True, synthetic_clips=s.n_train_clips, synthetic_frames=s.clip_frames,
                     num_frames=s.num_frames, frame_stride=s.frame_stride, max_steps=steps, batch_size=batch, lr=lr,
                     adam_beta1=0.9, warmup_steps=min(s.warmup_steps, steps // 4), progressive=s.progressive,
                     lr_schedule=s.lr_schedule, mirror=True, alpha=s.mirror_alpha,
                     beta=0.0, mirror_weighting=s.mirror_weighting, cond_dropout=s.cond_dropout,
                     output_dir=tmp.name, seed=seed, checkpoint_every=10 ** 9, log_every=10 ** 9)
    ds = SyntheticClipDataset([with_head_mask(c) for c in clips], num_frames=s.num_frames, stride=s.frame_stride,
                              height=cfg.height, width=cfg.width, seed=seed)
    trainer = Trainer(tc, model=model, encoders=encoders, vgg=None, dataset=ds, accelerator=Accelerator(cpu=True),
                      log_fn=lambda m: None)
    t0 = time.perf_counter()
    res = trainer.run()
    losses = [r.loss for r in res.logs]
    print(f"[train {variant}] {steps} steps in {time.perf_counter() - t0:.0f} s, loss first 20 "
          f"{np.mean(losses[:20]):.4f} last 20 {np.mean(losses[-20:]):.4f}", flush=True)
    tmp.cleanup()
    return trainer.accelerator.unwrap_model(trainer.ddp_model).eval(), encoders


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="", help="a demo checkpoint to probe (else --train-steps)")
    ap.add_argument("--train-steps", type=int, default=0, help="train the demo's model here for this many steps")
    ap.add_argument("--variant", default="baseline", choices=("baseline", "clothing-skip", "x0-skip", "demo"))
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--save", default="", help="write the model trained here (safetensors, with the VAE and CLIP)")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="the demo's seed (held-out pairs: seed + 1000 k)")
    ap.add_argument("--skip-sampler", action="store_true")
    ap.add_argument("--sampler", default="20x1.5,20x1.0,50x1.5",
                    help="sampler variants STEPSxCFG, comma-separated (DDIM)")
    ap.add_argument("--identity", action="store_true",
                    help="also: face / hair colour correlation across 6 held-out people on the first clip, CFG 1.5 "
                         "and 1.0 (as metrics.json's identity.*)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    if a.checkpoint:
        cfg = read_config(a.checkpoint)
        model = load_checkpoint(a.checkpoint).eval()
        if a.variant == "clothing-skip":  # same parameters, the skip is in the forward
            skip = ClothingSkipModel(cfg)
            skip.load_state_dict(model.state_dict())
            model = skip.eval()
        encoders = embedded_encoders(a.checkpoint, cfg)
    else:
        model, encoders = train_variant(a.variant, a.train_steps, lr=a.lr)
        cfg = model.cfg
        if a.save:
            from m2h_core.checkpoint import save_checkpoint
            save_checkpoint(model, a.save, encoders=encoders, extra={"probe_variant": a.variant})
    H, W, n = cfg.height, cfg.width, a.frames
    rows: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        rows.setdefault(k, []).append(v)

    for k in range(a.cases):
        case = heldout_case(a.seed + 1000 * k, n, H, W, 2)
        gt = case.ground_truth
        add("ceiling: VAE(ground truth)", cloth_psnr(encoders.decode(encoders.encode(gt)).float(), case))
        clothing = case.mannequin * case.clothing_masks[:, None]
        add("copy: decode(f_c)", cloth_psnr(encoders.decode(encoders.encode(clothing)).float(), case))
        add("blur: ground truth 2x2-average-pooled (no stripes)",
            cloth_psnr(F.interpolate(F.avg_pool2d(gt, 2), scale_factor=2, mode="nearest"), case))
        for t in (999, 800, 500, 200):
            add(f"x0@{t}", cloth_psnr(x0_estimate(model, encoders, case, t, n), case))
        # shift test on the one-step x0 at t = 999
        base_out = x0_estimate(model, encoders, case, 999, n)
        m = case.clothing_masks[:n]
        add("hp corr: input(orig) vs GT", hp_corr(case.mannequin[:n], gt[:n], m))
        add("hp corr: out(orig) vs input(orig)", hp_corr(base_out, case.mannequin[:n], m))
        add("hp corr: VAE(GT) vs GT", hp_corr(encoders.decode(encoders.encode(gt[:n])).float(), gt[:n], m))
        for s in (1, 2):
            sh = shifted_clothing(case, s)
            case_s = type(case)(**{**case.__dict__, "mannequin": sh})
            out_s = x0_estimate(model, encoders, case_s, 999, n)
            add(f"hp corr shift {s}px: out(shifted) vs input(shifted) [follows]", hp_corr(out_s, sh[:n], m))
            add(f"hp corr shift {s}px: out(shifted) vs input(orig) [stays]", hp_corr(out_s, case.mannequin[:n], m))
            add(f"hp corr shift {s}px: input(shifted) vs input(orig)", hp_corr(sh[:n], case.mannequin[:n], m))
        if not a.skip_sampler:
            for steps, cfg_scale in ((int(v.split("x")[0]), float(v.split("x")[1])) for v in a.sampler.split(",")):
                st = SamplerSettings(steps=steps, guidance_scale=cfg_scale, scheduler="ddim", seed=a.seed,
                                     context_frames=cfg.num_frames, context_overlap=cfg.num_frames // 2)
                r = sample_video(model, encoders, VideoInputs(case.mannequin[:n], case.clothing_masks[:n],
                                                              case.pose_images[:n]),
                                 IdentityInputs(case.identity_image, case.identity_landmarks, case.arcface), st)
                gts = type(case)(**{**case.__dict__, "ground_truth": gt[:n], "clothing_masks": m})
                add(f"sampler DDIM {steps} steps CFG {cfg_scale}", cloth_psnr(r.frames, gts))
        print(f"case {k + 1}/{a.cases} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    if a.identity:
        from m2h_core.demo.evaluation import identity_correlations, identity_variants

        case = heldout_case(a.seed, n, H, W, 2)
        people = identity_variants(case, 6, a.seed, H, W, n)
        for cfg_scale in (1.5, 1.0):
            st = SamplerSettings(steps=int(a.sampler.split(",")[0].split("x")[0]), guidance_scale=cfg_scale,
                                 scheduler="ddim", seed=a.seed,
                                 context_frames=cfg.num_frames, context_overlap=cfg.num_frames // 2)
            res = [sample_video(model, encoders, case.video(n), p.identity(), st).frames for p in people]
            ic = identity_correlations(res, people)
            add(f"identity CFG {cfg_scale}: face colour correlation (6 people)", ic["face_colour_correlation"])
            add(f"identity CFG {cfg_scale}: hair colour correlation (6 people)", ic["hair_colour_correlation"])

    print(f"\nclothing PSNR (dB) / high-pass correlations, mean of {a.cases} held-out pairs, {n} frames, "
          f"checkpoint {a.checkpoint or f'trained here: {a.variant}, {a.train_steps} steps, lr {a.lr}'}")
    for key, vals in rows.items():
        print(f"  {key:66s} {np.mean(vals):7.3f}   ({', '.join(f'{v:.2f}' for v in vals)})")
    print(f"{time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
