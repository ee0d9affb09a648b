"""Where a tiny M2H model's background error comes from: the backdrop's colour, or the figure's outline?

    python benchmarks/probe_backdrop.py [--model m2h_core/demo/assets/tiny_m2h.safetensors] [--cases 3]

Samples the demo's held-out pairs as `m2h demo` does (DDIM 20, CFG 1.5, seed 0) with a pretrained-format file
(`python -m m2h_core.demo.pretrained` output) and prints, per pair, PSNR (dB) over the demo's background mask
(neither the person nor the mannequin) split into

  far       - background pixels more than 3 px from the figure: the backdrop itself
  near      - the 3-px ring around the figure: where the drawn outline differs from the truth's
  far+shift - `far` after shifting the result's mean colour there to the truth's: what is left once the backdrop's
              colour is right (high = the only error is the colour)

with the VAE ceiling (the ground truth through the tiny VAE) beside far and near, and the truth's and the result's
mean backdrop colour (0-255).

PSNR per frame, then the mean (`metrics.masked_psnr`, as metrics.json). What it measured: docs/demo.md.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch


def _rgb(c: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in c * 255)


def main(argv: list[str] | None = None) -> None:
    from m2h_core.demo.pretrained import SHIPPED_M2H, load_pretrained
    from m2h_core.demo.evaluation import heldout_test_cases
    from m2h_core.frames import to_nhwc
    from m2h_core.demo.recipe import DemoSettings
    from m2h_core.demo.tiny_vae import reconstruct
    from m2h_core.inference.sampler import sample_video
    from m2h_core.metrics import masked_psnr as psnr  # per frame, then the mean: as metrics.json's figures

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(SHIPPED_M2H), help="a pretrained-format tiny M2H file")
    ap.add_argument("--cases", type=int, default=3, help="held-out pairs (the demo's eval_cases)")
    ap.add_argument("--ring", type=int, default=3, help="width of the `near` ring in pixels")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, enc, _ = load_pretrained(a.model)
    s = DemoSettings(eval_cases=a.cases)
    print(f"{a.model}: clothing_fill {model.cfg.clothing_fill}")
    print("pair  far (ceiling)  far+shift  near (ceiling)  backdrop truth / result")
    k = np.ones((2 * a.ring + 1, 2 * a.ring + 1), np.uint8)
    for i, c in enumerate(heldout_test_cases(s, 0, model.cfg.height, model.cfg.width)):
        out = sample_video(model, enc, c.video(), c.identity(), s.sampler_settings(0)).frames
        p = to_nhwc(out.clamp(0, 1)).numpy().astype(np.float64)
        g = to_nhwc(c.ground_truth).numpy().astype(np.float64)
        ceil = to_nhwc(reconstruct(enc.vae, c.ground_truth).clamp(0, 1)).numpy().astype(np.float64)
        bg = c.background_masks.numpy()
        far = np.stack([cv2.erode(b.astype(np.uint8), k) for b in bg]) > 0
        near = bg & ~far
        shifted = p.copy()
        shifted[far] += g[far].mean(0) - p[far].mean(0)
        print(f"{i:>4}  {psnr(p, g, far):5.1f} ({psnr(ceil, g, far):4.1f})   {psnr(shifted, g, far):5.1f}     "
              f"{psnr(p, g, near):5.1f} ({psnr(ceil, g, near):4.1f})   "
              f"{_rgb(g[far].mean(0))} / {_rgb(p[far].mean(0))}", flush=True)


if __name__ == "__main__":
    main()
