"""The mirror loss (paper Sec. III-D, Eq. 5-6): a pixel-space face loss through a one-step x0 estimate.

From the noisy latent and the UNet's ε̂, DDIM's predicted x0 (`one_step_x0`, z̃_0 = (z_t - √(1-ᾱ_t)·ε̂) / √ᾱ_t; the
paper's Eq. 5 is SVD's EDM scaling and does not recover z_0 for SD-1.5's ε-prediction UNet) is decoded by the VAE
and compared with the ground truth inside the face mask M_id: α·L2 + β·VGG16 perceptual (relu1_2, relu2_2,
relu3_3; the paper's relu3_4 exists only in VGG19).

`MirrorLoss` knobs: `weighting="alpha_bar"` multiplies each clip's loss by ᾱ_t, which bounds it by the ε error (the
x0 error grows with σ_t, about 14.6 at t = 999); "none" is the paper's form; `t_max` skips noisier clips. `reduction`:
"normalized" (default; per-pixel / per-feature means, independent of resolution and frame count), "literal" (Eq. 4
and Eq. 6 both as sums, divided by the clip's latent size) or "paper" (Eq. 6's sums against Eq. 4's mean, hundreds
of times L_diff). `crop=True` decodes only a window of latent cells around the face (+ `margin`), an approximation
`train.py --preflight` measures (`crop_vs_full_loss_rel`).

The derivations and the reasoning behind each choice: docs/REPRODUCE.md, "The mirror loss in detail".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: "normalized" (per-pixel means, ᾱ_t-weighted; the default), "literal" (Eq. 4 and Eq. 6 both as sums), "paper"
#: (Eq. 6's sums against Eq. 4's mean): docs/REPRODUCE.md, "The mirror loss in detail".
MIRROR_REDUCTIONS = ("normalized", "literal", "paper")


def alphas_cumprod_at(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t from a diffusers scheduler (anything with `alphas_cumprod`) for timesteps t (B,), on like's device in
    float32 (float64 when `like` is float64), shaped (B, 1, ...) to broadcast against `like` (B, ...)."""
    ac = scheduler.alphas_cumprod
    ac = ac if isinstance(ac, torch.Tensor) else torch.as_tensor(ac)
    t = torch.as_tensor(t, device=ac.device).long()
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.min() < 0 or t.max() >= ac.shape[0]:
        raise ValueError(f"timesteps must lie in [0, {ac.shape[0] - 1}], got {t.min().item()}..{t.max().item()}")
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    a = ac[t].to(device=like.device, dtype=dtype)
    return a.view(-1, *([1] * (like.ndim - 1)))


def eps_from_v(v_pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, scheduler) -> torch.Tensor:
    """ε̂ from a v-prediction: with v = √ᾱ_t ε - √(1-ᾱ_t) z_0 and z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε (Eq. 1),
    ε = √ᾱ_t v + √(1-ᾱ_t) z_t. Per sample (t is (B,) or a scalar); returned in v_pred's dtype."""
    a = alphas_cumprod_at(scheduler, t, z_t)
    return (a.sqrt() * v_pred.to(a.dtype) + (1 - a).sqrt() * z_t.to(a.dtype)).to(v_pred.dtype)


def eps_from_x0(x0_pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, scheduler) -> torch.Tensor:
    """ε̂ from an x0 prediction: ε = (z_t - √ᾱ_t z_0) / √(1-ᾱ_t) (Eq. 1 solved for ε; 1-ᾱ_t >= β_1 > 0), so that
    `one_step_x0` gives x0_pred back. Per sample; returned in x0_pred's dtype."""
    a = alphas_cumprod_at(scheduler, t, z_t)
    return ((z_t.to(a.dtype) - a.sqrt() * x0_pred.to(a.dtype)) / (1 - a).sqrt()).to(x0_pred.dtype)


def one_step_x0(z_t: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor, scheduler) -> torch.Tensor:
    """DDIM's predicted x0: (z_t - √(1-ᾱ_t)·ε̂) / √ᾱ_t, per sample (t is (B,) or a scalar).
    Why not Eq. 5: docs/REPRODUCE.md."""
    a = alphas_cumprod_at(scheduler, t, z_t)
    x0 = (z_t.to(a.dtype) - (1 - a).sqrt() * eps_pred.to(a.dtype)) / a.sqrt()
    return x0.to(eps_pred.dtype)


def mirror_weight(t: torch.Tensor, scheduler, weighting: str = "alpha_bar", t_max: int | None = None
                  ) -> torch.Tensor:
    """Per-clip weight (B,) of the mirror loss: ᾱ_t ('alpha_bar') or 1 ('none'), zero above t_max."""
    t = torch.as_tensor(t).long().reshape(-1)
    if weighting == "alpha_bar":
        w = alphas_cumprod_at(scheduler, t, t.float()).reshape(-1)
    elif weighting == "none":
        w = torch.ones(t.shape, dtype=torch.float32)
    else:
        raise ValueError(f"mirror weighting must be 'alpha_bar' or 'none', got {weighting!r}")
    if t_max is not None:
        w = w * (t.to(w.device) <= t_max).float()
    return w


def face_crop_boxes(face_masks: torch.Tensor, downscale: int, latent_hw: tuple[int, int], margin: int = 2
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Latent-cell crop windows around the faces of (N, H, W) masks.

    Returns (boxes (N, 2) = top-left (y, x) in latent cells, (ch, cw) the common crop size in cells). Each box
    contains its frame's face bounding box (rounded outwards to whole cells) plus `margin` cells per side where
    the latent allows; frames without a face get box (0, 0) (the caller skips them).
    """
    n = face_masks.shape[0]
    lh, lw = latent_hw
    m = face_masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)  # (N, H), (N, W)
    has = rows.any(dim=1)
    if not has.any():
        return torch.zeros(n, 2, dtype=torch.long), (0, 0)
    ar_h = torch.arange(m.shape[1], device=m.device)
    ar_w = torch.arange(m.shape[2], device=m.device)
    big = 1 << 30
    y0 = torch.where(rows, ar_h, big).amin(1) // downscale
    y1 = torch.where(rows, ar_h, -1).amax(1) // downscale + 1  # exclusive, in cells
    x0 = torch.where(cols, ar_w, big).amin(1) // downscale
    x1 = torch.where(cols, ar_w, -1).amax(1) // downscale + 1
    ch = int(min(lh, ((y1 - y0)[has]).max().item() + 2 * margin))
    cw = int(min(lw, ((x1 - x0)[has]).max().item() + 2 * margin))
    # centre the window on the box, then clamp into the latent
    top = ((y0 + y1 - ch) // 2).clamp(0, lh - ch)
    left = ((x0 + x1 - cw) // 2).clamp(0, lw - cw)
    boxes = torch.stack([top, left], 1).cpu()
    boxes[~has.cpu()] = 0
    return boxes, (ch, cw)


def _crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], scale: int) -> torch.Tensor:
    """Crop (N, C, H, W) at boxes (N, 2) given in cells of `scale` pixels, size in cells."""
    h, w = size[0] * scale, size[1] * scale
    return torch.stack([x[i, :, y * scale: y * scale + h, xx * scale: xx * scale + w]
                        for i, (y, xx) in enumerate(boxes.tolist())])


@dataclass
class MirrorLossOutput:
    loss: torch.Tensor  # scalar: α·pixel + β·perceptual, weighted and reduced over frames and clips
    pixel: torch.Tensor  # scalar (detached): the weighted, reduced pixel term (without α)
    perceptual: torch.Tensor  # scalar (detached): the weighted, reduced perceptual term (without β)
    frames_decoded: int
    decoded_pixels: int  # H*W per decoded frame, times frames (for the crop-vs-full benchmark)
    pixel_term: torch.Tensor | None = None  # `pixel` with its graph (gradient-norm calibration, preflight.py)
    perceptual_term: torch.Tensor | None = None  # `perceptual` with its graph


class MirrorLoss(nn.Module):
    """Eq. 6 on the one-step x0 estimate. `vgg`: a frozen `m2h_core.vgg.VGGFeatures` (may be None when beta=0).

    alpha, beta: Eq. 6's weights; the defaults are Table I's (= Table IV's α = 0.05, β = 0.005 row; Sec. IV-B's
    text says β = 0.001). reduction: "normalized" (default), "literal" or "paper" (docs/REPRODUCE.md); weighting:
    "alpha_bar", "none", or None for the reduction's own (normalized: alpha_bar, literal and paper: none)."""

    def __init__(self, vgg: nn.Module | None, alpha: float = 0.05, beta: float = 0.005, *, crop: bool = True,
                 margin: int = 2, weighting: str | None = None, t_max: int | None = None,
                 reduction: str = "normalized"):
        super().__init__()
        if beta and vgg is None:
            raise ValueError("the perceptual term (beta > 0) needs a VGG16 (m2h_core.vgg.VGGFeatures)")
        if reduction not in MIRROR_REDUCTIONS:
            raise ValueError(f"mirror reduction must be one of {MIRROR_REDUCTIONS}, got {reduction!r}")
        weighting = weighting or ("alpha_bar" if reduction == "normalized" else "none")
        if weighting not in ("alpha_bar", "none"):
            raise ValueError(f"mirror weighting must be 'alpha_bar' or 'none', got {weighting!r}")
        self.reduction = reduction
        self.vgg = vgg
        self.alpha, self.beta = float(alpha), float(beta)
        self.crop, self.margin = bool(crop), int(margin)
        self.weighting, self.t_max = weighting, t_max

    def forward(self, z_t: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                face_masks: torch.Tensor, encoders, scheduler) -> MirrorLossOutput:
        """z_t, eps_pred (B, F, c, h, w); t (B,); target = ground-truth frames v_h (B, F, 3, H, W) in [0, 1];
        face_masks M_id (B, F, H, W) in {0, 1}; encoders: `FrozenEncoders` (its VAE decoder is used with grad)."""
        b, f = z_t.shape[:2]
        if target.shape[:2] != (b, f) or face_masks.shape[:2] != (b, f):
            raise ValueError(f"mirror loss: latents are {b}x{f} clips x frames but targets are "
                             f"{tuple(target.shape[:2])} and face masks {tuple(face_masks.shape[:2])}")
        if face_masks.ndim == 5:
            face_masks = face_masks[:, :, 0]
        zero = eps_pred.sum() * 0.0
        w_clip = mirror_weight(t, scheduler, self.weighting, self.t_max).to(z_t.device)  # (B,)
        empty = MirrorLossOutput(zero, zero.detach(), zero.detach(), 0, 0, zero, zero)
        if self.alpha == 0 and self.beta == 0:
            return empty
        x0 = one_step_x0(z_t, eps_pred, t, scheduler)  # (B, F, c, h, w)
        masks = face_masks.to(z_t.device).float().flatten(0, 1)  # (N, H, W)
        has_face = masks.flatten(1).sum(1) > 0
        w_frame = w_clip.repeat_interleave(f)
        sel = (has_face & (w_frame > 0)).nonzero().flatten()
        if sel.numel() == 0:
            return empty
        lat = x0.flatten(0, 1)[sel]
        gt = target.to(z_t.device).flatten(0, 1)[sel].float()
        mk = masks[sel]
        scale = gt.shape[-1] // lat.shape[-1]
        if self.crop:
            boxes, size = face_crop_boxes(mk, scale, tuple(lat.shape[-2:]), self.margin)
            lat = _crop(lat, boxes, size, 1)
            gt = _crop(gt, boxes, size, scale)
            mk = _crop(mk[:, None], boxes, size, scale)[:, 0]
        pred = encoders.decode(lat, grad=True).float()  # (n, 3, Hc, Wc), unclamped
        mk4 = mk[:, None]
        paper = self.reduction in ("paper", "literal")  # Eq. 6's sums
        area = mk.flatten(1).sum(1).clamp_min(1.0)  # (n,)
        pixel = ((pred - gt) * mk4).square().flatten(1).sum(1)  # Eq. 6: Σ over the masked pixels and channels
        if not paper:
            pixel = pixel / (3 * area)
        perceptual = torch.zeros_like(pixel)
        if self.beta:
            feats = self.vgg(torch.cat([pred * mk4, gt * mk4]))  # one VGG pass for both
            n = pred.shape[0]
            for fpg in feats.values():
                d = (fpg[:n] - fpg[n:]).square().flatten(1).sum(1)  # Eq. 6: Σ over positions and channels
                if not paper:
                    m_l = F.interpolate(mk4, size=fpg.shape[-2:], mode="area")
                    d = d / (fpg.shape[1] * m_l.flatten(1).sum(1)).clamp_min(1e-6)
                perceptual = perceptual + d
        # per frame: the weight of its own clip (w_frame is w_clip repeated per frame of that clip)
        w = w_frame[sel]
        if self.reduction == "literal":  # Eq. 6's sum / the clip's latent elements (Eq. 4's sum -> its mean)
            norm = w / b / (f * z_t[0, 0].numel())
        elif paper:  # Σ over the clip's frames, mean over the batch's clips
            norm = w / b
        else:  # mean over the frames that have a face, per clip, then over the batch (a clip with no visible
            # face simply contributes zero)
            frames_with_face = has_face.view(b, f).sum(1).clamp_min(1).float().repeat_interleave(f)[sel]
            norm = w / frames_with_face / b
        pixel_term, perceptual_term = (pixel * norm).sum(), (perceptual * norm).sum()
        loss = self.alpha * pixel_term + self.beta * perceptual_term
        return MirrorLossOutput(loss, pixel_term.detach(), perceptual_term.detach(), int(sel.numel()),
                                int(sel.numel() * pred.shape[-1] * pred.shape[-2]), pixel_term, perceptual_term)


@torch.no_grad()
def crop_decode_error(latents: torch.Tensor, face_masks: torch.Tensor, encoders, margin: int = 2
                      ) -> dict[str, float]:
    """How far the face-crop decode is from the full-frame decode on the face: latents (N, c, h, w), masks
    (N, H, W). Decodes both ways (unclamped, as the loss does) and compares the face-mask pixels of the crop with
    the same pixels of the full decode. Returns face_rmse, face_max_abs (pixels in [0, 1]), face_psnr_db and the
    frame count; an empty dict when no frame has a face."""
    masks = face_masks.float()
    sel = (masks.flatten(1).sum(1) > 0).nonzero().flatten()
    if sel.numel() == 0:
        return {}
    lat, mk = latents[sel], masks[sel].to(latents.device)
    with torch.enable_grad():  # grad=True: the unclamped decode the mirror loss sees; no graph is kept
        full = encoders.decode(lat, grad=True).float().detach()
        scale = full.shape[-1] // lat.shape[-1]
        boxes, size = face_crop_boxes(mk, scale, tuple(lat.shape[-2:]), margin)
        crop = encoders.decode(_crop(lat, boxes, size, 1), grad=True).float().detach()
    full_c = _crop(full, boxes, size, scale)
    mk_c = _crop(mk[:, None], boxes, size, scale)
    d = (crop - full_c) * mk_c
    mse = float(d.square().sum() / (3 * mk_c.sum()).clamp_min(1.0))
    return {"face_rmse": mse ** 0.5, "face_max_abs": float(d.abs().max()),
            "face_psnr_db": float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item(),
            "frames": int(sel.numel()), "crop_cells": f"{size[0]}x{size[1]}"}
