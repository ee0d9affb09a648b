"""The built-in default: a CPU demo that trains a tiny M2H model and turns a mannequin clip into a person.

`run_demo(out_dir)` runs the whole method end to end at the `tiny` preset's size (64x32 px, latents 16x8):

1. data     - a seeded synthetic dataset (`m2h_core.demo.synthetic`): *human* renderings for training, as the paper
              trains on human videos (clothing mask, body poses and identity image/landmarks/embedding all come
              from the same clip), plus one held-out test case: a mannequin clip (clothing frames, clothing masks
              and body poses from the *mannequin* rendering) and the identity of a different, unseen person. The
              generator renders the same outfit + motion + scene with that identity as a human: the ground truth.
              A training clip's identity image x_id wears the clip's own outfit (as in the paper's data, where x_id is
              another frame of the video); at test time it is another person in other clothes.
              `identity_other_outfit=True` trains with x_id in another outfit instead (measured at 600 steps:
              clothing PSNR/SSIM 11.85/0.316 vs 11.83/0.303, head colour similarity 0.78 vs 0.81: off by default).
2. vae      - the paper freezes SD-1.5's *pretrained* VAE; the tiny preset's AutoencoderKL has no published
              weights, so the package ships one pretrained on synthetic frames of its own seed stream
              (`m2h_core/demo/assets/tiny_vae.safetensors`, ~1 MB, made by `python -m m2h_core.demo.tiny_vae`: 8000
              steps x batch 8, 754 s on two cores, then 900 steps of `localize_vae`, 252 s; no mid-block attention,
              see below). It is embedded in the demo's checkpoint. `--train-vae` (vae_source="train") trains one here
              instead: 1000 steps (~110 s) give thumbnail-level reconstructions in which no head colour is visible.
3. train    - the tiny M2H model from random init with the real trainer (`train_demo_model`: L_diff + pixel mirror
              loss, condition dropout, Adam, lr 2e-3, cosine decay), 300 steps: "training works". The model sees only
              the head of x_id (`identity_input="head"`).
4. sample   - the real sampler (`m2h_core.inference.sampler.sample_video`, DDIM 20 + CFG 1.5, context windows) on
              `eval_cases` held-out (mannequin clip, person) pairs, for three models: the shipped pretrained tiny M2H
              model (`m2h_core.demo.pretrained`: the same trainer and settings at twice the UNet widths, 8000 steps
              on 256 clips with the garment-edge band, an hour on two cores; "what it can do"), the model trained
              here and that model untrained.
5. write    - result video (the pretrained model's), contact sheet, identity sheet, checkpoint, README.txt and
              metrics.json: every model vs the VAE ceiling per pair (`heldout_cases`) and mean (`heldout_mean`),
              `identity.face_colour_correlation` / `identity.hair_colour_correlation` across the identity sheet's
              6 held-out people, `seconds.total`.

What moved the result earlier (v-prediction, the attention VAE; one held-out clip with 6 held-out people each): the
shipped VAE instead of a 1000-step one, the identity embedding's linear attribute part, lr 2e-3 instead of 1e-3 and
1500 steps instead of 600 (face colour correlation 0.48, clothing 11.6 -> 13.1 dB). The mirror loss on the whole head
without ᾱ weighting trades clothing for identity (alpha 3: the default; alpha 10: clothing 11.7 dB). Not helping:
96-200 training identities, a wider UNet (32/64) at these step counts (it helps the longer-trained shipped model),
lr 3e-3, batch 1 x 2400 steps.

Why the garment was not kept, and what changed (issue 12; `benchmarks/probe_demo.py`, 3 held-out pairs, clothing
PSNR of the model's own output, VAE ceiling in brackets):
- Not the sampler (CFG 1 / 1.5, DDIM 2 / 5 / 20 / 50 steps: within 0.4 dB) and not the step budget alone.
- v-prediction with an attention VAE 12.0 (21.7). x0-prediction relative to the clothing latents (`clothing_skip`)
  15.3 (21.7). VAE without mid-block attention (global at 16x8 latents) 14.3 (18.6).
- The tiny VAE's latents were not local: the garment's latents on black, VAE(v ⊙ M_c), differed from the same
  garment's latents in its scene by 0.69 of the latent variance (`tiny_vae.locality_error`; GroupNorm statistics are
  global), so a model copying f_c into its output decoded a wrong garment (`tiny_vae.splice_psnr`: 13.1 dB where the
  ceiling is 16.1). `localize_vae` fine-tunes the VAE by distillation from itself so the garment encodes alike on
  black and in its scene: locality 0.17, splice 15.7 (16.1), full-frame reconstruction 22.5 -> 21.4 dB. A locality
  term in the VAE's own training had collapsed a latent channel.
- With that VAE a 1500-step model scores 14.3 (18.3) and face / hair colour correlation 0.93 / 0.87: the VAE was
  not what held the garment back. Per pair the two striped garments are within 0.7 dB of their ceilings (12.6 vs
  13.3, 11.9 vs 12.6; the stripes are 1-2 px at 64x32 and the 4x VAE cannot keep them); the plain dress is 18.3 vs
  28.9: the model draws texture and soft edges over a garment its input shows plain, and even its one-step x0 from
  the noised ground truth at t = 200 is 20.9 there. Input perturbation (`input_perturbation` 0.1, Ning et al. 2023)
  gave 14.7 (18.3) but identity 0.89 / 0.81: off.
- The first shipped pretrained model (4000 steps, 64 clips): 14.6 (18.3), per pair 12.7 / 12.1 / 19.1, SSIM 0.45
  (0.61), face / hair colour correlation 0.97 / 0.87. Twice the UNet widths on 256 clips (the widths shipped now,
  `python -m m2h_core.demo.pretrained`; its docstring has the table): 15.5 (18.3), per pair 12.7 / 12.3 / 21.6, SSIM
  0.52 (0.61), face / hair 0.92 / 0.94. Its gap was all on the plain sleeveless dress, where the model draws sleeves
  over bare arms and a narrower hem than its input shows (its 2-px boundary band 18.9 vs 26.4 dB). 6500 more steps
  with the mirror loss's mask widened to the garment's band (`garment_edge` 3; shipped until the 8-channel VAE):
  16.6 (18.3), per pair 12.9 / 12.4 / 24.4, SSIM 0.54 (0.61), face / hair 0.93 / 0.92; 2500 more steps without
  the band (the control) gave 15.7. Left: 1.7 dB to the ceiling (target 1.5), and the stripes: the 4-channel VAE
  turned the striped trousers brown.
- The VAE with 8 latent channels (`tiny_vae.demo_config`, the shipped one now) keeps the stripes: ceiling 19.7 dB /
  SSIM 0.73 (per pair 14.5 / 14.6 / 30.2). The pretrained model retrained on it (28000 steps, band 3, the last 16000
  with mirror alpha 9-15, the last 12000 on 512 clips): 18.25 (19.74), per pair 13.9 / 13.4 / 27.5, SSIM 0.65
  (0.73), face / hair 0.97 / 0.95. The gap, 1.49 dB, is mostly the plain dress's 2.7; each 4000 steps gave
  +0.06-0.15.
- The clothing frame v ⊙ M_c blacks out the scene, whose backdrop the synthetic clips vary (grey 232-248, tinted), so
  the model painted its average: on the shown clip 13-17 levels too light (`benchmarks/probe_backdrop.py`: far from the
  figure 25.4 dB, 48.4 after a global colour shift to the truth's). With the backdrop's colour filled in outside M_c
  (`M2HConfig.clothing_fill="backdrop"`, `DemoSettings.clothing_fill`) 8000 more steps gave 19.52 (19.74), per pair
  14.6 / 14.4 / 29.6, SSIM 0.72 (0.73), background 30.8 (33.6; it was 28.8), face / hair 0.93 / 0.95. The plain
  dress gained most: around the garment its clothing frame now shows a light backdrop, as the truth does, not black,
  and the sleeve-like flaps are gone. The untrained model now copies the garment on that backdrop, a strong
  baseline for clothing PSNR (18.1) that has no person (head PSNR 7.3 vs the pretrained model's 19.3).
- Left: the shirt's 1-px vertical stripes, which the VAE's encoder already loses (its ceiling row shows a pink
  check). Fine-tuning the decoder alone (3000 steps, encoder frozen, so the model needs no retraining) raised the
  held-out reconstruction 22.7 -> 24.3 dB and the demo ceiling to 20.2, the model's SSIM 0.72 -> 0.74 at the same
  PSNR, and the stripes stayed a check: not shipped. The encoder is what loses them, and it was undertrained: the
  same VAE trained 8000 steps instead of 5000 (`python -m m2h_core.demo.tiny_vae --steps 8000`) reconstructs the
  held-out frames at 26.2 dB before localising (24.0), 23.9 after (22.7), and the demo pairs' clothing ceiling is
  21.7 (per pair 18.2 / 16.2 / 30.9; 19.7 then): the trousers come out red and gold, the shirt's stripes partly.
- That VAE is the shipped one now (re-made: 26.4 dB before localising, 24.1 after, ceiling 21.51, per pair 17.5 /
  16.2 / 30.8). Its latent space is new, so the pretrained model was retrained on it from scratch: 8000 steps on 256
  clips with the backdrop fill and the band gave 21.08 (21.51), per pair 17.4 / 15.9 / 29.9, SSIM 0.84 (0.85), face
  / hair 0.96 / 0.95, head 18.3 (22.3), background 30.8 (34.7). The shirt's vertical stripes show, with a faint check
  over them.

Parameterisation: the demo's model predicts x0 written relative to the clothing latents,
x̂_0 = UNet(...) + f_c (`M2HConfig.clothing_skip`, prediction_type "sample"; its output layer starts at zero, so the
untrained model copies the given garment and draws nothing else). The SD-1.5 preset keeps epsilon (its UNet is
pretrained that way). An earlier version predicted v: with epsilon the loss barely weighs the x0 error at high
noise (ᾱ_t / (1 - ᾱ_t) ≈ 0.005 at t = 999), so a few-minute model leaned on leftover signal in z_t.

Threads: on a machine that is already busy, two PyTorch threads on two cores are many times slower than one
(the threads wait for each other), so `threads=None` uses one thread when the load average is high.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..training.dataset import SyntheticClipDataset, transform_sample
from ..inference.encoders import FrozenEncoders
from ..metrics import masked_psnr, masked_ssim
from ..models.m2h import M2HModel
from ..inference.inputs import IdentityInputs, VideoInputs
from ..inference.sampler import SamplerSettings, sample_video
from .synthetic import SyntheticClip, generate_clip, generate_dataset
from .pretrained import SHIPPED_M2H, load_pretrained
from .tiny_vae import (SHIPPED_VAE, demo_config, load_vae_weights, masked_pairs, reconstruct,
                       train_tiny_vae, vae_training_images)
from ..video_io import write_video

__all__ = ["DemoSettings", "DemoReport", "run_demo", "STAND_INS"]

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
            "shipped with the package (m2h_core/demo/assets/tiny_vae.safetensors, `python -m m2h_core.demo.tiny_vae` re-makes "
            "it), instead of SD-1.5's pretrained VAE (8x down)"),
    ("UNet + motion modules", "the tiny preset's 2-level UNet with AnimateDiff-style motion modules, trained from "
                              "random init (here for minutes; the shipped pretrained one, m2h_core/demo/assets/"
                              "tiny_m2h.safetensors, at twice the widths for an hour on two cores) instead of "
                              "SD-1.5's UNet + AnimateDiff v2 (~1.4 B parameters) fine-tuned"),
    ("VGG for the mirror loss", "not used: the perceptual term is off (beta = 0); the mirror loss keeps its "
                                "pixel term (alpha) on the face region"),
    ("data", "synthetic 64x32 figures (sway / turn / walk, tops, bottoms, dresses, patterns) instead of UBC / ASOS "
             "human videos and real mannequin footage"),
)


@dataclass
class DemoSettings:
    n_train_clips: int = 24
    clip_frames: int = 24  # frames per training clip
    test_frames: int = 16  # frames of the held-out mannequin video
    fps: float = 8.0
    vae_source: str = "shipped"  # "shipped": the pretrained tiny VAE in m2h_core/demo/assets; "train": train one here
    vae_path: str = ""  # another file written by tiny_vae.save_vae (vae_source="shipped")
    vae_steps: int = 1000  # vae_source="train" (or the shipped file is missing)
    vae_batch: int = 8
    vae_lr: float = 2e-3
    vae_anchor_fraction: float = 0.15  # thumbnail anchor for the first 15 % of the VAE steps (see tiny_vae)
    vae_locality_weight: float = 0.0  # garment-locality term (tiny_vae.locality_error); off, as for the shipped VAE
    train_steps: int = 300  # the model trained here ("training works"); the shipped pretrained one had 8000 at twice the widths
    batch_size: int = 2
    num_frames: int = 8
    frame_stride: int = 2
    lr: float = 2e-3
    warmup_steps: int = 10
    lr_schedule: str = "cosine"  # TrainConfig.lr_schedule: decays to 0 over the few minutes of training
    mirror_alpha: float = 3.0
    # v-prediction's x0 estimate is well-behaved at every t, so the mirror loss needs no ᾱ weighting here; it is
    # what teaches the head's colours, which only the identity inputs can supply at high noise (module docstring)
    mirror_weighting: str = "none"  # TrainConfig.mirror_weighting
    identity_mask: str = "head"  # M_id for the mirror loss: "face" (skin only) or "head" (face + hair)
    # > 0: the mirror loss's pixel mask also covers the garment's boundary band, this many pixels either side of the
    # clothing mask's edge (at the training clips' size): where sleeves, hems and bare arms meet (`_with_garment_edge`)
    garment_edge: int = 0
    cond_dropout: float = 0.1
    input_perturbation: float = 0.0  # TrainConfig.input_perturbation
    identity_other_outfit: bool = False  # True: training x_id shows the same person in another outfit (see doc)
    vae_max_images: int = 0  # > 0: at most this many VAE training images (every k-th frame of the clips)
    progressive: bool = False
    prediction_type: str = "sample"  # see the module docstring
    clothing_skip: bool = True  # x̂_0 = UNet(...) + f_c (M2HConfig.clothing_skip; module docstring)
    # outside M_c the clothing frame holds the scene's backdrop colour, not black (M2HConfig.clothing_fill): the
    # synthetic scenes' backdrops vary, and v ⊙ M_c hides them (issue 12)
    clothing_fill: str = "backdrop"
    unet_channels: tuple[int, ...] = (16, 32)  # the tiny preset's UNet widths (block_out_channels)
    sample_steps: int = 20
    guidance_scale: float = 1.5
    eval_cases: int = 3  # held-out (mannequin clip, person) pairs scored; the first one is shown
    identity_sheet_people: int = 6  # identity_sheet.png: the shown clip with this many other held-out people
    scheduler: str = "ddim"
    # the shipped pretrained tiny M2H model (`m2h_core.demo.pretrained`), sampled beside the model trained here
    pretrained: bool = True
    pretrained_path: str = ""  # another file written by `python -m m2h_core.demo.pretrained --out PATH`
    sheet_frames: int = 6
    video_scale: int = 4  # result.mp4 is upscaled (nearest) this many times: 64x32 px is tiny on screen

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(n_train_clips=3, clip_frames=12, test_frames=8, vae_source="train", vae_steps=12, vae_batch=8,
                   train_steps=12, batch_size=1, sample_steps=3, sheet_frames=4, eval_cases=1,
                   identity_sheet_people=3)


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


@contextmanager
def _quiet_tqdm():
    """The trainer's tqdm bar off while the demo reports its own progress lines."""
    import tqdm.auto

    orig = tqdm.auto.tqdm

    class _Off(orig):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            kw["disable"] = True
            super().__init__(*a, **kw)

    tqdm.auto.tqdm = _Off
    try:
        yield
    finally:
        tqdm.auto.tqdm = orig


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


@dataclass
class _TestCase:
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


def _head_masks(clip: SyntheticClip, scale_y: float, height: int, width: int, person: np.ndarray) -> np.ndarray:
    """Person pixels above each frame's neck keypoint (the head with its hair), at the output size."""
    out = np.zeros((len(person), height, width), bool)
    ys = np.arange(height)[:, None]
    for i, p in enumerate(clip.poses):
        neck_y = float(p.body[1, 1]) * scale_y
        out[i] = person[i] & (ys < neck_y)
    return out


def _with_head_mask(clip: SyntheticClip) -> SyntheticClip:
    """The clip with its face mask (the mirror loss's M_id) widened to the whole head: face skin + hair."""
    head = _head_masks(clip, 1.0, clip.human.shape[1], clip.human.shape[2], clip.person_mask) & ~clip.clothing_mask
    return dataclasses.replace(clip, face_mask=head | clip.face_mask)


def _with_garment_edge(clip: SyntheticClip, k: int) -> SyntheticClip:
    """The clip with its mirror-loss mask widened by the garment's boundary band: pixels within `k` of the clothing
    mask's edge, inside or out. The latent L2 loss weighs a 4x4-pixel cell the same wherever it is; decoded, the
    garment's edge (a sleeve or its absence over a bare arm, a hem's flare) is where a small latent error costs the
    most pixels, so the pixel loss is put there too."""
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    m = clip.clothing_mask.astype(np.uint8)
    band = np.stack([cv2.morphologyEx(x, cv2.MORPH_GRADIENT, kernel) > 0 for x in m])  # dilation minus erosion
    return dataclasses.replace(clip, face_mask=clip.face_mask | band)


def _with_other_outfit(clip: SyntheticClip) -> SyntheticClip:
    """The clip with its identity image x_id (and p_id) re-rendered: the same person in another outfit and scene.

    The generator's identity image wears the clip's own outfit, so a model trained on it can read the clothing off
    x_id; at test time x_id is another person's photo in other clothes. With x_id in other clothes in training too,
    only the head (skin, hair, face) in x_id is informative, which is what H and A are meant to carry."""
    other_seed = int(np.random.SeedSequence([int(clip.seed), 11]).generate_state(1)[0])
    h, w = clip.human.shape[1:3]
    donor = generate_clip(other_seed, n_frames=1, height=h, width=w, identity=clip.identity)
    return dataclasses.replace(clip, identity_image=donor.identity_image, identity_landmarks=donor.identity_landmarks)


def _make_test_case(seed: int, n_frames: int, H: int, W: int, src_scale: int) -> _TestCase:
    """A held-out mannequin clip + the identity of another held-out person; both seeds are outside the training
    set's seed stream."""
    s_clip, s_id = (int(s) for s in np.random.SeedSequence([int(seed), 7]).generate_state(2))
    return _build_case(s_clip, s_id, n_frames, H, W, src_scale)


def _build_case(s_clip: int, s_id: int, n_frames: int, H: int, W: int, src_scale: int) -> _TestCase:
    """The clip of seed `s_clip` worn by the person of seed `s_id`: mannequin inputs, that person's identity inputs
    and the ground truth (the same clip rendered as that person), with face / head masks, at H x W."""
    donor = generate_clip(s_id, n_frames=1, height=H * src_scale, width=W * src_scale)
    gt = generate_clip(s_clip, n_frames=n_frames, height=H * src_scale, width=W * src_scale, identity=donor.identity)
    man, _ = transform_sample(gt.mannequin, gt.clothing_mask, gt.face_mask, gt.pose_images, donor.identity_image,
                              donor.identity_landmarks, H, W)
    hum, _ = transform_sample(gt.human, gt.person_mask, gt.face_mask, gt.pose_images, donor.identity_image,
                              donor.identity_landmarks, H, W)
    person = hum["clothing_masks"].numpy() > 0.5  # (person mask went through the clothing-mask slot)
    head = _head_masks(gt, H / gt.human.shape[1], H, W, person) & ~(man["clothing_masks"].numpy() > 0.5)
    mannequin, _ = transform_sample(gt.mannequin, gt.mannequin_mask, gt.face_mask, gt.pose_images,
                                    donor.identity_image, donor.identity_landmarks, H, W)
    background = ~person & ~(mannequin["clothing_masks"].numpy() > 0.5)  # (mannequin mask in the same slot)
    return _TestCase(mannequin=man["frames"], clothing_masks=man["clothing_masks"], pose_images=man["pose_images"],
                     identity_image=man["identity_image"], identity_landmarks=man["identity_landmarks"],
                     arcface=torch.from_numpy(donor.identity_embedding.copy()), ground_truth=hum["frames"],
                     face_masks=man["face_masks"], head_masks=torch.from_numpy(head),
                     background_masks=torch.from_numpy(background), clip=gt, donor=donor)


def heldout_test_cases(s: DemoSettings, seed: int, H: int, W: int) -> list[_TestCase]:
    """The demo's `s.eval_cases` held-out (mannequin clip, person) pairs (seeds seed + 1000 k); the first is shown."""
    return [_make_test_case(seed + 1000 * k, s.test_frames, H, W, 2) for k in range(s.eval_cases)]


def identity_runs(model: M2HModel, encoders: FrozenEncoders, case: _TestCase, s: DemoSettings, seed: int
                  ) -> tuple[list[_TestCase], list[torch.Tensor]]:
    """The shown clip worn by `s.identity_sheet_people` other held-out people: (their cases, the model's frames)."""
    H, W = case.mannequin.shape[-2:]
    nf = min(s.num_frames, s.test_frames)
    people = _identity_variants(case, s.identity_sheet_people, seed, H, W, nf)
    ss = sampler_settings(s, seed)
    return people, [sample_video(model, encoders, case.video(nf), p.identity(), ss).frames for p in people]


def _region_colours(frames: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Mean RGB (in [0, 1]) of each frame over its mask; NaN where the mask is empty. -> (N, 3)."""
    f = frames.permute(0, 2, 3, 1).numpy().astype(np.float64)
    m = masks.numpy() > 0.5
    out = np.full((len(f), 3), np.nan)
    for i in range(len(f)):
        if m[i].any():
            out[i] = f[i][m[i]].mean(0)
    return out


def identity_metrics(pred: torch.Tensor, case: _TestCase) -> dict[str, float]:
    """Head-region identity stand-ins (ArcFace cannot see a 6-pixel face): colour agreement with the ground truth.

    head_colour_similarity: 1 - mean |ΔRGB| between the mean colours of the prediction and of the ground truth over
    the ground truth's face (skin) and its hair (head minus face), averaged over frames; 1 = identical colours.
    head_psnr: PSNR over the ground truth's head pixels (face + hair).
    """
    face = case.face_masks > 0.5
    hair = (case.head_masks > 0.5) & ~face
    diffs = []
    for m in (face, hair):
        d = np.abs(_region_colours(pred, m) - _region_colours(case.ground_truth, m)).mean(1)
        diffs.append(d)
    d = np.nanmean(np.stack(diffs), 0)
    # the same colours against the mannequin input: a model that copied the mannequin's grey head scores high here
    head = case.head_masks > 0.5
    m_diff = np.abs(_region_colours(pred, head) - _region_colours(case.mannequin, head))
    return {"head_colour_similarity": float(1 - np.nanmean(d)),
            "head_colour_similarity_to_mannequin": float(1 - np.nanmean(m_diff.mean(1))),
            "head_psnr": float(masked_psnr(_nhwc(pred), _nhwc(case.ground_truth), case.head_masks.numpy() > 0.5))}


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)


def _score(pred: torch.Tensor, case: _TestCase) -> dict[str, float]:
    p, g = _nhwc(pred), _nhwc(case.ground_truth)
    out = {"clothing_psnr": float(masked_psnr(p, g, case.clothing_masks.numpy() > 0.5)),
           "clothing_ssim": float(masked_ssim(p, g, case.clothing_masks.numpy() > 0.5)),
           "full_frame_psnr": float(masked_psnr(p, g, None)),
           "background_psnr": float(masked_psnr(p, g, case.background_masks.numpy()))}
    out.update(identity_metrics(pred, case))
    return {k: round(v, 4) for k, v in out.items()}


def _mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over held-out cases (NaN-aware: a case may lack a face region), plus how many cases."""
    out = {k: round(float(np.nanmean([sc[k] for sc in scores])), 4) for k in scores[0]}
    out["cases"] = len(scores)
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
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
        out_rows.append(_label(np.concatenate(cells, 1), name))
    sheet = np.concatenate(out_rows, 0)
    head = _label(np.full((0, sheet.shape[1], 3), 255, np.uint8),
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
        rows.append(_label(np.concatenate(cells[:-1], 1), name))
    head = _label(np.full((0, rows[0].shape[1], 3), 255, np.uint8), "one held-out mannequin clip, held-out people")
    return np.concatenate([head] + rows, 0)


def _identity_variants(case: _TestCase, n: int, seed: int, H: int, W: int, n_frames: int) -> list[_TestCase]:
    """n more held-out people for the same mannequin clip, each as a whole test case (ground truth, masks)."""
    out = []
    for k in range(n):
        s_id = int(np.random.SeedSequence([int(seed), 13, k]).generate_state(1)[0])
        out.append(_build_case(int(case.clip.seed), s_id, n_frames, H, W, 2))
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


def identity_correlations(results: list[torch.Tensor], cases: list[_TestCase]) -> dict[str, float]:
    """Face-skin and hair colour correlation (`colour_correlation`) of the results with their ground truths
    across people: per person the mean colour over all frames of the ground truth's face / hair region."""
    out: dict[str, float] = {"people": len(cases)}
    for name, region in (("face", lambda c: c.face_masks > 0.5),
                         ("hair", lambda c: (c.head_masks > 0.5) & ~(c.face_masks > 0.5))):
        p = np.stack([np.nanmean(_region_colours(r, region(c)), 0) if region(c).any() else np.full(3, np.nan)
                      for r, c in zip(results, cases)])
        t = np.stack([np.nanmean(_region_colours(c.ground_truth[: len(r)], region(c)), 0) if region(c).any()
                      else np.full(3, np.nan) for r, c in zip(results, cases)])
        out[f"{name}_colour_correlation"] = round(colour_correlation(p, t), 4)
    return out


def _readme(settings: DemoSettings, metrics: dict, report_lines: list[str]) -> str:
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
    lines += ["", "Stand-ins at this size (what the paper uses -> what this demo uses):"]
    lines += [f"  - {name}: {what}" for name, what in STAND_INS]
    lines += ["", "Training differences from the paper's SD-1.5 recipe, for a few minutes of CPU: the model predicts x0",
              "relative to the clothing latents (x0 = UNet + f_c, prediction_type=sample, clothing_skip) instead of",
              "epsilon, Adam beta1 = 0.9 and lr %g with a %s decay instead of beta1 = 0 and a constant 5e-5,"
              % (settings.lr, settings.lr_schedule),
              "mirror loss alpha = %g (pixel term only), no half-resolution phase, CFG scale %g at sampling."
              % (settings.mirror_alpha, settings.guidance_scale)]
    lines += ["", "This is a demonstration that every part of the method runs and learns, not a model of people:",
              "64x32 px, minutes of CPU training, synthetic data. For real use, train the sd15 preset (train/).", ""]
    lines += report_lines
    return "\n".join(lines) + "\n"


def sampler_settings(s: DemoSettings, seed: int) -> SamplerSettings:
    return SamplerSettings(steps=s.sample_steps, guidance_scale=s.guidance_scale, scheduler=s.scheduler, seed=seed,
                           context_frames=s.num_frames, context_overlap=s.num_frames // 2)


def demo_model_config(s: DemoSettings):
    """The demo's M2H config: `demo_config()` (the tiny preset with the attention-free VAE) with the settings' knobs."""
    cfg = demo_config()
    cfg.num_frames = s.num_frames
    cfg.prediction_type, cfg.clothing_skip, cfg.clothing_fill = s.prediction_type, s.clothing_skip, s.clothing_fill
    cfg.unet.block_out_channels = tuple(s.unet_channels)
    return cfg


def train_demo_model(s: DemoSettings, cfg, encoders: FrozenEncoders, clips: list[SyntheticClip], seed: int,
                     device: torch.device, say: Callable[[str], None] = print,
                     init: dict[str, torch.Tensor] | None = None) -> tuple[M2HModel, M2HModel, list[dict]]:
    """Train the tiny M2H model from random init (or from the weights `init`, e.g. the shipped pretrained model's) with
    the real trainer (`Trainer`: L_diff + pixel mirror loss, condition dropout, Adam) for `s.train_steps` steps on
    `clips`. -> (trained, the same model before training, logs)."""
    from accelerate import Accelerator

    from ..training.config import TrainConfig
    from ..training.trainer import Trainer

    t0 = time.perf_counter()
    H, W = cfg.height, cfg.width
    torch.manual_seed(seed)
    model = M2HModel(cfg)
    if init is not None:
        model.load_state_dict(init)
    untrained = copy.deepcopy(model).eval()
    tmp = tempfile.TemporaryDirectory(prefix="m2h_demo_train_")
    tc = TrainConfig(preset="tiny", random_init=True, synthetic_clips=len(clips),
                     synthetic_frames=s.clip_frames, num_frames=s.num_frames, frame_stride=s.frame_stride,
                     max_steps=s.train_steps, batch_size=s.batch_size, lr=s.lr, adam_beta1=0.9,
                     warmup_steps=min(s.warmup_steps, max(0, s.train_steps // 4)), lr_schedule=s.lr_schedule,
                     progressive=s.progressive, mirror=s.mirror_alpha > 0, alpha=s.mirror_alpha, beta=0.0,
                     mirror_weighting=s.mirror_weighting, cond_dropout=s.cond_dropout,
                     input_perturbation=s.input_perturbation, output_dir=tmp.name, seed=seed,
                     checkpoint_every=10 ** 9, log_every=10 ** 9)
    train_clips = clips if s.identity_mask == "face" else [_with_head_mask(c) for c in clips]
    if s.garment_edge > 0:
        train_clips = [_with_garment_edge(c, s.garment_edge) for c in train_clips]
    if s.identity_other_outfit:
        train_clips = [_with_other_outfit(c) for c in train_clips]
    dataset = SyntheticClipDataset(train_clips, num_frames=s.num_frames, stride=s.frame_stride, height=H, width=W,
                                   seed=seed)
    trainer = Trainer(tc, model=model, encoders=encoders, vgg=None, dataset=dataset,
                      accelerator=Accelerator(cpu=device.type == "cpu"), log_fn=say)
    say(f"training the tiny M2H model ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters) for "
        f"{s.train_steps} steps, batch {s.batch_size} x {s.num_frames} frames")
    chunk = max(1, s.train_steps // 10)
    while trainer.step < s.train_steps:
        res = trainer.run(stop_after=chunk)
        recent = res.logs[-chunk:]
        say(f"step {trainer.step}/{s.train_steps} loss {np.mean([r.loss for r in recent]):.4f} "
            f"(diff {np.mean([r.l_diff for r in recent]):.4f}, mirror {np.mean([r.l_mir for r in recent]):.4f})"
            f" {time.perf_counter() - t0:.0f}s")
    logs = [asdict(r) for r in trainer.logs]
    model = trainer.accelerator.unwrap_model(trainer.ddp_model).eval()
    tmp.cleanup()
    return model, untrained, logs


# ---------------------------------------------------------------------------------------------------- the demo


def run_demo(out_dir: str | os.PathLike, *, quick: bool = False, seed: int = 0, device: str = "cpu",
             progress: Callable[[str], None] | None = print, n_train_clips: int | None = None,
             vae_steps: int | None = None, train_steps: int | None = None, sample_steps: int | None = None,
             guidance_scale: float | None = None, threads: int | None = None,
             settings: DemoSettings | None = None) -> DemoReport:
    """Train a tiny M2H model on CPU and turn a held-out mannequin clip into a person (see the module docstring).

    quick: a much shorter run (seconds; for tests) - same stages, a few steps each.
    The keyword knobs override `settings` (default `DemoSettings()`, or `DemoSettings.quick()`).
    Returns a `DemoReport`; writes result.mp4 (result.gif if H.264 is unavailable), contact_sheet.png,
    m2h_tiny.safetensors, metrics.json and README.txt to `out_dir`.
    """
    s = copy.deepcopy(settings) if settings is not None else (DemoSettings.quick() if quick else DemoSettings())
    for name, v in (("n_train_clips", n_train_clips), ("vae_steps", vae_steps), ("train_steps", train_steps),
                    ("sample_steps", sample_steps), ("guidance_scale", guidance_scale)):
        if v is not None:
            setattr(s, name, v)
    say = progress or (lambda _m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    with _threads(threads) as n_threads, _quiet_tqdm():
        dev = torch.device(device)
        cfg = demo_model_config(s)
        H, W = cfg.height, cfg.width
        say(f"[demo] {'quick' if quick else 'full'} run, seed {seed}, {n_threads} CPU thread(s), device {dev}, "
            f"load average {load0:.1f} -> {out}")

        # 1. data -------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        say(f"[1/5 data] generating {s.n_train_clips} synthetic human training clips of {s.clip_frames} frames")
        clips = generate_dataset(s.n_train_clips, seed, n_frames=s.clip_frames, height=2 * H, width=2 * W,
                                 fps=s.fps)
        case = _make_test_case(seed, s.test_frames, H, W, 2)
        train_ids = {c.identity for c in clips}
        say(f"[1/5 data] held-out test: {case.clip.motion} clip in a {case.clip.outfit.top.kind}, identity from "
            f"another person ({'unseen' if case.donor.identity not in train_ids else 'SEEN'} in training)")
        stages["data"] = time.perf_counter() - t0

        # 2. VAE ----------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        encoders = FrozenEncoders.random(cfg, seed=seed)
        holdout = torch.cat([case.ground_truth, case.mannequin])
        vres = None
        if s.vae_source == "shipped":
            try:
                vres = load_vae_weights(encoders.vae, s.vae_path or SHIPPED_VAE)
                vres.recon_psnr = masked_psnr(_nhwc(reconstruct(encoders.vae, holdout)), _nhwc(holdout), pooled=True)
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
        stages["vae"] = time.perf_counter() - t0

        # 3. M2H training ------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        model, untrained, train_logs = train_demo_model(s, cfg, encoders, clips, seed, dev,
                                                        say=lambda m: say(f"[3/5 train] {m}"))
        stages["train"] = time.perf_counter() - t0

        # 4. sampling ------------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        encoders.to(dev)
        settings_s = sampler_settings(s, seed)
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
        models["trained"] = (model, encoders)
        models["untrained"] = (untrained.to(dev), encoders)
        cases = [case] + heldout_test_cases(s, seed, H, W)[1:]
        results: dict[str, list[torch.Tensor]] = {}
        for name, (m, enc) in models.items():
            say(f"[4/5 sample] {name} model: {len(cases)} held-out pairs x {s.test_frames} frames, "
                f"{s.sample_steps} {s.scheduler} steps, CFG {s.guidance_scale}")
            results[name] = [sample_video(m, enc, c.video(), c.identity(), settings_s).frames for c in cases]
        best = "pretrained" if "pretrained" in models else "trained"
        id_columns, id_results, id_cases = [], [], []
        if s.identity_sheet_people > 0:  # the same mannequin clip with other held-out people
            id_cases, id_results = identity_runs(*models[best], case, s, seed)
            id_columns = [(_to_uint8(p.identity_image[None])[0], _to_uint8(r), _to_uint8(p.ground_truth))
                          for p, r in zip(id_cases, id_results)]
            say(f"[4/5 sample] the shown clip with {s.identity_sheet_people} more held-out people ({best} model)")
        stages["sample"] = time.perf_counter() - t0

        # 5. outputs --------------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        say("[5/5 write] metrics, video, contact sheet, checkpoint, README")
        per_case = {name: [_score(r, c) for r, c in zip(results[name], cases)] for name in results}
        per_case["vae_ceiling"] = [_score(reconstruct(encoders.vae, c.ground_truth), c) for c in cases]
        metrics = {
            "num_frames": s.test_frames,
            **{name: per_case[name][0] for name in results},  # the shown pair
            "vae_reconstruction_of_ground_truth": per_case["vae_ceiling"][0],
            # pretrained (shipped) / trained here / untrained / the VAE's reconstruction of the ground truth (the
            # ceiling), on the same held-out pairs
            "heldout_mean": {name: _mean_scores(sc) for name, sc in per_case.items()},
            "heldout_cases": per_case,
            # the shown clip worn by `identity_sheet_people` held-out people (identity_sheet.png)
            "identity": ({"model": best, **identity_correlations(id_results, id_cases)} if id_cases else {}),
            "definitions": {
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
            },
            "test_case": {"clip_seed": case.clip.seed, "identity_seed": case.donor.seed, "motion": case.clip.motion,
                          "outfit": case.clip.outfit.top.kind + (f" + {case.clip.outfit.bottom.kind}"
                                                                  if case.clip.outfit.bottom else ""),
                          "identity_in_training_set": case.donor.identity in train_ids},
            "pretrained_model": pre_meta,
            "vae": {"steps": vres.steps, "heldout_recon_psnr": round(vres.recon_psnr, 3),
                    "scaling_factor": vres.scaling_factor},
            "training": {"steps": len(train_logs), "first_loss": train_logs[0]["loss"] if train_logs else None,
                         "last_loss": float(np.mean([r["loss"] for r in train_logs[-10:]])) if train_logs else None},
            "settings": asdict(s),
            "seed": seed,
            "threads": n_threads,
            "load_average_at_start": round(load0, 2),
        }
        frames_res = _to_uint8(results[best][0])
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
        rows = [("mannequin (input)", _to_uint8(case.mannequin)),
                (f"{best} M2H result" + (f" ({pre_meta.get('total_train_steps', '?')} steps)" if best == "pretrained"
                                         else f" ({len(train_logs)} steps)"), frames_res),
                ("ground truth (same identity as human)", _to_uint8(case.ground_truth))]
        if best == "pretrained":
            rows.append((f"trained here ({len(train_logs)} steps)", _to_uint8(results["trained"][0])))
        rows.append(("untrained model", _to_uint8(results["untrained"][0])))
        sheet = contact_sheet(rows, _to_uint8(case.identity_image[None])[0], picks)
        sheet_path = out / "contact_sheet.png"
        cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        id_sheet_path = None
        if id_columns:
            id_sheet_path = out / "identity_sheet.png"
            img = identity_sheet(id_columns, frame=min(s.num_frames, s.test_frames) // 2)
            cv2.imwrite(str(id_sheet_path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        ckpt = out / "m2h_tiny.safetensors"
        save_checkpoint(model, ckpt, encoders=encoders,
                        extra={"demo": "m2h tiny CPU demo", "seed": seed, "train_steps": len(train_logs),
                               "vae_steps": vres.steps})
        stages["write"] = time.perf_counter() - t0
        total = time.perf_counter() - t_start
        metrics["seconds"] = {k: round(v, 1) for k, v in stages.items()} | {"total": round(total, 1)}
        mpath = out / "metrics.json"
        mpath.write_text(json.dumps(metrics, indent=1))
        summary = [f"Wall time {total:.0f} s on {n_threads} thread(s), load average {load0:.1f} at start; stages: "
                   + ", ".join(f"{k} {v:.0f}s" for k, v in stages.items())]
        readme = out / "README.txt"
        readme.write_text(_readme(s, metrics, summary))
        hm = metrics["heldout_mean"]
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
