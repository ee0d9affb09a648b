"""What the demo writes besides the video: the contact sheet, the identity sheet and README.txt's text."""

from __future__ import annotations

import cv2
import numpy as np

from .recipe import DemoSettings

STAND_INS = (
    ("CLIP image encoder", "a randomly initialised tiny CLIP vision transformer (2 layers, width 32), frozen, "
                           "instead of CLIP ViT-L/14"),
    ("ArcFace embedding", "the synthetic identity embedding (random Fourier features of the identity's skin / hair / "
                          "eye colours, hair style and face shape, plus a linear projection of the same attributes; "
                          "`synthetic.identity_embedding`) instead of ArcFace on the face crop"),
    ("body poses", "keypoints of the synthetic figure drawn by our OpenPose-style renderer (`pose_render`) "
                   "instead of DWPose on the frames"),
    ("clothing / face masks", "exact masks from the synthetic generator instead of a human-parsing model "
                              "(SCHP / SegFormer) and face detection"),
    ("face landmarks p_id", "the generator's 68 landmarks of the identity image instead of a landmark detector"),
    ("VAE", "the tiny preset's AutoencoderKL (4x down, 8 latent channels), pretrained on synthetic frames and "
            "shipped with the package (m2h_core/demo/assets/tiny_vae.safetensors, `python -m m2h_core.demo.tiny_vae` "
            "re-makes it), instead of SD-1.5's pretrained VAE (8x down)"),
    ("UNet + motion modules", "the tiny preset's 2-level UNet with AnimateDiff-style motion modules, trained from "
                              "random init (here for minutes; the shipped pretrained one, m2h_core/demo/assets/"
                              "tiny_m2h.safetensors, at twice the widths for an hour on two cores) instead of "
                              "SD-1.5's UNet + AnimateDiff v2 (~1.4 B parameters) fine-tuned"),
    ("VGG for the mirror loss", "not used: the perceptual term is off (beta = 0); the mirror loss keeps its "
                                "pixel term (alpha) on the face region"),
    ("data", "synthetic 64x32 figures (sway / turn / walk, tops, bottoms, dresses, patterns) instead of UBC / ASOS "
             "human videos and real mannequin footage"),
)


def label(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((14, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def contact_sheet(rows: list[tuple[str, np.ndarray]], identity: np.ndarray, frames: list[int], scale: int = 3
                  ) -> np.ndarray:
    """rows: (label, (N, H, W, 3) uint8) at `frames`; the identity image sits left of the second (result) row."""
    def up(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, (a.shape[1] * scale, a.shape[0] * scale), interpolation=cv2.INTER_NEAREST)

    gap = np.full((identity.shape[0] * scale, 4, 3), 255, np.uint8)
    out_rows = []
    for i, (name, vid) in enumerate(rows):
        cells = [up(identity) if i == 1 else np.full_like(up(identity), 255)]
        for f in frames:
            cells += [gap, up(vid[f])]
        out_rows.append(label(np.concatenate(cells, 1), name))
    sheet = np.concatenate(out_rows, 0)
    head = label(np.full((0, sheet.shape[1], 3), 255, np.uint8),
                  f"identity (held out) | frames {', '.join(str(f) for f in frames)}")
    return np.concatenate([head, sheet], 0)


def identity_sheet(columns: list[tuple[np.ndarray, np.ndarray, np.ndarray]], frame: int, scale: int = 3
                   ) -> np.ndarray:
    """One mannequin frame, several people: per column the identity photo, the result and the ground truth.

    columns: (identity image (H, W, 3), result video (N, H, W, 3), ground-truth video (N, H, W, 3)), uint8."""
    def up(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, (a.shape[1] * scale, a.shape[0] * scale), interpolation=cv2.INTER_NEAREST)

    rows = []
    for name, pick in (("identity photo", lambda c: c[0]), (f"result, frame {frame}", lambda c: c[1][frame]),
                       ("ground truth", lambda c: c[2][frame])):
        cells = []
        for c in columns:
            cells += [up(pick(c)), np.full((c[0].shape[0] * scale, 4, 3), 255, np.uint8)]
        rows.append(label(np.concatenate(cells[:-1], 1), name))
    head = label(np.full((0, rows[0].shape[1], 3), 255, np.uint8), "one held-out mannequin clip, held-out people")
    return np.concatenate([head] + rows, 0)


def readme_text(settings: DemoSettings, metrics: dict, report_lines: list[str]) -> str:
    names = [n for n in ("pretrained", "trained", "untrained") if n in metrics] + ["vae_ceiling"]
    shown = dict(metrics, vae_ceiling=metrics["vae_reconstruction_of_ground_truth"])
    steps = metrics.get("training", {}).get("steps")
    pre = metrics.get("pretrained_model") or {}
    lines = [
        "M2HVideo tiny CPU demo",
        "======================",
        "",
        "What ran: a synthetic dataset of human clips was generated; the tiny VAE was loaded (or trained); the",
        "tiny M2H model was trained here from random init on the human clips with the real trainer (L_diff +",
        "pixel mirror loss, %s steps); then the real sampler turned HELD-OUT mannequin clips (clothing frames," % steps,
        "clothing masks and body poses from the mannequin rendering) into people with HELD-OUT identities (identity",
        "image, landmark image and embedding of a different person), with that model, the same model untrained and",
        "(if shipped) the pretrained tiny M2H model: the same trainer and settings run for %s steps on %s clips,"
        % (pre.get("total_train_steps", "more"), pre.get("n_clips", "more")),
        "made by `%s`." % pre.get("command", "python -m m2h_core.demo.pretrained"),
        "The ground truth is the same outfit + motion rendered as a human",
        "with that identity.",
        "",
        "Files:",
        "  result.mp4 / result.gif   the generated video (upscaled x%d, nearest neighbour)" % settings.video_scale,
        "  contact_sheet.png         rows: mannequin input | result | ground truth | trained here | untrained",
        "  identity_sheet.png        the same mannequin clip with other held-out people: photo | result | truth",
        "  m2h_tiny.safetensors      the model trained here with its VAE and CLIP embedded (load_pipeline(path))",
        "  metrics.json              every figure below, per held-out pair and mean",
        "",
        "Results (the shown held-out pair, %d frames):" % metrics["num_frames"],
        "  " + " " * 37 + "".join(f"{n[:11]:>12}" for n in names),
    ]
    keys = ("clothing_psnr", "clothing_ssim", "head_colour_similarity", "head_colour_similarity_to_mannequin",
            "head_psnr", "background_psnr", "full_frame_psnr")
    for k in keys:
        lines.append(f"  {k:<37}" + "".join(f"{shown[n][k]:>12.3f}" for n in names))
    hm = metrics.get("heldout_mean")
    if hm and hm["trained"]["cases"] > 1:
        lines += ["", "Mean over %d held-out (mannequin clip, person) pairs, the one above included"
                  " (vae_ceiling = the ground truth through the VAE):" % hm["trained"]["cases"],
                  "  " + " " * 37 + "".join(f"{n[:11]:>12}" for n in names)]
        for k in keys:
            lines.append(f"  {k:<37}" + "".join(f"{hm[n][k]:>12.3f}" for n in names))
    ident = metrics.get("identity") or {}
    if ident:
        lines += ["", f"Identity ({ident.get('model', 'trained')} model) across the identity sheet's "
                  f"{ident['people']} held-out people (colour correlation, 1 = follows the person): "
                  f"face {ident['face_colour_correlation']:.3f}, hair {ident['hair_colour_correlation']:.3f}"]
    lines += ["", "Metric definitions:"] + [f"  {k}: {v}" for k, v in metrics["definitions"].items()]
    lines += ["", "Stand-ins at this size (what the full size uses - the paper's data, our SD-1.5 + AnimateDiff "
              "backbone -> what this demo uses):"]
    lines += [f"  - {name}: {what}" for name, what in STAND_INS]
    lines += ["", "Training differences from the full-size recipe (the paper's settings on our SD-1.5 backbone), for a "
              "few minutes of CPU: the model predicts x0",
              "relative to the clothing latents (x0 = UNet + f_c, prediction_type=sample, clothing_skip) instead of",
              "epsilon, Adam beta1 = 0.9 and lr %g with a %s decay instead of beta1 = 0 and a constant 5e-5,"
              % (settings.lr, settings.lr_schedule),
              "mirror loss alpha = %g (pixel term only), no half-resolution phase, CFG scale %g at sampling."
              % (settings.mirror_alpha, settings.guidance_scale)]
    lines += ["", "This is a demonstration that every part of the method runs and learns, not a model of people:",
              "64x32 px, minutes of CPU training, synthetic data. For real use, train the sd15 preset (train/).", ""]
    lines += report_lines
    return "\n".join(lines) + "\n"
