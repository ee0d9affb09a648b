"""Key tables of the public SD-1.5 files: every real key name at its real shape, as meta tensors (no memory).

The real files cannot be downloaded here, so their layouts are derived by code and tested against the loaders:
the diffusers / transformers model of each family is built on the meta device and its names are converted back
to the file's own layout (LDM names for SD-1.5 and ControlNet 1.1, AnimateDiff's original names); IP-Adapter and
its LoRA follow their documented grammar over SD-1.5's attention layers (`public_weights.attention_layers`).
The same functions at tiny widths (a `cfg` / `unet` argument) write the test files, so a test file and a real
file share one grammar. `m2h doctor` compares real headers with these tables (`compare`).

`PUBLISHED` lists the published file sizes; `file_bytes` adds up a table at the file's dtype.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import M2HConfig, sd15

# -- diffusers -> original names --------------------------------------------------------------------------------

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _resnet(tail: str) -> str:
    head, _, rest = tail.partition(".")
    if head in _RESNET_TO_LDM:
        return f"{_RESNET_TO_LDM[head]}.{rest}"
    raise KeyError(f"unknown resnet parameter {tail}")


def unet_to_ldm(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel / ControlNetModel names -> LDM names (`input_blocks.1.1...`, no prefix):
    the inverse of diffusers' `convert_ldm_unet_checkpoint` / `convert_controlnet_checkpoint`."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    lpb = config["layers_per_block"]
    up_types = config.get("up_block_types", ())
    direct = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"]}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in direct:
            out[direct[k]] = v
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            out[f"input_blocks.{1 + int(m[1]) * (lpb + 1) + int(m[2])}.0.{_resnet(m[3])}"] = v
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k):
            out[f"input_blocks.{1 + int(m[1]) * (lpb + 1) + int(m[2])}.1.{m[3]}"] = v
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
            out[f"input_blocks.{1 + int(m[1]) * (lpb + 1) + lpb}.0.op.{m[2]}"] = v
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k):
            out[f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"] = v
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k):
            out[f"middle_block.1.{m[1]}"] = v
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            out[f"output_blocks.{int(m[1]) * (lpb + 1) + int(m[2])}.0.{_resnet(m[3])}"] = v
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k):
            out[f"output_blocks.{int(m[1]) * (lpb + 1) + int(m[2])}.1.{m[3]}"] = v
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", k):
            b = int(m[1])
            out[f"output_blocks.{b * (lpb + 1) + lpb}.{2 if 'CrossAttn' in up_types[b] else 1}.conv.{m[2]}"] = v
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", k):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = v
        elif m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", k):
            out[f"middle_block_out.0.{m[1]}"] = v
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)", k):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = v  # conv_in / conv_out: 0 / 14, direct
        else:
            raise KeyError(f"no LDM name for key {k}")
    return out


_MOTION_TO_ORIGINAL = {"attn1": "attention_blocks.0", "attn2": "attention_blocks.1", "norm1": "norms.0",
                       "norm2": "norms.1", "norm3": "ff_norm"}


def motion_to_original(sd: dict[str, torch.Tensor], pe_length: int | None = None) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter names -> AnimateDiff's (`...motion_modules.0.temporal_transformer.transformer_blocks
    .0.attention_blocks.0.to_q.weight`, `norms.0`, `ff_norm`), with each attention block's `pos_encoder.pe` table
    (1, pe_length, C) (the adapter's `pos_embed.pe`, cut or kept; inverse of `convert_animatediff_checkpoint_to_
    diffusers`, which drops them)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.fullmatch(r"(.+\.motion_modules\.\d+)\.(.+)", k)
        if m is None:
            raise KeyError(f"not a motion-module key: {k}")
        prefix, rest = m[1] + ".temporal_transformer", m[2]
        b = re.fullmatch(r"(transformer_blocks\.\d+)\.([^.]+)\.(.+)", rest)
        if b is not None and b[2] == "pos_embed":
            pe = v[:, :pe_length] if pe_length is not None else v
            for i in (0, 1):
                out[f"{prefix}.{b[1]}.attention_blocks.{i}.pos_encoder.{b[3]}"] = pe.clone()
            continue
        if b is not None and b[2] in _MOTION_TO_ORIGINAL:
            rest = f"{b[1]}.{_MOTION_TO_ORIGINAL[b[2]]}.{b[3]}"
        out[f"{prefix}.{rest}"] = v
    return out


def kohya_name(module: str) -> str:
    """diffusers module name -> kohya LoRA layer name (`lora_unet_down_blocks_0_..._attn2_to_k`)."""
    return "lora_unet_" + module.replace(".", "_")


def nest(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A flattened IP-Adapter dict as the `.bin` holds it: {"image_proj": {...}, "ip_adapter": {...}}."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        top, rest = k.split(".", 1)
        out.setdefault(top, {})[rest] = v
    return out


# -- tables ---------------------------------------------------------------------------------------------------


def _meta_state(module_fn, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        module = module_fn()
    sd = module.state_dict()
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in sd.items()}


def checkpoint_unet_table(in_channels: int = 4, cfg: M2HConfig | None = None, dtype: torch.dtype | None = None
                          ) -> dict[str, torch.Tensor]:
    """The UNet part of an SD-1.5 single file (`model.diffusion_model.*`), 4-channel or 9-channel (inpainting)."""
    from diffusers import UNet2DConditionModel

    kw = (cfg or sd15()).unet.unet_kwargs()
    kw["in_channels"] = in_channels
    sd = _meta_state(lambda: UNet2DConditionModel(**kw), dtype)
    return {"model.diffusion_model." + k: v for k, v in unet_to_ldm(sd, kw).items()}


def motion_table(version: str = "v2", cfg: M2HConfig | None = None, dtype: torch.dtype | None = None
                 ) -> dict[str, torch.Tensor]:
    """An AnimateDiff motion module in its original layout: v2 (mid block, 32 positions), v3 (no mid block,
    32 positions) or v1 (no mid block, 24 positions)."""
    from diffusers import MotionAdapter

    kw = (cfg or sd15()).unet.motion_kwargs()
    kw["use_motion_mid_block"] = version == "v2"
    kw["motion_max_seq_length"] = 24 if version == "v1" else 32
    return motion_to_original(_meta_state(lambda: MotionAdapter(**kw), dtype))


def controlnet_table(layout: str = "ldm", cfg: M2HConfig | None = None, dtype: torch.dtype | None = None,
                     hint_channels: Sequence[int] = (16, 32, 96, 256)) -> dict[str, torch.Tensor]:
    """ControlNet 1.1 for SD-1.5: layout "ldm" (`control_model.` prefix), "ldm_bare" or "diffusers"."""
    from diffusers import ControlNetModel

    from .public_weights import controlnet_config

    config = controlnet_config(cfg, tuple(hint_channels))
    sd = _meta_state(lambda: ControlNetModel(**config), dtype)
    if layout == "diffusers":
        return sd
    ldm = unet_to_ldm(sd, config)
    return {("control_model." if layout == "ldm" else "") + k: v for k, v in ldm.items()}


def clip_vision_table(variant: str = "ViT-H/14", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A CLIP image encoder in the transformers layout: ViT-H/14 (OpenCLIP laion2B, as IP-Adapter's
    image_encoder) or ViT-L/14 (OpenAI)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    conf = {"ViT-H/14": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                         "num_attention_heads": 16, "projection_dim": 1024, "hidden_act": "gelu"},
            "ViT-L/14": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                         "num_attention_heads": 16, "projection_dim": 768, "hidden_act": "quick_gelu"}}[variant]
    config = CLIPVisionConfig(image_size=224, patch_size=14, **conf)
    sd = _meta_state(lambda: CLIPVisionModelWithProjection(config), dtype)
    sd.pop("vision_model.embeddings.position_ids", None)
    return sd


def _m(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _perceiver(prefix: str, dim: int, embedding_dim: int, depth: int, dtype: torch.dtype, heads: int = 12,
               dim_head: int = 64, ff_mult: int = 4, latents: int | None = None) -> dict[str, torch.Tensor]:
    """IP-Adapter's Resampler (Plus) / FacePerceiverResampler (FaceID-Plus) keys."""
    inner = heads * dim_head
    out = {f"{prefix}proj_in.weight": _m(dim, embedding_dim, dtype=dtype), f"{prefix}proj_in.bias": _m(dim, dtype=dtype),
           f"{prefix}proj_out.weight": _m(dim, dim, dtype=dtype), f"{prefix}proj_out.bias": _m(dim, dtype=dtype),
           f"{prefix}norm_out.weight": _m(dim, dtype=dtype), f"{prefix}norm_out.bias": _m(dim, dtype=dtype)}
    if latents is not None:
        out[f"{prefix}latents"] = _m(1, latents, dim, dtype=dtype)
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        for n in ("0.norm1", "0.norm2", "1.0"):
            out[f"{p}{n}.weight"], out[f"{p}{n}.bias"] = _m(dim, dtype=dtype), _m(dim, dtype=dtype)
        out[f"{p}0.to_q.weight"] = _m(inner, dim, dtype=dtype)
        out[f"{p}0.to_kv.weight"] = _m(2 * inner, dim, dtype=dtype)
        out[f"{p}0.to_out.weight"] = _m(dim, inner, dtype=dtype)
        out[f"{p}1.1.weight"] = _m(dim * ff_mult, dim, dtype=dtype)
        out[f"{p}1.3.weight"] = _m(dim, dim * ff_mult, dtype=dtype)
    return out


@dataclass(frozen=True)
class IPSizes:
    """The widths an IP-Adapter's image projection is built with (the published SD-1.5 ones by default)."""

    id_dim: int = 512  # ArcFace
    clip_hidden: int = 1280  # ViT-H/14 penultimate tokens
    clip_proj: int = 1024  # ViT-H/14 image_embeds
    faceid_tokens: int = 4
    plus_tokens: int = 16
    depth: int = 4
    heads: int = 12
    dim_head: int = 64
    rank: int = 128


def ip_adapter_table(variant: str = "faceid_plusv2", unet: torch.nn.Module | None = None,
                     dtype: torch.dtype = torch.float16, sizes: IPSizes = IPSizes(),
                     with_lora: bool | None = None) -> dict[str, torch.Tensor]:
    """An IP-Adapter's flattened keys (`image_proj.*`, `ip_adapter.{i}.*`; `nest` gives the `.bin` form) over
    `unet`'s attention layers (None: SD-1.5's). FaceID variants carry their LoRA (`{i}.to_q_lora.down.weight`
    ...) on all layers unless with_lora=False."""
    from .public_weights import FACEID_VARIANTS, attention_layers

    layers = attention_layers(unet)
    dim = layers[1][2]  # the cross-attention context width = the token width
    proj: dict[str, torch.Tensor] = {}
    if variant in FACEID_VARIANTS:
        hid = 2 * sizes.id_dim
        tokens = sizes.faceid_tokens
        proj.update({"proj.0.weight": _m(hid, sizes.id_dim, dtype=dtype), "proj.0.bias": _m(hid, dtype=dtype),
                     "proj.2.weight": _m(dim * tokens, hid, dtype=dtype), "proj.2.bias": _m(dim * tokens, dtype=dtype),
                     "norm.weight": _m(dim, dtype=dtype), "norm.bias": _m(dim, dtype=dtype)})
        if variant in ("faceid_plus", "faceid_plusv2"):
            proj.update(_perceiver("perceiver_resampler.", dim, sizes.clip_hidden, sizes.depth, dtype, sizes.heads,
                                   sizes.dim_head))
    elif variant in ("plus", "plus_face"):
        proj.update(_perceiver("", dim, sizes.clip_hidden, sizes.depth, dtype, sizes.heads, sizes.dim_head,
                               latents=sizes.plus_tokens))
    elif variant == "base":
        proj.update({"proj.weight": _m(dim * 4, sizes.clip_proj, dtype=dtype), "proj.bias": _m(dim * 4, dtype=dtype),
                     "norm.weight": _m(dim, dtype=dtype), "norm.bias": _m(dim, dtype=dtype)})
    else:
        raise ValueError(f"no table for IP-Adapter variant {variant!r}")
    out = {f"image_proj.{k}": v for k, v in proj.items()}
    for i, (name, hidden, width) in enumerate(layers):
        if name.endswith("attn2"):
            out[f"ip_adapter.{i}.to_k_ip.weight"] = _m(hidden, width, dtype=dtype)
            out[f"ip_adapter.{i}.to_v_ip.weight"] = _m(hidden, width, dtype=dtype)
    if with_lora if with_lora is not None else variant in FACEID_VARIANTS:
        r = sizes.rank
        for i, (name, hidden, width) in enumerate(layers):
            for t, fan_in in (("q", hidden), ("k", width), ("v", width), ("out", hidden)):
                out[f"ip_adapter.{i}.to_{t}_lora.down.weight"] = _m(r, fan_in, dtype=dtype)
                out[f"ip_adapter.{i}.to_{t}_lora.up.weight"] = _m(hidden, r, dtype=dtype)
    return out


def faceid_lora_table(unet: torch.nn.Module | None = None, dtype: torch.dtype = torch.float16, rank: int = 128,
                      alpha: bool = False) -> dict[str, torch.Tensor]:
    """The FaceID LoRA in kohya naming (`ip-adapter-faceid*_sd15_lora.safetensors`): rank `rank` on to_q, to_k,
    to_v and to_out.0 of every spatial attention layer (`lora_unet_..._attn2_to_out_0.lora_up.weight`)."""
    from .public_weights import attention_layers

    out: dict[str, torch.Tensor] = {}
    for name, hidden, width in attention_layers(unet):
        for t, fan_in in (("to_q", hidden), ("to_k", width), ("to_v", width), ("to_out_0", hidden)):
            k = f"{kohya_name(name)}_{t}"
            out[f"{k}.lora_down.weight"] = _m(rank, fan_in, dtype=dtype)
            out[f"{k}.lora_up.weight"] = _m(hidden, rank, dtype=dtype)
            if alpha:
                out[f"{k}.alpha"] = _m(dtype=dtype)
    return out


# -- sizes and comparisons ---------------------------------------------------------------------------------------


def nbytes(table: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensor data alone."""
    return sum(t.numel() * t.element_size() for t in table.values())


_ST_NAMES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}


def safetensors_bytes(table: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """The exact size of a .safetensors file holding `table` (8-byte length, JSON header padded to 8, data), as
    the safetensors library writes it (tensors by dtype size descending, then name)."""
    import json

    order = sorted(table, key=lambda k: (-table[k].element_size(), k))
    header: dict = {"__metadata__": metadata} if metadata else {}
    off = 0
    for k in order:
        n = table[k].numel() * table[k].element_size()
        header[k] = {"dtype": _ST_NAMES[table[k].dtype], "shape": list(table[k].shape), "data_offsets": [off, off + n]}
        off += n
    head = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + head + (-head) % 8 + off


_UNITS = {"B": 1, "MB": 10**6, "GB": 10**9, "GiB": 2**30}


@dataclass(frozen=True)
class Published:
    """A public file: its size as published ("157 MB", "51,059,544 B", "1.7 GiB"), and the table (family,
    variant, dtype) it should match."""

    file: str
    size: str
    family: str
    variant: str
    dtype: torch.dtype
    source: str

    @property
    def bytes(self) -> int:
        value, unit = self.size.replace(",", "").split()
        return round(float(value) * _UNITS[unit])

    @property
    def tolerance(self) -> float:
        """Half the last published digit (157 MB: 0.5 MB; 1.56 GiB: 0.005 GiB; a byte count: 0)."""
        value, unit = self.size.replace(",", "").split()
        decimals = len(value.partition(".")[2])
        return 0.5 * 10**-decimals * _UNITS[unit] if unit != "B" else 0.0


#: Published sizes (PUBLIC-WEIGHTS.md §2.1); the AnimateDiff ones read as GiB (453.2M fp32 parameters =
#: 1.81e9 B = 1.69 GiB for v2).
PUBLISHED: tuple[Published, ...] = (
    Published("ip-adapter-faceid-plusv2_sd15.bin", "157 MB", "ip_adapter", "faceid_plusv2", torch.float16,
              "huggingface.co/h94/IP-Adapter-FaceID"),
    Published("ip-adapter-faceid_sd15.bin", "96.7 MB", "ip_adapter", "faceid", torch.float16,
              "huggingface.co/h94/IP-Adapter-FaceID"),
    Published("ip-adapter-plus-face_sd15.safetensors", "98.2 MB", "ip_adapter", "plus_face", torch.float16,
              "huggingface.co/h94/IP-Adapter"),
    Published("ip-adapter-plus_sd15.safetensors", "98.2 MB", "ip_adapter", "plus", torch.float16,
              "huggingface.co/h94/IP-Adapter"),
    Published("ip-adapter_sd15.safetensors", "44.6 MB", "ip_adapter", "base", torch.float16,
              "huggingface.co/h94/IP-Adapter"),
    Published("ip-adapter-faceid-plusv2_sd15_lora.safetensors", "51,059,544 B", "lora", "faceid", torch.float16,
              "huggingface.co/h94/IP-Adapter-FaceID"),
    Published("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "2.53 GB", "clip_vision", "ViT-H/14", torch.float32,
              "huggingface.co/h94/IP-Adapter models/image_encoder/model.safetensors"),
    Published("mm_sd_v15_v2.ckpt", "1.7 GiB", "motion_module", "v2", torch.float32, "huggingface.co/guoyww/animatediff"),
    Published("v3_sd15_mm.ckpt", "1.56 GiB", "motion_module", "v3", torch.float32, "huggingface.co/guoyww/animatediff"),
    Published("control_v11p_sd15_openpose_fp16.safetensors", "723 MB", "controlnet", "openpose", torch.float16,
              "huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors"),
    Published("control_v11p_sd15_openpose.pth", "1.45 GB", "controlnet", "openpose", torch.float32,
              "huggingface.co/lllyasviel/ControlNet-v1-1"),
)


def file_bytes(table: dict[str, torch.Tensor], file: str) -> int:
    """A table's size as its file would have it: exact for .safetensors, the tensor data for pickles."""
    return safetensors_bytes(table) if file.endswith(".safetensors") else nbytes(table)


def table_for(family: str, variant: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor] | None:
    """The SD-1.5 table of a family / variant as `public_weights.identify` names them, or None (no table)."""
    if family == "ip_adapter" and variant in ("faceid", "faceid_plus", "faceid_plusv2", "plus", "plus_face", "base"):
        return ip_adapter_table(variant, dtype=dtype or torch.float16)
    if family == "motion_module" and variant in ("v1", "v2", "v3"):
        return motion_table(variant, dtype=dtype)
    if family == "controlnet":
        return controlnet_table("ldm", dtype=dtype)
    if family == "clip_vision" and variant in ("ViT-H/14", "ViT-L/14"):
        return clip_vision_table(variant, dtype)
    if family == "lora" and variant == "faceid":
        return faceid_lora_table(dtype=dtype or torch.float16)
    if family == "checkpoint" and variant in ("4ch", "9ch"):
        return checkpoint_unet_table(4 if variant == "4ch" else 9, dtype=dtype)
    return None


@dataclass(frozen=True)
class Comparison:
    """A header against a table: keys the file lacks, keys with another shape, keys the table lacks."""

    missing: tuple[str, ...]
    wrong: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong

    def words(self) -> str:
        if self.ok:
            return "matches the published layout" + (f" (+{len(self.extra)} other tensors)" if self.extra else "")
        return (f"differs from the published layout: {len(self.missing)} missing (e.g. {list(self.missing[:2])}), "
                f"{len(self.wrong)} with another shape (e.g. {list(self.wrong[:2])})")


def compare(header: dict[str, torch.Tensor], table: dict[str, torch.Tensor], scope: str = "") -> Comparison:
    """Keys and shapes of a file header against a table; `scope`: only header keys starting with it count as
    extra (a full SD checkpoint also holds a VAE and a text encoder)."""
    missing = tuple(k for k in table if k not in header)
    wrong = tuple(f"{k} {tuple(header[k].shape)} vs {tuple(table[k].shape)}" for k in table
                  if k in header and tuple(header[k].shape) != tuple(table[k].shape))
    extra = tuple(k for k in header if k not in table and k.startswith(scope))
    return Comparison(missing, wrong, extra)
