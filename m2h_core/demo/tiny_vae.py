"""Training the tiny preset's VAE (the CPU demo's stand-in for SD-1.5's pretrained autoencoder).

The `tiny` preset's `AutoencoderKL` has no pretrained weights: randomly initialised, its latents mean nothing and
its decoder cannot draw a person, so a diffusion model trained on top of it could not either. The demo therefore
first trains it briefly as what SD-1.5's VAE is - a KL-regularised autoencoder (Rombach et al. 2022):

    L = |x - D(z)|_1 + |x - D(z)|^2 + kl_weight * KL(q(z|x) || N(0, I)),   z ~ q(z|x)

on the kinds of images the M2H model feeds it (human and mannequin frames, clothing-only frames on black, identity
images). The KL weight is small (as in SD's 1e-6 "f8" VAE), so latents are near-deterministic and their scale is
arbitrary; `latent_scale` measures it and the config's `scaling_factor` is set to 1/std - exactly how SD-1.5's
0.18215 was chosen - so the diffusion model sees unit-variance latents.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..metrics import masked_psnr
from ..training.dataset import transform_sample

if TYPE_CHECKING:
    from .synthetic import SyntheticClip

SHIPPED_VAE = Path(__file__).resolve().parent / "assets" / "tiny_vae.safetensors"


def demo_config():
    """The CPU demo's model config: the `tiny` preset with a VAE without mid-block self-attention (at 16x8 latents it
    is global, so a garment's latents would depend on the whole frame: see `VAEConfig.mid_block_add_attention`) and
    8 latent channels instead of SD's 4 (issue 12: at 64x32 px a garment's stripes are 1-2 px wide; with 4 channels
    the VAE turned the striped trousers brown, with 8 it keeps them: held-out reconstruction 22.7 vs 21.4 dB, the demo
    pairs' clothing ceiling 19.7 vs 18.3 dB, at 5000 steps; the shipped one trained 8000: 24.1 dB, ceiling 21.5, and
    the shirt's 1-px stripes partly survive)."""
    from ..config import tiny

    cfg = tiny()
    cfg.vae.mid_block_add_attention = False
    cfg.vae.latent_channels = cfg.unet.latent_channels = 8
    return cfg


@dataclass
class VAETrainResult:
    steps: int
    seconds: float
    recon_psnr: float  # on the held-out images, with the posterior mode
    scaling_factor: float
    losses: list[float]


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> reconstructions through the posterior mode, in [0, 1]."""
    out = []
    for i in range(0, images.shape[0], chunk):
        x = images[i: i + chunk] * 2 - 1
        out.append(((vae.decode(vae.encode(x).latent_dist.mode()).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: torch.Tensor, chunk: int = 64) -> float:
    """1 / std of the (unscaled) posterior-mode latents of `images`: the `scaling_factor` for unit variance."""
    zs = [vae.encode(images[i: i + chunk] * 2 - 1).latent_dist.mode() for i in range(0, images.shape[0], chunk)]
    return float(1.0 / torch.cat(zs).float().std().clamp_min(1e-6))


def set_scaling_factor(vae: AutoencoderKL, value: float) -> None:
    vae.register_to_config(scaling_factor=float(value))


def vae_training_images(clips: list[SyntheticClip], H: int, W: int, max_images: int = 0) -> torch.Tensor:
    """What the VAE sees in M2H: human frames, mannequin frames, clothing-only frames on black, identity images.

    max_images > 0: every k-th frame of each clip, k chosen so that about `max_images` images come out."""
    out = []
    n_frames = sum(len(c.human) for c in clips)
    k = max(1, -(-3 * n_frames // max(1, max_images - len(clips)))) if max_images > 0 else 1
    for i, c in enumerate(clips):
        sl = slice(i % k, None, k)
        hum, _ = transform_sample(c.human[sl], c.clothing_mask[sl], c.face_mask[sl], c.pose_images[sl],
                                  c.identity_image, c.identity_landmarks, H, W)
        man, _ = transform_sample(c.mannequin[sl], c.clothing_mask[sl], c.face_mask[sl], c.pose_images[sl],
                                  c.identity_image, c.identity_landmarks, H, W)
        out += [hum["frames"], man["frames"], hum["frames"] * hum["clothing_masks"][:, None],
                hum["identity_image"][None]]
    return torch.cat(out)


def thumbnail_latents(x: torch.Tensor, latent_channels: int, down: int) -> torch.Tensor:
    """The anchor for the first latent channels: the image in [-1, 1] average-pooled by the VAE's downscale
    (3 colour channels; the remaining latent channels stay free for detail)."""
    return F.avg_pool2d(x, down)[:, : min(3, latent_channels)]


def init_low_variance(vae: AutoencoderKL, logvar: float = -8.0) -> None:
    """Start the posterior's log-variance at `logvar` (std ~0.02) instead of 0.

    A freshly initialised KL-VAE samples latents with std 1 around means that are much smaller than that, so its
    decoder first sees almost pure noise and learns only the average image; with a tiny KL weight the variance
    would take thousands of steps to shrink. SD's VAE ends up near-deterministic anyway, so start there.
    """
    conv = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder.conv_out
    c = conv.out_channels // 2
    with torch.no_grad():
        conv.bias[c:].fill_(logvar)
        conv.weight[c:].mul_(0.1)


def masked_pairs(clips: list[SyntheticClip], H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Human frames and their clothing masks, (N, 3, H, W) and (N, 1, H, W): the pairs for the locality term."""
    human, _, masks = garment_triples(clips, H, W)
    return human, masks


def locality_error(vae: AutoencoderKL, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """How much the garment's latents depend on the rest of the frame: |E(x ⊙ m) - E(x)|² over the latent cells that
    lie wholly inside the mask m, relative to the latents' variance (so shrinking the latents cannot lower it).
    x in [-1, 1] (N, 3, H, W), m in {0, 1} (N, 1, H, W). 0 = the garment encodes the same on black as in its scene,
    which is what copying VAE(v ⊙ M_c) into the result needs (issue 12)."""
    inside = _inside_cells(vae, m).bool().expand(-1, vae.config.latent_channels, -1, -1)
    z_full = vae.encode(x).latent_dist.mean
    z_masked = vae.encode((x + 1) * m - 1).latent_dist.mean  # v ⊙ M_c in [0, 1], then to [-1, 1]
    if not inside.any():
        return z_full.sum() * 0
    return ((z_masked - z_full)[inside] ** 2).mean() / z_full.detach().var().clamp_min(1e-8)


def train_tiny_vae(vae: AutoencoderKL, images: torch.Tensor, *, steps: int = 300, batch_size: int = 16,
                   lr: float = 2e-3, kl_weight: float = 1e-6, anchor_weight: float = 1.0,
                   anchor_fraction: float = 0.6, holdout: torch.Tensor | None = None, seed: int = 0,
                   progress: Callable[[int, int, float], None] | None = None, progress_every: int = 25,
                   pairs: tuple[torch.Tensor, torch.Tensor] | None = None, locality_weight: float = 0.0,
                   locality_batch: int = 4) -> VAETrainResult:
    """Train `vae` in place on `images` (N, 3, H, W) in [0, 1], then set its scaling factor (see module doc).

    pairs, locality_weight: (human frames, clothing masks) from `masked_pairs`; adds `locality_weight` x
    `locality_error` on `locality_batch` pairs per step, so a garment encodes alike on black and in its scene.

    Adam with a cosine decay to 5 % of `lr` (a short warm-up of 5 % of the steps). `progress(step, steps, loss)` is
    called every `progress_every` steps. The VAE is returned in eval mode with gradients off (it is frozen after).
    """
    g = torch.Generator().manual_seed(seed)
    init_low_variance(vae)
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    n = images.shape[0]
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    losses: list[float] = []
    t0 = time.perf_counter()
    perm = torch.randperm(n, generator=g)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos: pos + batch_size]
        pos += batch_size
        x = images[idx]
        if torch.rand((), generator=g) < 0.5:  # horizontal flips: the figures are left/right symmetric
            x = x.flip(-1)
        x = x * 2 - 1
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = 0.5 * (dist.mean ** 2 + dist.var - 1.0 - dist.logvar).sum(dim=(1, 2, 3)).mean()
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + kl_weight * kl
        if pairs is not None and locality_weight > 0:
            j = torch.randint(0, pairs[0].shape[0], (locality_batch,), generator=g)
            loss = loss + locality_weight * locality_error(vae, pairs[0][j] * 2 - 1, pairs[1][j])
        w = anchor_weight * max(0.0, 1.0 - step / max(1.0, anchor_fraction * steps))
        if w > 0:  # thumbnail anchor (see `thumbnail_latents`): encoder -> thumbnail, decoder from the thumbnail
            target = thumbnail_latents(x, vae.config.latent_channels, down)
            k = target.shape[1]
            rec_t = vae.decode(torch.cat([target, z[:, k:].detach()], 1)).sample
            loss = loss + w * (F.mse_loss(dist.mean[:, :k], target) + (rec_t - x).abs().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None and ((step + 1) % progress_every == 0 or step + 1 == steps):
            progress(step + 1, steps, float(np.mean(losses[-progress_every:])))
    vae.eval().requires_grad_(False)
    check = holdout if holdout is not None else images[:64]
    psnr = masked_psnr(_nhwc(reconstruct(vae, check)), _nhwc(check), pooled=True)
    scale = latent_scale(vae, images[: min(n, 256)])
    set_scaling_factor(vae, scale)
    return VAETrainResult(steps, time.perf_counter() - t0, psnr, scale, losses)


def garment_triples(clips: list[SyntheticClip], H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Human frames, mannequin frames (same garment, pose and scene) and clothing masks at H x W:
    (N, 3, H, W), (N, 3, H, W), (N, 1, H, W) in [0, 1] - the pairs `localize_vae` and `splice_psnr` use."""
    hs, ms, ks = [], [], []
    for c in clips:
        hum, _ = transform_sample(c.human, c.clothing_mask, c.face_mask, c.pose_images, c.identity_image,
                                  c.identity_landmarks, H, W)
        man, _ = transform_sample(c.mannequin, c.clothing_mask, c.face_mask, c.pose_images, c.identity_image,
                                  c.identity_landmarks, H, W)
        hs.append(hum["frames"])
        ms.append(man["frames"])
        ks.append(hum["clothing_masks"][:, None])
    return torch.cat(hs), torch.cat(ms), torch.cat(ks)


def _mean_latents(vae: AutoencoderKL, x01: torch.Tensor) -> torch.Tensor:
    return vae.encode(x01 * 2 - 1).latent_dist.mean


def _inside_cells(vae: AutoencoderKL, m: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) 1.0 where a latent cell lies wholly inside the mask m (N, 1, H, W)."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    return (F.avg_pool2d(m.float(), down) > 0.999).float()


@torch.no_grad()
def splice_psnr(vae: AutoencoderKL, human: torch.Tensor, mannequin: torch.Tensor, masks: torch.Tensor
                ) -> dict[str, float]:
    """What a model that copies its clothing latents can reach (issue 12), clothing-mask PSNR (dB) vs the human frames:

    ceiling - decode(E(v_h)): the ground truth through the VAE;
    copy    - decode(E(v_m ⊙ M_c)): the clothing latents alone (garment on black);
    splice  - decode of E(v_m ⊙ M_c) on the latent cells wholly inside the garment and E(v_h) elsewhere: a model
              whose output is the scene's latents around an untouched copy of its clothing input, which is what
              x̂_0 = UNet + f_c (`M2HConfig.clothing_skip`) starts from. With a non-local encoder this is far below
              the ceiling even though the copy alone is not."""
    inside = _inside_cells(vae, masks)
    z_h = _mean_latents(vae, human)
    z_c = _mean_latents(vae, mannequin * masks)
    m = masks[:, 0] > 0.5

    def score(z: torch.Tensor) -> float:
        rec = ((vae.decode(z).sample + 1) / 2).clamp(0, 1)
        return round(masked_psnr(_nhwc(rec), _nhwc(human), m, pooled=True), 3)

    return {"ceiling": score(z_h), "copy": score(z_c), "splice": score(inside * z_c + (1 - inside) * z_h)}


def localize_vae(vae: AutoencoderKL, human: torch.Tensor, mannequin: torch.Tensor, masks: torch.Tensor, *,
                 steps: int = 900, batch_size: int = 8, lr: float = 5e-4, decoder: bool = True, seed: int = 0,
                 progress: Callable[[int, int, float], None] | None = None, progress_every: int = 100) -> float:
    """Fine-tune the VAE so a garment encodes alike on black and in its scene (issue 12); returns seconds.

    Distillation from the VAE as it was, E0 (so the latent space the diffusion model learns stays SD-like):

        |E(v_h) - E0(v_h)|² + |E(v_m) - E0(v_m)|²                       keep every frame's latents
      + |E(v ⊙ M_c) - T|² for v in (v_h, v_m),
        T = E0(v_h) on the cells inside the garment, E0(v_h ⊙ M_c) elsewhere
      + (decoder) ½ L_rec(D(E(v_h)), v_h) + ½ L_rec(D(splice), v_h),   splice = E(v_m ⊙ M_c) inside, E(v_h) outside

    (L_rec = L1 + L2.) The mannequin's garment on black is taught to encode as the garment *in the human's scene*,
    which is what the model's output must hold there, and the decoder to draw a garment copied that way.
    Measured on held-out clips (`splice_psnr`, clothing PSNR ceiling / splice): 20.51 / 14.77 before; encoder only
    (900 steps) 20.46 / 18.74; with the decoder (600 steps) 20.31 / 19.18. Training the whole VAE with a locality term
    instead collapsed a latent channel (`locality_error`, module docstring)."""
    g = torch.Generator().manual_seed(seed)
    e0 = copy.deepcopy(vae).eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    params = list(vae.encoder.parameters()) + (list(vae.quant_conv.parameters())
                                               if getattr(vae, "quant_conv", None) is not None else [])
    if decoder:
        params += list(vae.decoder.parameters()) + (list(vae.post_quant_conv.parameters())
                                                    if getattr(vae, "post_quant_conv", None) is not None else [])
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    n, t0, recent = human.shape[0], time.perf_counter(), []
    for step in range(steps):
        j = torch.randint(0, n, (batch_size,), generator=g)
        h, m, k = human[j], mannequin[j], masks[j]
        if torch.rand((), generator=g) < 0.5:
            h, m, k = h.flip(-1), m.flip(-1), k.flip(-1)
        inside = _inside_cells(vae, k)
        with torch.no_grad():
            t_h, t_m, t_hk = _mean_latents(e0, h), _mean_latents(e0, m), _mean_latents(e0, h * k)
        target = inside * t_h + (1 - inside) * t_hk
        z_h, z_mk = _mean_latents(vae, h), _mean_latents(vae, m * k)
        loss = (F.mse_loss(z_h, t_h) + F.mse_loss(_mean_latents(vae, m), t_m)
                + F.mse_loss(_mean_latents(vae, h * k), target) + F.mse_loss(z_mk, target))
        if decoder:
            x = h * 2 - 1
            for z in (z_h, inside * z_mk + (1 - inside) * z_h):
                rec = vae.decode(z).sample
                loss = loss + 0.5 * ((rec - x).abs().mean() + ((rec - x) ** 2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(float(loss.detach()))
        if progress is not None and ((step + 1) % progress_every == 0 or step + 1 == steps):
            progress(step + 1, steps, float(np.mean(recent[-progress_every:])))
    vae.eval().requires_grad_(False)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------- shipped VAE


def save_vae(vae: AutoencoderKL, path: str | Path, result: VAETrainResult, extra: dict | None = None) -> None:
    """The VAE's weights as safetensors, with its config and how it was trained in the metadata (atomic write)."""
    import json

    from ..checkpoint import atomic_save_file

    meta = {"format": "m2hvideo-tiny-vae", "config": json.dumps(dict(vae.config)),
            "steps": str(result.steps), "recon_psnr": f"{result.recon_psnr:.3f}",
            "scaling_factor": repr(float(result.scaling_factor))}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    atomic_save_file({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}, Path(path), meta)


def load_vae_weights(vae: AutoencoderKL, path: str | Path = SHIPPED_VAE) -> VAETrainResult:
    """Load a VAE written by `save_vae` into `vae` (eval, frozen) and set its scaling factor.

    A missing file, another format, or weights for another VAE size raise ValueError / FileNotFoundError naming
    the file and how to (re)make it."""
    from safetensors import safe_open

    path = Path(path)
    remake = ("re-create it with `python -m m2h_core.demo.tiny_vae --out %s`, or run the demo with --train-vae" % path)
    if not path.is_file():
        raise FileNotFoundError(f"tiny VAE weights not found: {path}; {remake}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({e}); {remake}") from e
    if meta.get("format") != "m2hvideo-tiny-vae":
        raise ValueError(f"{path} is not a tiny-VAE file written by m2h_core.demo.tiny_vae.save_vae; {remake}")
    want = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if want != got:
        raise ValueError(f"{path} holds a VAE of another size than this config's "
                         f"({len(got)} tensors vs {len(want)} expected); {remake}")
    vae.load_state_dict(sd)
    vae.eval().requires_grad_(False)
    scale = float(meta["scaling_factor"])
    set_scaling_factor(vae, scale)
    return VAETrainResult(int(meta.get("steps", 0)), 0.0, float(meta.get("recon_psnr", "nan")), scale, [])


def pretrain(out: str | Path = SHIPPED_VAE, *, steps: int = 8000, batch_size: int = 8, lr: float = 2e-3,
             n_clips: int = 120, clip_frames: int = 16, seed: int = 1234, anchor_fraction: float = 0.15,
             locality_weight: float = 0.0, localize_steps: int = 900, start_from: str | Path | None = None,
             progress: Callable[[str], None] | None = print) -> VAETrainResult:
    """Train the tiny preset's VAE on synthetic clips (their own seed stream, apart from the demo's) and save it.

    This is how `assets/tiny_vae.safetensors` is made: the demo loads it instead of spending most of its minutes
    on a VAE (SD-1.5's VAE is pretrained too); `m2h demo --train-vae` trains one from scratch instead."""
    from .synthetic import generate_dataset

    cfg = demo_config()
    H, W = cfg.height, cfg.width
    say = progress or (lambda _m: None)
    clips = generate_dataset(n_clips, seed, n_frames=clip_frames, height=2 * H, width=2 * W)
    hold = generate_dataset(4, seed + 1, n_frames=8, height=2 * H, width=2 * W)
    images = vae_training_images(clips, H, W)
    holdout = vae_training_images(hold, H, W)
    pairs = masked_pairs(clips, H, W) if locality_weight > 0 else None
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg.vae.vae_kwargs())
    if start_from is not None:  # only the encoder's localisation, on a VAE trained before
        from safetensors import safe_open

        res = load_vae_weights(vae, start_from)
        with safe_open(str(start_from), "pt") as f:
            res.seconds = float((f.metadata() or {}).get("seconds", 0))
        say(f"[tiny vae] starting from {start_from} ({res.steps} steps)")
    else:
        say(f"[tiny vae] {len(images)} images from {n_clips} clips, {steps} steps x batch {batch_size}")
        res = train_tiny_vae(vae, images, steps=steps, batch_size=batch_size, lr=lr, anchor_fraction=anchor_fraction,
                             holdout=holdout, seed=seed, progress_every=max(1, steps // 20), pairs=pairs,
                             locality_weight=locality_weight,
                             progress=lambda i, n, loss: say(f"[tiny vae] step {i}/{n} loss {loss:.4f}"))
    ht = garment_triples(hold, H, W)

    def held_out() -> str:
        with torch.no_grad():
            loc = float(locality_error(vae, ht[0] * 2 - 1, ht[2]))
        sp = splice_psnr(vae, *ht)
        rec = masked_psnr(_nhwc(reconstruct(vae, holdout)), _nhwc(holdout), pooled=True)
        return (f"reconstruction {rec:.2f} dB, locality error {loc:.4f}, "
                f"clothing PSNR ceiling / copy / splice {sp['ceiling']:.2f} / {sp['copy']:.2f} / {sp['splice']:.2f}")

    before = held_out()
    say(f"[tiny vae] held-out: {before}")
    seconds = 0.0
    if localize_steps > 0:
        say(f"[tiny vae] localising the garment latents: {localize_steps} steps x batch {batch_size}")
        tr = garment_triples(clips, H, W)
        seconds = localize_vae(vae, *tr, steps=localize_steps, batch_size=batch_size, seed=seed,
                                   progress_every=max(1, localize_steps // 10),
                                   progress=lambda i, n, loss: say(f"[tiny vae] localise {i}/{n} loss {loss:.5f}"))
        res.recon_psnr = masked_psnr(_nhwc(reconstruct(vae, holdout)), _nhwc(holdout), pooled=True)
        set_scaling_factor(vae, res.scaling_factor)  # the latent space is kept, so is its scale
    after = held_out()
    say(f"[tiny vae] held-out after localising: {after} ({seconds:.0f} s) -> {out}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_vae(vae, out, res, {"seed": seed, "n_clips": n_clips, "clip_frames": clip_frames, "batch_size": batch_size,
                             "lr": lr, "seconds": round(res.seconds), "locality_weight": locality_weight,
                             "localize_steps": localize_steps, "localize_seconds": round(seconds),
                             "heldout_before_localize": before, "heldout": after})
    return res


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m m2h_core.demo.tiny_vae", description=pretrain.__doc__)
    ap.add_argument("--out", default=str(SHIPPED_VAE))
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--locality-weight", type=float, default=0.0,
                    help="weight of the garment-locality term (measured: 1.0 collapses a latent channel; off)")
    ap.add_argument("--localize-steps", type=int, default=900,
                    help="steps of `localize_vae` after training (0: none)")
    ap.add_argument("--start-from", default=None,
                    help="a VAE file written before: skip the training, only localise it (localize_vae)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (0: PyTorch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    pretrain(a.out, steps=a.steps, batch_size=a.batch_size, n_clips=a.clips, seed=a.seed,
             locality_weight=a.locality_weight, localize_steps=a.localize_steps, start_from=a.start_from)


if __name__ == "__main__":
    main()
