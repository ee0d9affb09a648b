"""Garment lock and keep-background on the demo's synthetic pairs (issue 16). Prints figures; asserts nothing.

Each synthetic clip is rendered twice with identical clothing, motion and background: the mannequin video (the
source) and the person (the ground truth). The shop's background is made textured here (a shelf pattern pasted
behind both renderings with their exact silhouettes), so keeping it is visible. The "generated" frames are the
person on the clip's own plain background through the tiny preset's pretrained VAE (encode -> decode,
`m2h_core/demo/assets`): what a perfect M2H model at that VAE would output (the re-drawing loss every output
carries: blurred print, shifted colour), with the shop redrawn as a plain wall, as a generator would.

Figures, over all frames of all clips (the lock's on the plain-background pair, where it alone acts):
- clothing PSNR: dB over the clothing mask M_c, generated vs ground truth, without and with the lock;
- seam score: mean squared luma gradient in a band of `--band` px around M_c's edge, for the ground truth, the
  generated frames and each seam method (feather / harmonise / poisson), with the ratio to the ground truth's;
- background PSNR outside the person, without and with keep_background;
- the standalone path (M2H Regenerate Mask's lock -> M2H Composite, `composite_generated`): clothing PSNR and seam;
- regenerate mask flicker (`regen_mask.mask_flicker`) on a still and a moving clip, exact and noisy masks.
The lock's body-part mask is exact (person minus clothing of the ground truth); its clothing mask is M_c grown by
1 px and cut to the mannequin, as a parser that overshoots onto the arms would give: the body parts must stay.

Writes a contact sheet (ground truth / off / garment lock / keep background / both) to `--out`.

    python benchmarks/bench_compositing.py [--clips 6] [--frames 8] [--out docs/compositing_contact_sheet.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.config import tiny
from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import compositing as cp
from m2h_core.metrics import masked_psnr
from m2h_core.preprocess.masks import grow_mask

psnr = partial(masked_psnr, pooled=True)  # one PSNR over all the mask's pixels


def shelf_background(h: int, w: int, seed: int) -> np.ndarray:
    """A textured shop wall: shelves, boxes of colour, a little noise (float32 (H, W, 3))."""
    rng = np.random.default_rng(seed)
    bg = np.full((h, w, 3), 0.82, np.float32) + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    for y in range(h // 8, h, h // 4):
        bg[y: y + max(1, h // 64)] = 0.35
        x = 0
        while x < w:
            bw = int(rng.integers(3, 8))
            bh = int(rng.integers(3, h // 6))
            bg[max(0, y - bh): y, x: x + bw] = rng.uniform(0.2, 0.9, 3)
            x += bw + int(rng.integers(1, 4))
    return np.clip(bg, 0, 1)


def vae_roundtrip(frames: np.ndarray) -> np.ndarray:
    from m2h_core.demo.tiny_vae import demo_config, load_vae_weights, reconstruct
    from m2h_core.inference.encoders import FrozenEncoders

    enc = FrozenEncoders.random(demo_config())
    load_vae_weights(enc.vae)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    return reconstruct(enc.vae, x).permute(0, 2, 3, 1).numpy().astype(np.float32)


def make_data(n_clips: int, n_frames: int, h: int, w: int) -> dict:
    keys = ("gt", "plain", "src", "src_plain", "cloth", "person", "mann")
    out: dict = {k: [] for k in keys}
    for s in range(n_clips):
        c = generate_clip(100 + s, n_frames=n_frames, height=h, width=w)
        bg = shelf_background(h, w, s)
        gt = np.where(c.person_mask[..., None], c.human / 255.0, bg).astype(np.float32)
        src = np.where(c.mannequin_mask[..., None], c.mannequin / 255.0, bg).astype(np.float32)
        plain = (c.human / 255.0).astype(np.float32)  # the clip's own plain studio background
        src_plain = (c.mannequin / 255.0).astype(np.float32)
        for k, v in zip(keys, (gt, plain, src, src_plain, c.clothing_mask, c.person_mask, c.mannequin_mask)):
            out[k].append(v)
    d = {k: np.concatenate(v) for k, v in out.items()}
    d["poses"] = [p for s in range(n_clips) for p in generate_clip(100 + s, n_frames=n_frames, height=h, width=w).poses]
    d["gen"] = vae_roundtrip(d["plain"])
    d["body"] = d["person"] & ~d["cloth"]
    d["parsed_cloth"] = np.stack([grow_mask(m, 1) for m in d["cloth"]]) & d["mann"]
    return d


def sheet(rows: list[list[np.ndarray]], scale: int) -> np.ndarray:
    """Rows of (H, W, 3) float frames -> one uint8 image, each frame scaled up by `scale` (nearest), 2 px gaps."""
    h, w = rows[0][0].shape[:2]
    hh, ww = h * scale, w * scale
    img = np.ones((len(rows) * (hh + 2), len(rows[0]) * (ww + 2), 3), np.uint8) * 255
    for r, row in enumerate(rows):
        for c, f in enumerate(row):
            big = np.repeat(np.repeat((np.clip(f, 0, 1) * 255).round().astype(np.uint8), scale, 0), scale, 1)
            img[r * (hh + 2): r * (hh + 2) + hh, c * (ww + 2): c * (ww + 2) + ww] = big
    return img


def standalone(d: dict, e_gt: float, band: np.ndarray, height: int, n_frames: int) -> None:
    """The path for any generator: M2H Regenerate Mask's lock (from the mannequin masks and poses) and M2H Composite
    (`composite_generated`, the parser on the generated frames: here exact labels). Clip by clip, as the nodes run."""
    from m2h_core.demo.synthetic import ExactParser
    from m2h_core.inference import regen_mask as rm

    gt, gen, src = d["plain"], d["gen"], d["src_plain"]
    outs, locks = [], []
    for i in range(0, len(gen), n_frames):
        part = slice(i, i + n_frames)
        lock = rm.regenerate_mask(d["cloth"][part], d["mann"][part], d["poses"][part],
                                  rm.RegenMaskSettings.for_height(height)).lock
        parser = ExactParser()
        parser.add(gen[part], d["cloth"][part] & d["person"][part], d["person"][part])
        s = cp.CompositeSettings.for_height(height, garment_lock=True)
        outs.append(cp.composite_generated(gen[part], src[part], parser, s, lock=lock)[0])
        locks.append(lock)
    out, lock = np.concatenate(outs), np.concatenate(locks)
    e = cp.seam_energy(out, band)
    print(f"standalone (Regenerate Mask lock -> Composite, poisson): clothing PSNR {psnr(out, gt, d['cloth']):.2f} dB "
          f"(lock covers {lock.sum() / d['cloth'].sum():.0%} of M_c), seam score {e:.5f} (ratio to ground truth "
          f"{e / e_gt:.3f}), body parts untouched: {bool(np.array_equal(out[d['body']], gen[d['body']]))}")


def flicker(height: int, width: int, frames: int = 12) -> None:
    """Regenerate mask flicker (`regen_mask.mask_flicker`: mean 1 - IoU of neighbouring frames) on a still clip
    (frame 0 held) and a moving one, with exact masks and with parser-like noise (30% of the pixels within 1 px of
    each mask's edge flipped at random, frame by frame), for temporal windows 1 / 3 / 5; on the moving clip also the
    share of the bare mannequin the mask covers (voting over frames lags behind motion)."""
    from m2h_core.inference import regen_mask as rm

    c = generate_clip(7, n_frames=frames, height=height, width=width, motion="sway")
    rng = np.random.default_rng(0)

    def noisy(m):
        edge = grow_mask(m, 1) & ~grow_mask(m, -1)
        return m ^ (edge & (rng.random(m.shape) < 0.3))

    still = (np.repeat(c.clothing_mask[:1], frames, 0), np.repeat(c.mannequin_mask[:1], frames, 0),
             [c.poses[0]] * frames)
    for name, (cloth, mann, poses) in (("still", still), ("moving", (c.clothing_mask, c.mannequin_mask, c.poses))):
        body = mann & ~cloth
        row = []
        for label, (cm, mm) in (("exact", (cloth, mann)), ("noisy", (noisy(cloth), noisy(mann)))):
            for w in (1, 3, 5):
                r = rm.regenerate_mask(cm, mm, poses, rm.RegenMaskSettings.for_height(height, temporal_window=w))
                cover = (r.regen > 0.5)[body].mean()
                row.append(f"{label} w{w} {rm.mask_flicker(r.regen):.4f}"
                           + (f" (covers {cover:.1%})" if name == "moving" else ""))
        print(f"regenerate mask flicker, {name} clip ({frames} frames, {width}x{height} WxH): " + ", ".join(row))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--band", type=int, default=2, help="seam band half-width in px")
    ap.add_argument("--out", default="docs/compositing_contact_sheet.png")
    a = ap.parse_args(argv)
    cfg = tiny()
    t0 = time.perf_counter()
    d = make_data(a.clips, a.frames, cfg.height, cfg.width)
    gt, gen, src = d["plain"], d["gen"], d["src_plain"]
    print(f"{a.clips} clips x {a.frames} frames at {cfg.width}x{cfg.height} (WxH); generated = ground truth through "
          f"the tiny VAE ({psnr(gen, gt, np.ones(gt.shape[:3], bool)):.2f} dB whole frame)")
    band = cp.edge_band(d["cloth"], a.band)
    e_gt = cp.seam_energy(gt, band)
    print(f"clothing PSNR without the lock: {psnr(gen, gt, d['cloth']):.2f} dB")
    print(f"seam score (mean |grad luma|^2 in a {a.band}-px band around M_c's edge): ground truth {e_gt:.5f}, "
          f"generated {cp.seam_energy(gen, band):.5f} (ratio {cp.seam_energy(gen, band) / e_gt:.3f})")
    for seam in cp.SEAMS:
        s = cp.CompositeSettings.for_height(cfg.height, garment_lock=True, seam=seam)
        t = time.perf_counter()
        out = cp.garment_lock(gen, src, d["parsed_cloth"], d["body"], s)
        dt = (time.perf_counter() - t) / len(out) * 1000
        e = cp.seam_energy(out, band)
        body_kept = bool(np.array_equal(out[d["body"]], gen[d["body"]]))
        print(f"garment lock, seam={seam:9s}: clothing PSNR {psnr(out, gt, d['cloth']):.2f} dB, seam score "
              f"{e:.5f} (ratio to ground truth {e / e_gt:.3f}), body parts untouched: {body_kept}, "
              f"{dt:.1f} ms/frame (erode {s.erode_px}, feather {s.feather_px}, harmonise {s.harmonise_px} px)")
    bgmask = ~d["person"] & ~d["mann"]
    kb = cp.CompositeSettings.for_height(cfg.height, keep_background=True)
    gt, src = d["gt"], d["src"]
    kept = cp.keep_background(gen, src, d["person"], d["mann"], kb)
    locked = cp.garment_lock(gen, src, d["parsed_cloth"], d["body"], cp.CompositeSettings.for_height(cfg.height, True))
    both = cp.composite(gen, src, cp.CompositeSettings.for_height(cfg.height, True, True), clothing=d["parsed_cloth"],
                        body=d["body"], person=d["person"], mannequin=d["mann"])
    print(f"background PSNR (outside person and mannequin): off {psnr(gen, gt, bgmask):.2f} dB, keep_background "
          f"{psnr(kept, gt, bgmask):.2f} dB; person pixels untouched: "
          f"{bool(np.array_equal(kept[d['person']], gen[d['person']]))}")
    print(f"whole frame PSNR: off {psnr(gen, gt, np.ones(gt.shape[:3], bool)):.2f} dB, both "
          f"{psnr(both, gt, np.ones(gt.shape[:3], bool)):.2f} dB")
    standalone(d, e_gt, band, cfg.height, a.frames)
    flicker(256, 128)
    picks = [i * a.frames + a.frames // 2 for i in range(min(a.clips, 4))]
    rows = [[src[i], gt[i], gen[i], locked[i], kept[i], both[i]] for i in picks]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(sheet(rows, 4)).save(out)
    print(f"contact sheet {out}: columns = mannequin source | ground truth | off | garment lock | keep background | "
          f"both; {time.perf_counter() - t0:.1f} s in all")


if __name__ == "__main__":
    main()
