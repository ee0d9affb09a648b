"""M2HModel: every trainable part of M2HVideo, and the epsilon prediction of paper Algorithm 1, line 15.

    eps = UNet( concat(z_t, f_c) + E_pose(p_h),  A(f_pi, f_clip) )
    f_pi = H( concat(E(x_id) + E_id(p_id), Arc(x_id)), E_pose(p_h) )          (Eq. 2)

Frozen parts (VAE, CLIP image encoder, ArcFace) live outside this module (`m2h_core.inference.encoders`); their outputs
come in through `M2HInputs`. Everything that does not depend on the timestep is computed once by
`encode_conditions` into an `M2HConditioning` (per frame: the UNet's extra input channels and A's tokens; A's
keys/values per context window, kept for later steps within a byte budget); `denoise` is the per-step work.

The tiny demo's model predicts x̂_0 relative to the clothing latents instead (`cfg.clothing_skip`):
    x̂_0 = UNet(...) + f_c   (a skip connection from the pixel-aligned garment to the output; see config.py)

Classifier-free guidance: the unconditional branch drops the identity tokens f_pi and the CLIP clothing tokens
(both set to zero before the key/value projections); the clothing latents f_c and the pose keep conditioning it.
Training drops them together with probability `cond_dropout` so the model learns that branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn

from ..config import M2HConfig
from .adapter import IDENTITY_STRENGTH, SHARED_FIRST, SHARED_HALVES, UNCOND_HALF, AdapterKV, project_all
from .head_encoder import HeadEncoder
from .id_encoder import IdentityEncoder
from .pose_encoder import PoseEncoder
from .unet import MotionWindows, build_unet, run_unet


@dataclass
class M2HInputs:
    """Conditioning inputs for a batch of B clips of F frames (h, w = latent size; H, W = pixel size)."""

    clothing_latents: torch.Tensor  # (B, F, c, h, w)  VAE(v ⊙ M_c), scaled
    pose_images: torch.Tensor  # (B, F, 3, H, W) in [-1, 1]
    identity_latent: torch.Tensor  # (B, c, h, w)  VAE(x_id), scaled
    identity_landmarks: torch.Tensor  # (B, 3, H, W) in [-1, 1]   p_id
    arcface: torch.Tensor  # (B, 512) ArcFace(x_id)
    clip_tokens: torch.Tensor  # (B, F, Tc, cross_attention_dim)  CLIP(v ⊙ M_c)

    def to(self, device=None, dtype=None) -> "M2HInputs":
        return M2HInputs(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def check(self, cfg: M2HConfig, finite: bool = True) -> None:
        """Raise ValueError with an actionable message when the shapes do not fit together.

        finite: also check for NaN/inf (a device sync per tensor: the trainer skips it and catches non-finite
        losses instead)."""
        b, f, c, h, w = self.clothing_latents.shape
        pb, pf, _, ph, pw = self.pose_images.shape
        if (pb, pf) != (b, f):
            raise ValueError(f"pose images are {pb} clips x {pf} frames but clothing latents are {b} x {f}: "
                             "give one pose image per clothing frame")
        if (ph // cfg.vae.downscale, pw // cfg.vae.downscale) != (h, w):
            raise ValueError(f"pose images are {ph}x{pw} px but the clothing latents are {h}x{w} "
                             f"(= {h * cfg.vae.downscale}x{w * cfg.vae.downscale} px): resize them to the frame size")
        if tuple(self.identity_latent.shape) != (b, c, h, w):
            raise ValueError(f"identity latent has shape {tuple(self.identity_latent.shape)}, expected {(b, c, h, w)}"
                             " (encode the identity image at the video's size)")
        if tuple(self.identity_landmarks.shape) != (b, 3, ph, pw):
            raise ValueError(f"identity landmark image has shape {tuple(self.identity_landmarks.shape)}, expected "
                             f"{(b, 3, ph, pw)} (draw p_id at the video's size)")
        if self.arcface.shape != (b, cfg.head.arcface_dim):
            raise ValueError(f"ArcFace embedding has shape {tuple(self.arcface.shape)}, expected "
                             f"({b}, {cfg.head.arcface_dim})")
        if self.clip_tokens.shape[:2] != (b, f) or self.clip_tokens.shape[-1] != cfg.unet.cross_attention_dim:
            raise ValueError(f"CLIP tokens have shape {tuple(self.clip_tokens.shape)}, expected ({b}, {f}, T, "
                             f"{cfg.unet.cross_attention_dim}) — is the CLIP image encoder the one this model uses?")
        for fl in fields(self) if finite else ():
            if not torch.isfinite(getattr(self, fl.name)).all():
                raise ValueError(f"{fl.name} contains NaN or inf")


@dataclass
class M2HConditioning:
    """Timestep-independent conditioning of a whole video; `window` gives the UNet inputs of some frames.

    Holds per frame only the small things (the UNet's extra input channels and A's tokens, see `nbytes`);
    A's keys/values are made per window by `kv` (adapter.AdapterKV). For classifier-free guidance the batch is
    2B: `unet_input`'s unconditional half is a view of the conditional one (B = 1: no copy) and A's zero tokens
    are appended per window.
    """

    unet_input: torch.Tensor  # (B, F, 2c, h, w): [0, f_c] + E_pose(p_h); z_t is written into the first c channels
    kv: AdapterKV
    latent_channels: int
    identity_strength: float = 1.0  # sampling knob: scale of A's identity branch after Eq. 3 (paper: 1)
    skip: torch.Tensor | None = None  # (B', F, c, h, w) f_c, added to the UNet's output (cfg.clothing_skip)
    _branches: tuple | None = field(default=None, repr=False)  # `branches()`, made on first use

    @property
    def num_frames(self) -> int:
        return self.unet_input.shape[1]

    def window(self, index: torch.Tensor | slice | None) -> tuple[torch.Tensor, dict]:
        base = self.unet_input if index is None else self.unet_input[:, index]
        kv = self.kv.frames(index)
        if self.identity_strength != 1.0:
            kv = {**kv, IDENTITY_STRENGTH: float(self.identity_strength)}
        return base, kv

    def branches(self) -> tuple["M2HConditioning", "M2HConditioning"]:
        """(conditional, unconditional) halves of a classifier-free batch, each its own conditioning (made once and
        kept, so each half's key/value window cache lives across steps): for the sampler's separate CFG passes,
        which hold half the activations of one batched call. See `AdapterKV.branch`."""
        if self._branches is None:
            b = self.unet_input.shape[0] // 2
            self._branches = tuple(replace(self, unet_input=self.unet_input[part], kv=self.kv.branch(uncond),
                                           skip=None if self.skip is None else self.skip[part], _branches=None)
                                   for uncond, part in ((False, slice(0, b)), (True, slice(b, None))))
        return self._branches

    def skip_window(self, index: torch.Tensor | slice | None) -> torch.Tensor | None:
        return None if self.skip is None or index is None else self.skip[:, index]

    def nbytes(self) -> int:
        """Bytes held for the whole video (the per-window key/value cache, bounded by its budget, excluded)."""
        stored = sum(x.untyped_storage().nbytes() for x in {id(x): x for x in (self.unet_input, self.skip)
                                                             if x is not None and x.numel()}.values())
        return stored + self.kv.nbytes()


class M2HModel(nn.Module):
    def __init__(self, cfg: M2HConfig, unet: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        c = cfg.unet.latent_channels
        self.pose_encoder = PoseEncoder(cfg.head.pose_channels, 2 * c)
        self.id_encoder = IdentityEncoder(cfg.head.id_channels, c)
        self.head_encoder = HeadEncoder(cfg.head, c, cfg.head.pose_channels[-1], cfg.unet.cross_attention_dim,
                                        fuse=cfg.use_head_encoder)
        self.unet = unet if unet is not None else build_unet(cfg)
        if cfg.clothing_skip and unet is None:  # x̂_0 = f_c + UNet(...): start from "copy the given garment"
            nn.init.zeros_(self.unet.conv_out.weight)
            nn.init.zeros_(self.unet.conv_out.bias)
        self.pose_chunk = 16  # frames per E_pose (and, sampling, H) call: pose features dominate on long videos
        # A's keys/values when sampling: projected per context window, and kept for the next steps up to this many
        # bytes (so a short video is projected once); None: the whole video projected up front (O(video) memory).
        self.kv_cache_bytes: int | None = 256 << 20

    # -- once per video -------------------------------------------------------------------------------------
    def encode_conditions(self, inputs: M2HInputs, drop: torch.Tensor | None = None,
                          classifier_free: bool = False, precompute_kv: bool = True, pose_strength: float = 1.0,
                          identity_strength: float = 1.0) -> M2HConditioning:
        """Pose encoding, E_id, H (Eq. 2) and the adapter's keys/values.

        drop: (B,) bool — clips whose identity and CLIP tokens are dropped (training's condition dropout).
        classifier_free: return a 2B batch [conditional; unconditional] so both CFG branches run as one batch.
        precompute_kv: project A's keys/values outside the UNet (sampling): per context window, kept up to
        `self.kv_cache_bytes` for later steps (None: the whole video, once); False: each adapter layer projects the
        tokens in its own forward (training: used once anyway, and FSDP-wrapped blocks only have whole weights then).
        pose_strength / identity_strength (sampling knobs, paper = 1): scale E_pose's residual added to the UNet
        input, and A's identity branch z_pi after its re-normalisation (Eq. 3).
        """
        inputs.check(self.cfg, finite=not torch.is_grad_enabled())
        b, f = inputs.clothing_latents.shape[:2]
        id_latent = inputs.identity_latent + self.id_encoder(inputs.identity_landmarks)
        # E_pose and H in chunks of frames: the full-resolution pose features of a long video never exist at once.
        # Training calls H once on the whole clip (one forward per step for FSDP-wrapped modules).
        chunk = self.pose_chunk if not torch.is_grad_enabled() else f
        f_pi, pose_residual = [], []
        for s in range(0, f, chunk):
            poses = inputs.pose_images[:, s: s + chunk]
            n = poses.shape[1]
            flat = poses.flatten(0, 1)
            parts = [self.pose_encoder(flat[i: i + self.pose_chunk]) for i in range(0, flat.shape[0], self.pose_chunk)]
            pose_feats = torch.cat([p[0] for p in parts]).unflatten(0, (b, n))
            pose_residual.append(torch.cat([p[1] for p in parts]).unflatten(0, (b, n)))
            f_pi.append(self.head_encoder(id_latent, inputs.arcface, pose_feats))
            del pose_feats, parts
        f_pi = torch.cat(f_pi, dim=1)
        pose_residual = torch.cat(pose_residual, dim=1)
        clip = inputs.clip_tokens.to(f_pi.dtype)
        if drop is not None:
            keep = (~drop).to(f_pi.dtype).view(b, 1, 1, 1)
            f_pi, clip = f_pi * keep, clip * keep
        unet_input = torch.cat([torch.zeros_like(inputs.clothing_latents), inputs.clothing_latents], dim=2)
        unet_input = unet_input + (pose_residual if pose_strength == 1.0 else pose_residual * pose_strength)
        skip = inputs.clothing_latents if self.cfg.clothing_skip else None
        if classifier_free:  # [conditional; unconditional]: the same UNet input (a view when B = 1)
            unet_input = unet_input.unsqueeze(0).expand(2, *unet_input.shape).reshape(2 * b, *unet_input.shape[1:])
            if skip is not None:
                skip = skip.unsqueeze(0).expand(2, *skip.shape).reshape(2 * b, *skip.shape[1:])
        if precompute_kv and self.kv_cache_bytes is None:
            kv = project_all(self.unet, clip, f_pi, uncond=classifier_free)
        else:
            kv = project_all(self.unet, clip, f_pi, lazy=not precompute_kv, per_window=precompute_kv,
                             uncond=classifier_free, cache_bytes=self.kv_cache_bytes or 0)
        return M2HConditioning(unet_input, kv, self.cfg.unet.latent_channels, float(identity_strength), skip)

    # -- once per step ---------------------------------------------------------------------------------------
    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: M2HConditioning,
                frames: torch.Tensor | slice | None = None,
                motion_windows: MotionWindows | None = None, shared_first: dict | None = None) -> torch.Tensor:
        """z_t (B', Fw, c, h, w) for the frames `frames` of the conditioned video -> the prediction (ε, v or x̂_0 as
        `cfg.prediction_type` says), same shape; with `cfg.clothing_skip` x̂_0 = UNet(...) + f_c.

        B' is the conditioning's batch (2B for classifier-free batches: pass z_t already repeated).
        motion_windows: the Fw frames are a chunk of several context windows (spatial layers once per frame, motion
        modules per window, see `unet.windowed_motion`); None: they are one window.
        shared_first: the same dict for the two calls of a CFG pair run separately, with the same z_t, t and frames
        (sampling): the second reuses the first's first spatial self-attention (adapter.SHARED_FIRST).
        """
        base, kv = cond.window(frames)
        if z_t.shape[0] != base.shape[0] or z_t.shape[1] != base.shape[1]:
            raise ValueError(f"z_t has {tuple(z_t.shape[:2])} clips x frames but the conditioning window has "
                             f"{tuple(base.shape[:2])}")
        c = cond.latent_channels
        if cond.kv.uncond and not torch.is_grad_enabled():
            # a classifier-free pair: the second half's tokens are zero (adapter.UNCOND_HALF); the halves share f_c
            # and the pose by construction, so if z_t is repeated too the UNet's layers before the first
            # cross-attention compute the same for both (adapter.SHARED_HALVES)
            half = z_t.shape[0] // 2
            kv = {**kv, UNCOND_HALF: True, **({SHARED_HALVES: True} if torch.equal(z_t[:half], z_t[half:]) else {})}
        if shared_first is not None and not torch.is_grad_enabled():
            kv = {**kv, SHARED_FIRST: shared_first}
        sample = torch.cat([base[:, :, :c] + z_t.to(base.dtype), base[:, :, c:]], dim=2)
        t = torch.as_tensor(t, device=z_t.device)
        if t.ndim == 0:
            t = t.expand(z_t.shape[0])
        out = run_unet(self.unet, sample, t, kv, motion_windows)
        if cond.skip is not None:
            out = out + (cond.skip if frames is None else cond.skip_window(frames)).to(out.dtype)
        return out

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, inputs: M2HInputs,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction (`denoise`) for a batch of clips (training)."""
        return self.denoise(z_t, t, self.encode_conditions(inputs, drop=drop, precompute_kv=False))

    # -- parameter groups ------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items()}
