"""Model configuration: one dataclass tree, two presets (`sd15` = our SD-1.5 backbone at the paper's
sizes, `tiny` = tests and CPU demo).

The config is stored as JSON in every M2H checkpoint's metadata, so a checkpoint always rebuilds the exact
architecture it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class UNetConfig:
    """Keys of diffusers' `UNet2DConditionModel` config (SD-1.5 defaults) plus the motion-module size."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    sample_size: int = 64
    latent_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    # AnimateDiff motion modules (diffusers MotionAdapter); mm_sd_v15_v2 layout by default.
    motion_num_attention_heads: int = 8
    motion_max_seq_length: int = 32
    motion_mid_block: bool = True

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `UNet2DConditionModel(**kwargs)`; in_channels = z_t + VAE(clothing) channels."""
        return dict(
            sample_size=self.sample_size,
            in_channels=2 * self.latent_channels,
            out_channels=self.latent_channels,
            down_block_types=tuple(self.down_block_types),
            up_block_types=tuple(self.up_block_types),
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            attention_head_dim=self.attention_head_dim,
            cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.norm_num_groups,
        )

    def motion_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for diffusers' `MotionAdapter(**kwargs)`."""
        return dict(
            block_out_channels=tuple(self.block_out_channels),
            motion_layers_per_block=self.layers_per_block,  # AnimateDiff: one motion module per resnet
            motion_mid_block_layers_per_block=1,
            motion_num_attention_heads=self.motion_num_attention_heads,
            motion_norm_num_groups=self.norm_num_groups,
            motion_max_seq_length=self.motion_max_seq_length,
            use_motion_mid_block=self.motion_mid_block,
        )


@dataclass
class VAEConfig:
    """Keys of diffusers' `AutoencoderKL` config (SD-1.5 defaults)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    # self-attention in the encoder's and decoder's mid block (SD-1.5: yes). At the tiny preset's 16x8 latents it is
    # global: every latent then depends on the whole frame, so VAE(v ⊙ M_c) differs from the scene's latents inside
    # the garment and the decoded garment depends on the head and background latents (issue 12): the CPU demo's VAE
    # (`m2h_core.demo.recipe.DemoSettings.model_config`) has none. The presets keep SD-1.5's layout.
    mid_block_add_attention: bool = True

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def vae_kwargs(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            scaling_factor=self.scaling_factor,
            mid_block_add_attention=self.mid_block_add_attention,
        )


@dataclass
class CLIPVisionConfig:
    """Keys of transformers' `CLIPVisionConfig` (ViT-L/14 defaults); `projection_dim` must equal cross_attention_dim."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768


@dataclass
class HeadEncoderConfig:
    """Sizes of E_pose, E_id and the dynamic pose-aware head encoder H (paper Eq. 2)."""

    pose_channels: tuple[int, ...] = (16, 32, 64, 128)  # E_pose conv widths; len-1 stride-2 stages = VAE downscale
    id_channels: tuple[int, ...] = (16, 32, 64, 128)  # E_id conv widths, same geometry
    dim: int = 768  # width of H's tokens
    num_layers: int = 4  # the paper's four cross-attention + FFN layers
    num_heads: int = 8
    token_patch: int = 4  # latent pixels per token side for the identity and pose token grids
    arcface_dim: int = 512
    arcface_tokens: int = 4  # ArcFace vector -> this many query tokens (IP-Adapter-FaceID style)
    ff_mult: int = 4


@dataclass
class AdapterConfig:
    """Switches of the distribution-aware head-clothing adapter A (paper Eq. 3, Table III ablations)."""

    enabled: bool = True  # False: no identity branch in the UNet at all ("w/o A")
    normalize: bool = True  # False: plain addition z_clip + z_pi instead of Eq. 3's re-normalisation
    eps: float = 1e-6


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


CLOTHING_FILLS = ("black", "backdrop")


@dataclass
class M2HConfig:
    """The whole M2HVideo architecture."""

    name: str = "sd15"
    base_model: str = "sd15"  # which base the UNet / VAE belong to; checked when loading checkpoints
    height: int = 512
    width: int = 256
    num_frames: int = 8
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    head: HeadEncoderConfig = field(default_factory=HeadEncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    use_head_encoder: bool = True  # False: "w/o H" — identity tokens + pose tokens added, no attention
    use_motion: bool = True
    # what the UNet predicts: "epsilon" (SD-1.5; the paper's Eq. 4), "v_prediction" or "sample" (x0)
    prediction_type: str = "epsilon"
    # True: the prediction is written relative to the clothing latents, x̂_0 = UNet(...) + f_c (prediction_type
    # "sample" only): copying the pixel-aligned garment it is given is the zero function, and the UNet learns what
    # differs (head, skin, background). For models trained from random init (the tiny demo); the paper's
    # pretrained SD-1.5 UNet keeps epsilon and no skip.
    clothing_skip: bool = False
    # what of x_id the model sees: "head" = x_id ⊙ M_head (`identity.head_only`), "full" = the whole image. The
    # field's default is "full" so checkpoints written before it existed load as they were trained; the presets
    # say "head".
    identity_input: str = "full"
    # what the clothing frame holds outside M_c: "black" = v ⊙ M_c (the paper; its studio backdrop is always white,
    # so the model can learn it), "backdrop" = v ⊙ M_c + b ⊙ (1 - M_c) with b the frame's backdrop colour
    # (`clothing_frame`): the model is told the shop's backdrop instead of guessing it (issue 12). Beyond the paper;
    # the default is "black" so checkpoints written before it existed load as they were trained.
    clothing_fill: str = "black"

    def __post_init__(self):
        if self.clothing_fill not in CLOTHING_FILLS:
            raise ValueError(f"clothing_fill must be one of {CLOTHING_FILLS}, got {self.clothing_fill!r}")
        if self.identity_input not in ("head", "full"):
            raise ValueError(f"identity_input must be 'head' or 'full', got {self.identity_input!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.clothing_skip and self.prediction_type != "sample":
            raise ValueError("clothing_skip writes x̂_0 relative to the clothing latents: it needs "
                             f"prediction_type='sample', got {self.prediction_type!r}")

    @property
    def latent_size(self) -> tuple[int, int]:
        d = self.vae.downscale
        return self.height // d, self.width // d

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "M2HConfig":
        sub = {"unet": UNetConfig, "vae": VAEConfig, "clip": CLIPVisionConfig, "head": HeadEncoderConfig,
               "adapter": AdapterConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown M2H config keys {sorted(unknown)} (written by a newer version?)")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in sub:
                fields = {f.name: f for f in dataclasses.fields(sub[k])}
                unknown = set(v) - set(fields)
                if unknown:  # silently dropping them could rebuild another architecture than was saved
                    raise ValueError(f"unknown M2H config keys {sorted(f'{k}.{kk}' for kk in unknown)} "
                                     "(written by a newer version?)")
                kw[k] = sub[k](**{kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()})
            else:
                kw[k] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> "M2HConfig":
        return cls.from_dict(json.loads(s))


def sd15() -> M2HConfig:
    """Our backbone for the paper's method (the paper names none): SD-1.5 UNet + AnimateDiff v2 motion modules,
    SD-1.5 VAE, CLIP ViT-L/14, at the paper's 512x256."""
    return M2HConfig(identity_input="head")


def tiny() -> M2HConfig:
    """Same architecture at a few hundred thousand trainable parameters (tests and the CPU demo).

    64x32 pixels, a 2-level VAE (4x down), so latents are 16x8.
    """
    return M2HConfig(
        name="tiny",
        base_model="tiny",
        identity_input="head",
        height=64,
        width=32,
        num_frames=8,
        unet=UNetConfig(
            block_out_channels=(16, 32),
            layers_per_block=1,
            attention_head_dim=8,
            cross_attention_dim=32,
            norm_num_groups=8,
            sample_size=16,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            motion_num_attention_heads=2,
            motion_max_seq_length=32,
            motion_mid_block=False,
        ),
        vae=VAEConfig(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, scaling_factor=1.0),
        clip=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32),
        head=HeadEncoderConfig(pose_channels=(8, 16, 32), id_channels=(8, 16, 32), dim=32, num_layers=4,
                               num_heads=2, token_patch=2, arcface_dim=512, arcface_tokens=2, ff_mult=2),
    )


PRESETS = {"sd15": sd15, "tiny": tiny}


def preset(name: str) -> M2HConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
