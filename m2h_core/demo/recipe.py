"""The demo's one recipe: `DemoSettings` (data, VAE, model, training, sampling) and how it trains the tiny model.

`DemoSettings.model_config()` is the demo's M2H config (the `tiny` preset, the demo's VAE, the recipe's knobs),
`DemoSettings.sampler_settings()` its sampling; `train_demo_model` runs the real `Trainer` on synthetic clips
with the recipe's training settings. `run_demo` and `pretrained.pretrain` both start from a `DemoSettings`.
Why each default is what it is: docs/demo.md.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from ..config import M2HConfig, tiny
from ..inference.encoders import FrozenEncoders
from ..inference.sampler import SamplerSettings
from ..models.m2h import M2HModel
from ..training.config import TrainConfig
from ..training.dataset import SyntheticClipDataset
from ..training.trainer import Trainer
from .synthetic import SyntheticClip, generate_clip


@dataclass
class DemoSettings:
    """Every knob of the demo: data, the tiny VAE, the model, its training and sampling (`run_demo`, `pretrain`)."""

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
    train_steps: int = 300  # the model trained here ("training works"); the shipped one: 8000 at twice the widths
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
        """A run of seconds with the same stages (tests, `m2h demo --quick`)."""
        return cls(n_train_clips=3, clip_frames=12, test_frames=8, vae_source="train", vae_steps=12, vae_batch=8,
                   train_steps=12, batch_size=1, sample_steps=3, sheet_frames=4, eval_cases=1,
                   identity_sheet_people=3)

    def model_config(self) -> M2HConfig:
        """The demo's M2H config: the `tiny` preset, its VAE without mid-block self-attention (at 16x8 latents it
        is global, so a garment's latents would depend on the whole frame: `VAEConfig.mid_block_add_attention`) and
        with 8 latent channels instead of SD's 4 (a garment's 1-2 px stripes survive them, docs/demo.md), and this
        recipe's model knobs."""
        cfg = tiny()
        cfg.vae.mid_block_add_attention = False
        cfg.vae.latent_channels = cfg.unet.latent_channels = 8
        cfg.num_frames = self.num_frames
        cfg.prediction_type, cfg.clothing_skip, cfg.clothing_fill = (self.prediction_type, self.clothing_skip,
                                                                     self.clothing_fill)
        cfg.unet.block_out_channels = tuple(self.unet_channels)
        return cfg

    def sampler_settings(self, seed: int) -> SamplerSettings:
        return SamplerSettings(steps=self.sample_steps, guidance_scale=self.guidance_scale, scheduler=self.scheduler,
                               seed=seed, context_frames=self.num_frames, context_overlap=self.num_frames // 2)



@contextmanager
def quiet_tqdm():
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


def head_masks(clip: SyntheticClip, scale_y: float, height: int, width: int, person: np.ndarray) -> np.ndarray:
    """Person pixels above each frame's neck keypoint (the head with its hair), at the output size."""
    out = np.zeros((len(person), height, width), bool)
    ys = np.arange(height)[:, None]
    for i, p in enumerate(clip.poses):
        neck_y = float(p.body[1, 1]) * scale_y
        out[i] = person[i] & (ys < neck_y)
    return out


def with_head_mask(clip: SyntheticClip) -> SyntheticClip:
    """The clip with its face mask (the mirror loss's M_id) widened to the whole head: face skin + hair."""
    head = head_masks(clip, 1.0, clip.human.shape[1], clip.human.shape[2], clip.person_mask) & ~clip.clothing_mask
    return dataclasses.replace(clip, face_mask=head | clip.face_mask)


def with_garment_edge(clip: SyntheticClip, k: int) -> SyntheticClip:
    """The clip with its mirror-loss mask widened by the garment's boundary band: pixels within `k` of the clothing
    mask's edge, inside or out. The latent L2 loss weighs a 4x4-pixel cell the same wherever it is; decoded, the
    garment's edge (a sleeve or its absence over a bare arm, a hem's flare) is where a small latent error costs the
    most pixels, so the pixel loss is put there too."""
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    m = clip.clothing_mask.astype(np.uint8)
    band = np.stack([cv2.morphologyEx(x, cv2.MORPH_GRADIENT, kernel) > 0 for x in m])  # dilation minus erosion
    return dataclasses.replace(clip, face_mask=clip.face_mask | band)


def with_other_outfit(clip: SyntheticClip) -> SyntheticClip:
    """The clip with its identity image x_id (and p_id) re-rendered: the same person in another outfit and scene.

    The generator's identity image wears the clip's own outfit, so a model trained on it can read the clothing off
    x_id; at test time x_id is another person's photo in other clothes. With x_id in other clothes in training too,
    only the head (skin, hair, face) in x_id is informative, which is what H and A are meant to carry."""
    other_seed = int(np.random.SeedSequence([int(clip.seed), 11]).generate_state(1)[0])
    h, w = clip.human.shape[1:3]
    donor = generate_clip(other_seed, n_frames=1, height=h, width=w, identity=clip.identity)
    return dataclasses.replace(clip, identity_image=donor.identity_image, identity_landmarks=donor.identity_landmarks)


def train_demo_model(s: DemoSettings, cfg, encoders: FrozenEncoders, clips: list[SyntheticClip], seed: int,
                     device: torch.device, say: Callable[[str], None] = print,
                     init: dict[str, torch.Tensor] | None = None) -> tuple[M2HModel, M2HModel, list[dict]]:
    """Train the tiny M2H model from random init (or from the weights `init`, e.g. the shipped pretrained model's) with
    the real trainer (`Trainer`: L_diff + pixel mirror loss, condition dropout, Adam) for `s.train_steps` steps on
    `clips`. -> (trained, the same model before training, logs)."""
    from accelerate import Accelerator


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
    train_clips = clips if s.identity_mask == "face" else [with_head_mask(c) for c in clips]
    if s.garment_edge > 0:
        train_clips = [with_garment_edge(c, s.garment_edge) for c in train_clips]
    if s.identity_other_outfit:
        train_clips = [with_other_outfit(c) for c in train_clips]
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
