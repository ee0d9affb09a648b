"""How the demo scores a model: held-out (mannequin clip, person) pairs and their metrics.

A `HeldOutCase` is a synthetic clip rendered as a mannequin (the sampler's inputs) and as a held-out person (the
ground truth); `score_case` gives clothing / head / background PSNR, clothing SSIM and the head-colour identity
stand-ins, `identity_correlations` whether the result's face and hair colours follow the person across people.
`score_heldout` is what `run_demo` reports and `pretrained.pretrain` records in its file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..frames import to_nhwc
from ..inference.encoders import FrozenEncoders
from ..inference.inputs import IdentityInputs, VideoInputs
from ..inference.sampler import sample_video
from ..metrics import masked_psnr, masked_ssim
from ..models.m2h import M2HModel
from ..training.dataset import transform_sample
from .recipe import DemoSettings, head_masks
from .synthetic import SyntheticClip, generate_clip
from .tiny_vae import reconstruct

METRIC_DEFINITIONS = {
    "clothing_psnr": "PSNR (dB) over the clothing-mask pixels, generated vs ground-truth human frames",
    "clothing_ssim": "SSIM (11x11 Gaussian window) averaged over the clothing-mask pixels",
    "head_colour_similarity": "identity stand-in (ArcFace cannot read a ~6 px face): 1 - mean |dRGB| "
                              "between the mean colours of generated and ground-truth frames over the "
                              "ground truth's face-skin and hair regions, averaged over frames (1 = same)",
    "head_colour_similarity_to_mannequin": "control: 1 - mean |dRGB| between the mean colour over the "
                                           "head region of the generated frames and of the mannequin "
                                           "input (high = the grey mannequin head was copied)",
    "head_psnr": "PSNR (dB) over the ground truth's head (face + hair) pixels",
    "full_frame_psnr": "PSNR (dB) over whole frames",
    "background_psnr": "PSNR (dB) over the pixels where neither the person nor the mannequin is (the "
                       "scene: with clothing_fill 'backdrop' the model is told the backdrop's colour, "
                       "with 'black', the paper's, it paints the one it learned)",
    "vae_reconstruction_of_ground_truth": "the ground truth through the tiny VAE: the ceiling at this size",
    "heldout_mean": "mean over `eval_cases` held-out (mannequin clip, person) pairs; vae_ceiling = the "
                    "ground truth through the tiny VAE on the same pairs",
    "identity.face_colour_correlation": "Pearson r, across the identity sheet's held-out people, between "
                                        "the result's and the ground truth's mean face-skin colour "
                                        "(channels centred over people, pooled); 1 = follows the person",
    "identity.hair_colour_correlation": "the same over the hair region (head minus face skin)",
    "seconds.total": "the demo's wall time (all stages), seconds",
}


@dataclass
class HeldOutCase:
    """A held-out mannequin clip worn by a held-out person: the sampler's inputs, the ground truth, its regions."""

    mannequin: torch.Tensor  # (N, 3, H, W) mannequin frames
    clothing_masks: torch.Tensor  # (N, H, W)
    pose_images: torch.Tensor  # (N, 3, H, W)
    identity_image: torch.Tensor  # (3, H, W)
    identity_landmarks: torch.Tensor
    arcface: torch.Tensor  # (512,)
    ground_truth: torch.Tensor  # (N, 3, H, W) the same clip rendered as a human with the held-out identity
    face_masks: torch.Tensor  # (N, H, W) ground truth's face
    head_masks: torch.Tensor  # (N, H, W) ground truth's head incl. hair (person pixels above the neck)
    background_masks: torch.Tensor  # (N, H, W) pixels where neither the person nor the mannequin is
    clip: SyntheticClip
    donor: SyntheticClip

    def video(self, n: int | None = None) -> VideoInputs:
        return VideoInputs(self.mannequin[:n], self.clothing_masks[:n], self.pose_images[:n])

    def identity(self) -> IdentityInputs:
        return IdentityInputs(self.identity_image, self.identity_landmarks, self.arcface)


def heldout_case(seed: int, n_frames: int, H: int, W: int, src_scale: int) -> HeldOutCase:
    """A held-out mannequin clip + the identity of another held-out person; both seeds are outside the training
    set's seed stream."""
    s_clip, s_id = (int(s) for s in np.random.SeedSequence([int(seed), 7]).generate_state(2))
    return build_case(s_clip, s_id, n_frames, H, W, src_scale)


def build_case(s_clip: int, s_id: int, n_frames: int, H: int, W: int, src_scale: int) -> HeldOutCase:
    """The clip of seed `s_clip` worn by the person of seed `s_id`: mannequin inputs, that person's identity inputs
    and the ground truth (the same clip rendered as that person), with face / head masks, at H x W."""
    donor = generate_clip(s_id, n_frames=1, height=H * src_scale, width=W * src_scale)
    gt = generate_clip(s_clip, n_frames=n_frames, height=H * src_scale, width=W * src_scale, identity=donor.identity)
    man, _ = transform_sample(gt.mannequin, gt.clothing_mask, gt.face_mask, gt.pose_images, donor.identity_image,
                              donor.identity_landmarks, H, W)
    hum, _ = transform_sample(gt.human, gt.person_mask, gt.face_mask, gt.pose_images, donor.identity_image,
                              donor.identity_landmarks, H, W)
    person = hum["clothing_masks"].numpy() > 0.5  # (person mask went through the clothing-mask slot)
    head = head_masks(gt, H / gt.human.shape[1], H, W, person) & ~(man["clothing_masks"].numpy() > 0.5)
    mannequin, _ = transform_sample(gt.mannequin, gt.mannequin_mask, gt.face_mask, gt.pose_images,
                                    donor.identity_image, donor.identity_landmarks, H, W)
    background = ~person & ~(mannequin["clothing_masks"].numpy() > 0.5)  # (mannequin mask in the same slot)
    return HeldOutCase(mannequin=man["frames"], clothing_masks=man["clothing_masks"], pose_images=man["pose_images"],
                     identity_image=man["identity_image"], identity_landmarks=man["identity_landmarks"],
                     arcface=torch.from_numpy(donor.identity_embedding.copy()), ground_truth=hum["frames"],
                     face_masks=man["face_masks"], head_masks=torch.from_numpy(head),
                     background_masks=torch.from_numpy(background), clip=gt, donor=donor)


def heldout_test_cases(s: DemoSettings, seed: int, H: int, W: int) -> list[HeldOutCase]:
    """The demo's `s.eval_cases` held-out (mannequin clip, person) pairs (seeds seed + 1000 k); the first is shown."""
    return [heldout_case(seed + 1000 * k, s.test_frames, H, W, 2) for k in range(s.eval_cases)]


def identity_variants(case: HeldOutCase, n: int, seed: int, H: int, W: int, n_frames: int) -> list[HeldOutCase]:
    """n more held-out people for the same mannequin clip, each as a whole test case (ground truth, masks)."""
    out = []
    for k in range(n):
        s_id = int(np.random.SeedSequence([int(seed), 13, k]).generate_state(1)[0])
        out.append(build_case(int(case.clip.seed), s_id, n_frames, H, W, 2))
    return out


def identity_runs(model: M2HModel, encoders: FrozenEncoders, case: HeldOutCase, s: DemoSettings, seed: int
                  ) -> tuple[list[HeldOutCase], list[torch.Tensor]]:
    """The shown clip worn by `s.identity_sheet_people` other held-out people: (their cases, the model's frames)."""
    H, W = case.mannequin.shape[-2:]
    nf = min(s.num_frames, s.test_frames)
    people = identity_variants(case, s.identity_sheet_people, seed, H, W, nf)
    ss = s.sampler_settings(seed)
    return people, [sample_video(model, encoders, case.video(nf), p.identity(), ss).frames for p in people]


def region_colours(frames: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Mean RGB (in [0, 1]) of each frame over its mask; NaN where the mask is empty. -> (N, 3)."""
    f = to_nhwc(frames).numpy().astype(np.float64)
    m = masks.numpy() > 0.5
    out = np.full((len(f), 3), np.nan)
    for i in range(len(f)):
        if m[i].any():
            out[i] = f[i][m[i]].mean(0)
    return out


def identity_metrics(pred: torch.Tensor, case: HeldOutCase) -> dict[str, float]:
    """Head-region identity stand-ins (ArcFace cannot see a 6-pixel face): colour agreement with the ground truth.

    head_colour_similarity: 1 - mean |ΔRGB| between the mean colours of the prediction and of the ground truth over
    the ground truth's face (skin) and its hair (head minus face), averaged over frames; 1 = identical colours.
    head_psnr: PSNR over the ground truth's head pixels (face + hair).
    """
    face = case.face_masks > 0.5
    hair = (case.head_masks > 0.5) & ~face
    diffs = []
    for m in (face, hair):
        d = np.abs(region_colours(pred, m) - region_colours(case.ground_truth, m)).mean(1)
        diffs.append(d)
    d = np.nanmean(np.stack(diffs), 0)
    # the same colours against the mannequin input: a model that copied the mannequin's grey head scores high here
    head = case.head_masks > 0.5
    m_diff = np.abs(region_colours(pred, head) - region_colours(case.mannequin, head))
    return {"head_colour_similarity": float(1 - np.nanmean(d)),
            "head_colour_similarity_to_mannequin": float(1 - np.nanmean(m_diff.mean(1))),
            "head_psnr": float(masked_psnr(to_nhwc(pred.clamp(0, 1)), to_nhwc(case.ground_truth),
                                           case.head_masks.numpy() > 0.5))}


def score_case(pred: torch.Tensor, case: HeldOutCase) -> dict[str, float]:
    p, g = to_nhwc(pred.clamp(0, 1)), to_nhwc(case.ground_truth)
    out = {"clothing_psnr": float(masked_psnr(p, g, case.clothing_masks.numpy() > 0.5)),
           "clothing_ssim": float(masked_ssim(p, g, case.clothing_masks.numpy() > 0.5)),
           "full_frame_psnr": float(masked_psnr(p, g, None)),
           "background_psnr": float(masked_psnr(p, g, case.background_masks.numpy()))}
    out.update(identity_metrics(pred, case))
    return {k: round(v, 4) for k, v in out.items()}


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over held-out cases (NaN-aware: a case may lack a face region), plus how many cases."""
    out = {k: round(float(np.nanmean([sc[k] for sc in scores])), 4) for k in scores[0]}
    out["cases"] = len(scores)
    return out


def colour_correlation(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson r between per-person mean colours of the results and of the ground truths, (P, 3) each.

    Each channel is centred over the people first, so r measures whether the result's colour *varies with the
    person's* (always painting the average face scores ~0, copying the ground truth scores 1); the P x 3 centred
    values are pooled. NaN rows (no such region) are left out; NaN when fewer than 3 people remain."""
    ok = ~(np.isnan(pred).any(1) | np.isnan(truth).any(1))
    if ok.sum() < 3:
        return float("nan")
    a = pred[ok] - pred[ok].mean(0)
    b = truth[ok] - truth[ok].mean(0)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def identity_correlations(results: list[torch.Tensor], cases: list[HeldOutCase]) -> dict[str, float]:
    """Face-skin and hair colour correlation (`colour_correlation`) of the results with their ground truths
    across people: per person the mean colour over all frames of the ground truth's face / hair region."""
    out: dict[str, float] = {"people": len(cases)}
    for name, region in (("face", lambda c: c.face_masks > 0.5),
                         ("hair", lambda c: (c.head_masks > 0.5) & ~(c.face_masks > 0.5))):
        p = np.stack([np.nanmean(region_colours(r, region(c)), 0) if region(c).any() else np.full(3, np.nan)
                      for r, c in zip(results, cases)])
        t = np.stack([np.nanmean(region_colours(c.ground_truth[: len(r)], region(c)), 0) if region(c).any()
                      else np.full(3, np.nan) for r, c in zip(results, cases)])
        out[f"{name}_colour_correlation"] = round(colour_correlation(p, t), 4)
    return out


def score_heldout(model: M2HModel, encoders: FrozenEncoders, *, eval_cases: int = 3, people: int = 6,
                  seed: int = 0, settings: DemoSettings | None = None) -> dict:
    """The demo's held-out figures for one model, as `run_demo` computes them: per-pair scores and their mean, the
    VAE ceiling on the same pairs, and the identity colour correlations across `people` held-out people on the
    first pair's clip."""
    s = replace(settings or DemoSettings(), eval_cases=eval_cases, identity_sheet_people=people)
    ss = s.sampler_settings(seed)
    cases = heldout_test_cases(s, seed, model.cfg.height, model.cfg.width)
    per = [score_case(sample_video(model, encoders, c.video(), c.identity(), ss).frames, c) for c in cases]
    ceil = [score_case(reconstruct(encoders.vae, c.ground_truth), c) for c in cases]
    out = {"cases": per, "mean": mean_scores(per), "vae_ceiling": mean_scores(ceil)}
    if people >= 3:
        others, frames = identity_runs(model, encoders, cases[0], s, seed)
        out["identity"] = identity_correlations(frames, others)
    return out
