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
- background PSNR outside the person, without and with keep_background.
The lock's body-part mask is exact (person minus clothing of the ground truth); its clothing mask is M_c grown by
1 px and cut to the mannequin, as a parser that overshoots onto the arms would give: the body parts must stay.

Writes a contact sheet (ground truth / off / garment lock / keep background / both) to `--out`.

    python benchmarks/bench_compositing.py [--clips 6] [--frames 8] [--out docs/compositing_contact_sheet.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.config import tiny
from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import compositing as cp


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
    from m2h_core.demo.recipe import DemoSettings
    from m2h_core.demo.tiny_vae import load_vae_weights, reconstruct
    from m2h_core.inference.encoders import FrozenEncoders

    enc = FrozenEncoders.random(DemoSettings().model_config())
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
    d["gen"] = vae_roundtrip(d["plain"])
    d["body"] = d["person"] & ~d["cloth"]
    d["parsed_cloth"] = np.stack([cp.dilate(m, 1) for m in d["cloth"]]) & d["mann"]
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
          f"the tiny VAE ({cp.psnr_in(gen, gt, np.ones(gt.shape[:3], bool)):.2f} dB whole frame)")
    band = cp.edge_band(d["cloth"], a.band)
    e_gt = cp.seam_energy(gt, band)
    print(f"clothing PSNR without the lock: {cp.psnr_in(gen, gt, d['cloth']):.2f} dB")
    print(f"seam score (mean |grad luma|^2 in a {a.band}-px band around M_c's edge): ground truth {e_gt:.5f}, "
          f"generated {cp.seam_energy(gen, band):.5f} (ratio {cp.seam_energy(gen, band) / e_gt:.3f})")
    for seam in cp.SEAMS:
        s = cp.CompositeSettings.for_height(cfg.height, garment_lock=True, seam=seam)
        t = time.perf_counter()
        out = cp.garment_lock(gen, src, d["parsed_cloth"], d["body"], s)
        dt = (time.perf_counter() - t) / len(out) * 1000
        e = cp.seam_energy(out, band)
        body_kept = bool(np.array_equal(out[d["body"]], gen[d["body"]]))
        print(f"garment lock, seam={seam:9s}: clothing PSNR {cp.psnr_in(out, gt, d['cloth']):.2f} dB, seam score "
              f"{e:.5f} (ratio to ground truth {e / e_gt:.3f}), body parts untouched: {body_kept}, "
              f"{dt:.1f} ms/frame (erode {s.erode_px}, feather {s.feather_px}, harmonise {s.harmonise_px} px)")
    bgmask = ~d["person"] & ~d["mann"]
    kb = cp.CompositeSettings.for_height(cfg.height, keep_background=True)
    gt, src = d["gt"], d["src"]
    kept = cp.keep_background(gen, src, d["person"], d["mann"], kb)
    locked = cp.garment_lock(gen, src, d["parsed_cloth"], d["body"], cp.CompositeSettings.for_height(cfg.height, True))
    both = cp.composite(gen, src, cp.CompositeSettings.for_height(cfg.height, True, True), clothing=d["parsed_cloth"],
                        body=d["body"], person=d["person"], mannequin=d["mann"])
    print(f"background PSNR (outside person and mannequin): off {cp.psnr_in(gen, gt, bgmask):.2f} dB, keep_background "
          f"{cp.psnr_in(kept, gt, bgmask):.2f} dB; person pixels untouched: "
          f"{bool(np.array_equal(kept[d['person']], gen[d['person']]))}")
    print(f"whole frame PSNR: off {cp.psnr_in(gen, gt, np.ones(gt.shape[:3], bool)):.2f} dB, both "
          f"{cp.psnr_in(both, gt, np.ones(gt.shape[:3], bool)):.2f} dB")
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
