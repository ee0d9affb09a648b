"""The public SD-1.5 files a ComfyUI user already has: what each file is (from its header), and loaders.

No M2HVideo weights are public, so the zero-shot mode and the warm start run on files users keep anyway:
IP-Adapter (FaceID, FaceID-PlusV2, Plus-Face, ...; nested-dict `.bin` or flattened `.safetensors`), its FaceID LoRA
(kohya keys, `models/loras`), ControlNet 1.1 (LDM layout with or without `control_model.`, or diffusers layout),
CLIP ViT-H/14 (transformers layout). The SD-1.5 base, AnimateDiff v2/v3 motion modules and CLIP encoders load
through `base_weights`; this module also names them.

- `identify` reads only headers (safetensors JSON; pickles through `torch.load(weights_only=True, mmap=True,
  map_location="meta")`), so `check_public_files` refuses a wrong or unpaired file in one line, naming the file,
  what it is and the fix, before any model is built.
- IP-Adapter's `ip_adapter.{i}` index is the position of the processor in `unet.attn_processors` (down, up, mid;
  attn1 at even, attn2 at odd positions). `load_ip_adapter` maps it to diffusers module names once, here.
- Pickles are never unpickled beyond tensors (`weights_only=True`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

H94_FACEID = "huggingface.co/h94/IP-Adapter-FaceID"
H94 = "huggingface.co/h94/IP-Adapter"
VIT_H_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_H_SOURCE = f"{H94} models/image_encoder/model.safetensors, renamed"
OPENPOSE_FILE = "control_v11p_sd15_openpose_fp16.safetensors"
OPENPOSE_SOURCE = ("huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors "
                   "(or control_v11p_sd15_openpose.pth from huggingface.co/lllyasviel/ControlNet-v1-1)")
MOTION_SOURCE = "huggingface.co/guoyww/animatediff (mm_sd_v15_v2.ckpt or v3_sd15_mm.ckpt)"
SD15_SOURCE = "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 (or any SD-1.5 fine-tune)"


class PublicWeightsError(ValueError):
    """A public weight file that cannot be used here, in one line: the file, what is wrong, the fix."""


# -- reading: headers (meta tensors) and tensors, nested dicts flattened with "." ---------------------------------

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _flatten(obj: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PublicWeightsError(f"{path.name} does not hold a state dict ({type(obj).__name__}): use the "
                                 ".safetensors version of this file")
    return _flatten(obj)


def _load_pickle(path: Path, device: str) -> dict[str, torch.Tensor]:
    from .preprocess.model_files import describe_file

    try:
        try:
            obj = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location=device, weights_only=True)  # legacy (non-zip) pickle
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for us
        msg = str(e).strip()
        why = ("it holds pickled objects besides tensors, which the pack never unpickles"
               if "Weights only load failed" in msg else msg.splitlines()[0][:160] if msg else type(e).__name__)
        raise PublicWeightsError(f"{path.name} could not be read as a weights-only checkpoint "
                                 f"({describe_file(path)}; {why}): use the .safetensors version of this file") from None
    return _unwrap(obj, path)


def _safetensors_header(path: Path) -> dict:
    from .preprocess.model_files import describe_file

    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > (100 << 20):
                raise ValueError("header too large")
            header = json.loads(f.read(n))
        end = 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError):
        raise PublicWeightsError(f"{path.name} is not a readable .safetensors file ({describe_file(path)}): "
                                 "download it again") from None
    if path.stat().st_size < end:
        raise PublicWeightsError(f"{path.name} is cut short ({describe_file(path)}): download it again")
    return header


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise PublicWeightsError(f"{path} not found" + (" (a folder; give the file inside)" if path.is_dir() else ""))


def read_header(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the file as a meta tensor (name, shape, dtype; no data read). Nested dicts (IP-Adapter
    `.bin`) are flattened with "." so both IP-Adapter forms give the same names."""
    path = Path(path)
    _check_exists(path)
    if path.suffix == ".safetensors":
        header = _safetensors_header(path)
        return {k: torch.empty(v["shape"], dtype=_ST_DTYPES.get(v["dtype"], torch.uint8), device="meta")
                for k, v in header.items() if k != "__metadata__"}
    return _load_pickle(path, "meta")


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the file (CPU), nested dicts flattened as in `read_header`."""
    path = Path(path)
    _check_exists(path)
    if path.suffix == ".safetensors":
        _safetensors_header(path)
        from safetensors.torch import load_file

        return load_file(str(path))
    return _load_pickle(path, "cpu")


# -- what a file is -----------------------------------------------------------------------------------------------

CROSS_WIDTH_BASE = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
BASE_WORDS = {"sd15": "SD-1.5", "sd2": "SD-2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX"}
CLIP_WIDTHS = {768: "ViT-B", 1024: "ViT-L/14", 1280: "ViT-H/14", 1408: "ViT-g/14", 1664: "ViT-bigG/14"}
_CONTROL_KINDS = ("openpose", "depth", "canny", "inpaint", "lineart", "softedge", "scribble", "seg", "normalbae",
                  "mlsd", "shuffle", "tile", "ip2p", "qrcode")
_CLIP_PATCH = "vision_model.embeddings.patch_embedding.weight"
_LORA_RE = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


@dataclass(frozen=True)
class PublicFile:
    """What a file is, from its header: `family` checkpoint | motion_module | controlnet | ip_adapter | lora |
    clip_vision | sparsectrl | unknown; `variant` (4ch/9ch, v1/v2/v3, the IP-Adapter variant, ViT-H/14, ...);
    `base` sd15 | sd2 | sdxl | ... | "" (unknown); `words`: one line for users."""

    name: str
    family: str
    variant: str
    base: str
    words: str


def ip_variant(image_proj_keys, name: str = "") -> str:
    """The IP-Adapter variant from its image_proj keys (and, for FaceID-Plus v1/v2, the file name, as
    IPAdapter_plus does: the keys are the same; v2 adds a shortcut)."""
    keys = set(image_proj_keys)
    low = name.lower().replace("-", "").replace("_", "")
    if "perceiver_resampler.proj_in.weight" in keys:
        return "faceid_plusv2" if "plusv2" in low else "faceid_plus"
    if "latents" in keys:
        return "plus_face" if "face" in low else "plus"
    if "proj.3.weight" in keys:
        return "full_face"
    if "norm.weight" in keys and "proj.0.weight" in keys:
        return "faceid_portrait" if "portrait" in low else "faceid"
    if "proj.weight" in keys:
        return "base"
    return "unknown"


IP_WORDS = {"faceid": "IP-Adapter FaceID", "faceid_plusv2": "IP-Adapter FaceID-PlusV2",
            "faceid_plus": "IP-Adapter FaceID-Plus (v1)", "faceid_portrait": "IP-Adapter FaceID-Portrait",
            "plus_face": "IP-Adapter Plus-Face", "plus": "IP-Adapter Plus", "full_face": "IP-Adapter Full-Face",
            "base": "IP-Adapter", "unknown": "IP-Adapter of an unknown variant"}
FACEID_VARIANTS = ("faceid", "faceid_plus", "faceid_plusv2", "faceid_portrait")


def _split_ip(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(image_proj, ip_adapter) of a flattened IP-Adapter state dict, prefixes removed."""
    proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    ip = {k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(("ip_adapter.", "adapter_modules."))}
    return proj, ip


def _motion_info(sd: dict, name: str) -> PublicFile:
    widths = {int(m[1]): v.shape[0] for k, v in sd.items()
              if (m := re.match(r"down_blocks\.(\d+)\.motion_modules\.0\.(?:temporal_transformer\.)?norm\.weight$",
                                k))}
    has_mid = any(k.startswith("mid_block.") for k in sd)
    pe = next((v.shape[1] for k, v in sd.items() if k.endswith("pos_encoder.pe")), None)
    if len(widths) == 3:  # SDXL's UNet has 3 levels (mm_sdxl_v10_beta, HotShot-XL)
        return PublicFile(name, "motion_module", "sdxl", "sdxl", "an SDXL motion module (3 UNet levels)")
    base = "sd15" if len(widths) == 4 else ""  # tiny test modules: base unknown, checked when loaded
    if any("lora" in k for k in sd):
        return PublicFile(name, "lora", "motion_lora", base, "an AnimateDiff motion LoRA")
    variant = "v2" if has_mid else ("v1" if pe == 24 else "v3")
    words = {"v2": "AnimateDiff v2 motion module (mid block)", "v3": "AnimateDiff v3 motion module (no mid block)",
             "v1": "AnimateDiff v1 motion module (no mid block, 24 positions)"}[variant]
    return PublicFile(name, "motion_module", variant, base, words)


def identify(path: str | os.PathLike, header: dict[str, torch.Tensor] | None = None) -> PublicFile:
    """What `path` is, from its header only (a diffusers / transformers folder: from its config.json)."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return _identify_folder(path)
    sd = read_header(path) if header is None else header
    keys = list(sd)
    if any(k.startswith(("image_proj.", "ip_adapter.", "adapter_modules.")) for k in keys):
        proj, ip = _split_ip(sd)
        variant = ip_variant(proj, name)
        kv = ip.get("1.to_k_ip.weight")
        base = CROSS_WIDTH_BASE.get(kv.shape[1], "") if kv is not None else ""
        lora = any(_LORA_RE.match(k) for k in ip)
        return PublicFile(name, "ip_adapter", variant, base, f"{IP_WORDS[variant]} for "
                          f"{BASE_WORDS.get(base, 'an unknown base')}{' with its LoRA inside' if lora else ''}")
    if any(k.startswith("model.diffusion_model.") for k in keys) and not any(k.startswith("control_model.")
                                                                            for k in keys):
        from .base_weights import UNET_CONV_IN, identify_checkpoint

        base = identify_checkpoint(sd)
        ch = sd[UNET_CONV_IN].shape[1] if UNET_CONV_IN in sd else 0
        variant = {4: "4ch", 9: "9ch"}.get(ch, f"{ch}ch")
        what = {"4ch": "", "9ch": " inpainting (9-channel UNet)"}.get(variant, f" with a {ch}-channel UNet input")
        return PublicFile(name, "checkpoint", variant, base, f"an {BASE_WORDS.get(base, base)}{what} checkpoint")
    hint = next((k for k in keys if k.endswith(("input_hint_block.0.weight", "controlnet_cond_embedding.conv_in.weight",
                                                 "controlnet_cond_embedding.weight"))), None)
    if hint is not None or any(k.startswith(("control_model.", "zero_convs.", "controlnet_down_blocks.")) for k in keys):
        if any("motion_modules" in k or "temporal" in k for k in keys):
            return PublicFile(name, "sparsectrl", "sparsectrl", "sd15", "an AnimateDiff SparseCtrl encoder")
        to_k = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
        base = ("sdxl" if any("label_emb" in k or "add_embedding" in k for k in keys)
                else CROSS_WIDTH_BASE.get(to_k.shape[1], "") if to_k is not None else "")
        kind = next((c for c in _CONTROL_KINDS if c in name.lower()), "")
        hint_ch = sd[hint].shape[1] if hint is not None else 0
        return PublicFile(name, "controlnet", kind or "unknown", base,
                          f"a{'n' if base in ('sd15', 'sdxl') else ''} {BASE_WORDS.get(base, '?')} ControlNet"
                          f"{f' ({kind}, by its name)' if kind else ''} with a {hint_ch}-channel hint")
    if any("motion_modules" in k for k in keys):
        return _motion_info(sd, name)
    patch = next((k for k in keys if k.endswith(_CLIP_PATCH)), None)
    if patch is not None:
        w = sd[patch].shape[0]
        proj = next((v for k, v in sd.items() if k.endswith("visual_projection.weight")), None)
        variant = CLIP_WIDTHS.get(w, f"width {w}")
        return PublicFile(name, "clip_vision", variant, "", f"a CLIP {variant} image encoder (width {w}"
                          f"{f', {proj.shape[0]}-d projection' if proj is not None else ', no projection'})")
    if any(k.startswith(("visual.", "transformer.resblocks.")) or k == "visual.conv1.weight" for k in keys):
        return PublicFile(name, "clip_vision", "open_clip", "", "an OpenCLIP-layout CLIP model (not the "
                          "transformers layout)")
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return _lora_info(sd, name)
    if any("lora" in k for k in keys):
        return PublicFile(name, "lora", "other", "", "a LoRA in a non-kohya layout")
    return PublicFile(name, "unknown", "", "", f"not a file type the pack knows ({len(keys)} tensors)")


def _lora_info(sd: dict, name: str) -> PublicFile:
    to_k = next((v for k, v in sd.items() if k.endswith("attn2_to_k.lora_down.weight")), None)
    base = CROSS_WIDTH_BASE.get(to_k.shape[1], "") if to_k is not None else ""
    downs = [(k, v) for k, v in sd.items() if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")]
    ranks = sorted({v.shape[0] for _, v in downs})
    attn_only = bool(downs) and all(re.search(r"_attn[12]_to_(q|k|v|out_0)\.lora_down", k) for k, _ in downs)
    faceid = attn_only and ranks == [128] and len(downs) == 128 and base == "sd15"
    variant = "faceid" if faceid else "kohya"
    words = (f"a kohya LoRA for {BASE_WORDS.get(base, 'an unknown base')}, {len(downs)} UNet layers, rank "
             f"{'/'.join(map(str, ranks)) or '?'}" + (" (the IP-Adapter FaceID LoRA's shape)" if faceid else ""))
    return PublicFile(name, "lora", variant, base, words)


def _identify_folder(path: Path) -> PublicFile:
    for sub in ("unet", "."):
        cfg = path / sub / "config.json"
        if cfg.is_file():
            conf = json.loads(cfg.read_text())
            if "cross_attention_dim" in conf and "in_channels" in conf:
                cad = conf["cross_attention_dim"]
                base = CROSS_WIDTH_BASE.get(cad if isinstance(cad, int) else 0, "")
                fam = "controlnet" if conf.get("_class_name") == "ControlNetModel" else "checkpoint"
                return PublicFile(path.name, fam, f"{conf['in_channels']}ch", base, f"a diffusers "
                                  f"{BASE_WORDS.get(base, '?')} {'ControlNet' if fam == 'controlnet' else 'model'} "
                                  f"folder")
            if conf.get("_class_name") == "MotionAdapter":
                v = "v2" if conf.get("use_motion_mid_block", True) else "v3"
                return PublicFile(path.name, "motion_module", v, "sd15", f"a diffusers MotionAdapter folder ({v})")
            vc = conf.get("vision_config", conf)
            if "hidden_size" in vc and "patch_size" in vc:
                variant = CLIP_WIDTHS.get(vc["hidden_size"], f"width {vc['hidden_size']}")
                return PublicFile(path.name, "clip_vision", variant, "", f"a CLIP {variant} image encoder folder")
    return PublicFile(path.name, "unknown", "", "", "a folder the pack does not know")


# -- the SD-1.5 UNet's attention layers, in IP-Adapter's order ----------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sd15_attention_layers() -> tuple[tuple[str, int, int], ...]:
    """(name, hidden, context width) of every attention processor of SD-1.5's UNet, in `attn_processors` order,
    from the model built on the meta device."""
    from diffusers import UNet2DConditionModel

    from .config import sd15

    kw = sd15().unet.unet_kwargs()
    kw["in_channels"] = 4
    with torch.device("meta"):
        unet = UNet2DConditionModel(**kw)
    return attention_layers(unet)


def attention_layers(unet: torch.nn.Module | None = None) -> tuple[tuple[str, int, int], ...]:
    """(module name, hidden width, context width) of each spatial attention layer of `unet` (a
    UNet2DConditionModel or UNetMotionModel; None: SD-1.5), in the order of `unet.attn_processors` with the motion
    modules left out: the order IP-Adapter files number their layers by (attn1 even, attn2 odd)."""
    if unet is None:
        return _sd15_attention_layers()
    out = []
    for proc in unet.attn_processors:
        if "motion_modules" in proc:
            continue
        name = proc.removesuffix(".processor")
        attn = unet.get_submodule(name)
        out.append((name, attn.to_q.weight.shape[0], attn.to_k.weight.shape[1]))
    return tuple(out)


# -- IP-Adapter -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPAdapterWeights:
    """An IP-Adapter file, mapped onto the UNet.

    variant: faceid | faceid_plusv2 | faceid_plus | plus_face | plus | base (also full_face, faceid_portrait).
    image_proj: the file's image_proj tensors without the "image_proj." prefix.
    ip_kv: diffusers name of each spatial cross-attention (`...transformer_blocks.0.attn2`) -> (to_k_ip.weight,
    to_v_ip.weight), mapped from the file's processor index.
    lora: the LoRA carried inside the file (FaceID `.bin`), keys as in the file ("0.to_q_lora.down.weight"), or None.
    """

    variant: str
    image_proj: dict[str, torch.Tensor]
    ip_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]
    lora: dict[str, torch.Tensor] | None


def ip_adapter_from_state_dict(sd: dict[str, torch.Tensor], name: str = "ip-adapter",
                               unet: torch.nn.Module | None = None) -> IPAdapterWeights:
    """Map a flattened IP-Adapter state dict (real or meta tensors) onto `unet`'s attention layers (None:
    SD-1.5's), checking every index and shape."""
    proj, ip = _split_ip(sd)
    if not proj or not ip:
        raise PublicWeightsError(f"{name} is not an IP-Adapter (it needs image_proj and ip_adapter weights)")
    variant = ip_variant(proj, name)
    layers = attention_layers(unet)
    ctx = layers[1][2] if len(layers) > 1 else 0
    kv0 = ip.get("1.to_k_ip.weight")
    if kv0 is not None and kv0.shape[1] != ctx:
        base = CROSS_WIDTH_BASE.get(kv0.shape[1])
        raise PublicWeightsError(
            f"{name} is an {IP_WORDS[variant]} for {BASE_WORDS.get(base, f'a {kv0.shape[1]}-wide context')} (K/V "
            f"input {kv0.shape[1]}, this UNet's is {ctx}): use its _sd15 version from "
            f"{H94_FACEID if variant in FACEID_VARIANTS else H94}")
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    lora: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for k, v in ip.items():
        if _LORA_RE.match(k):
            lora[k] = v
            if int(k.split(".")[0]) >= len(layers):
                bad.append(k)
            continue
        m = re.fullmatch(r"(\d+)\.to_([kv])_ip\.weight", k)
        if m is None:
            bad.append(k)
            continue
        i = int(m[1])
        if i >= len(layers) or not layers[i][0].endswith("attn2"):
            bad.append(k)
    if bad:
        raise PublicWeightsError(
            f"{name}: {len(bad)} ip_adapter weight(s) do not fit this UNet's {len(layers)} attention layers "
            f"(e.g. {bad[:2]}; indices count attn1/attn2 of down, up, mid blocks): is it an SD-1.5 IP-Adapter?")
    for i, (layer, hidden, width) in enumerate(layers):
        if not layer.endswith("attn2"):
            continue
        k, v = ip.get(f"{i}.to_k_ip.weight"), ip.get(f"{i}.to_v_ip.weight")
        if k is None or v is None:
            raise PublicWeightsError(f"{name} lacks ip_adapter.{i}.to_{'k' if k is None else 'v'}_ip.weight "
                                     f"({layer}): the file is incomplete, download it again")
        for t, which in ((k, "k"), (v, "v")):
            if tuple(t.shape) != (hidden, width):
                raise PublicWeightsError(f"{name}: ip_adapter.{i}.to_{which}_ip.weight is {tuple(t.shape)}, "
                                         f"{layer} needs ({hidden}, {width}): not an IP-Adapter for this UNet")
        kv[layer] = (k, v)
    return IPAdapterWeights(variant, proj, kv, lora or None)


def load_ip_adapter(path: str | os.PathLike, unet: torch.nn.Module | None = None) -> IPAdapterWeights:
    """An IP-Adapter `.bin` (nested dict, read with weights_only=True) or `.safetensors` (flattened keys),
    mapped onto `unet` (None: SD-1.5's layer order and widths)."""
    path = Path(path)
    return ip_adapter_from_state_dict(read_tensors(path), path.name, unet)


# -- ControlNet -------------------------------------------------------------------------------------------------


def controlnet_config(cfg=None, hint_channels: tuple[int, ...] = (16, 32, 96, 256)) -> dict:
    """diffusers ControlNetModel kwargs of the UNet of `cfg` (an M2HConfig; None: SD-1.5 = ControlNet 1.1) with
    the hint encoder's widths (`controlnet_hint_channels` reads them from a file)."""
    from .config import sd15

    u = (cfg or sd15()).unet
    return {"in_channels": u.latent_channels, "down_block_types": tuple(u.down_block_types),
            "block_out_channels": tuple(u.block_out_channels), "layers_per_block": u.layers_per_block,
            "attention_head_dim": u.attention_head_dim, "cross_attention_dim": u.cross_attention_dim,
            "norm_num_groups": u.norm_num_groups, "conditioning_embedding_out_channels": tuple(hint_channels)}


def controlnet_hint_channels(sd: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The hint encoder's widths (16, 32, 96, 256 in ControlNet 1.1) from a ControlNet state dict (any layout):
    the output width of each stride-1 conv before a stride-2 one, and of the last."""
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        convs = [sd["controlnet_cond_embedding.conv_in.weight"]] + [
            sd[k] for k in sorted((k for k in sd if re.fullmatch(r"controlnet_cond_embedding\.blocks\.\d+\.weight", k)),
                                  key=lambda k: int(k.split(".")[2]))]
    else:
        hint = sorted(((int(m[2]), v) for k, v in sd.items()
                       if (m := re.fullmatch(r"(control_model\.)?input_hint_block\.(\d+)\.weight", k))),
                      key=lambda t: t[0])
        convs = [v for _, v in hint[:-1]]  # the last conv maps to the UNet's width
    return tuple(int(c.shape[0]) for c in convs[0::2])


def controlnet_layout(keys) -> str:
    """"ldm" (control_model. prefix), "ldm_bare" (no prefix) or "diffusers"."""
    keys = list(keys)
    if any(k.startswith("control_model.") for k in keys):
        return "ldm"
    if any(k.startswith("controlnet_cond_embedding.") for k in keys):
        return "diffusers"
    return "ldm_bare"


def controlnet_to_diffusers(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Any of the three ControlNet layouts in diffusers' names (diffusers' own single-file converter)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    layout = controlnet_layout(sd)
    if layout == "diffusers":
        return dict(sd)
    if layout == "ldm":
        sd = {k: v for k, v in sd.items() if k.startswith("control_model.")}
    else:
        sd = {"control_model." + k: v for k, v in sd.items()}
    return convert_controlnet_checkpoint(sd, config)


def check_controlnet(info: PublicFile, want_base: str = "sd15") -> None:
    """A ControlNet for `want_base`, not a SparseCtrl encoder or another file; else one line with the fix."""
    if info.family == "sparsectrl":
        raise PublicWeightsError(f"{info.name} is an AnimateDiff SparseCtrl encoder, not a ControlNet: give "
                                 f"{OPENPOSE_FILE} ({OPENPOSE_SOURCE})")
    if info.family != "controlnet":
        raise PublicWeightsError(f"{info.name} is {info.words}, not a ControlNet: give {OPENPOSE_FILE} "
                                 f"({OPENPOSE_SOURCE})")
    if info.base and info.base != want_base:
        raise PublicWeightsError(f"{info.name} is {info.words}; the pack uses SD-1.5 ControlNets: give "
                                 f"{OPENPOSE_FILE} ({OPENPOSE_SOURCE})")


def load_controlnet(path: str | os.PathLike, dtype: torch.dtype = torch.float32, cfg=None):
    """An SD-1.5 ControlNet (1.1 `.pth`/`.safetensors` with or without `control_model.`, or diffusers layout) as
    diffusers' ControlNetModel, built from an in-code config (no hub access). cfg: an M2HConfig whose UNet the
    ControlNet mirrors (None: SD-1.5)."""
    path = Path(path)
    sd = read_tensors(path)
    info = identify(path, sd)
    check_controlnet(info, want_base="sd15" if cfg is None or cfg.base_model == "sd15" else info.base)
    if info.variant not in ("openpose", "unknown"):
        log.info("%s is a %s ControlNet (by its name), not OpenPose", path.name, info.variant)
    model = controlnet_from_state_dict(sd, cfg, path.name)
    return torch.nn.Module.to(model, dtype).eval().requires_grad_(False)


def controlnet_from_state_dict(sd: dict[str, torch.Tensor], cfg=None, name: str = "ControlNet"):
    """diffusers ControlNetModel of a ControlNet state dict in any layout (hint widths from the file, the rest
    from `cfg`'s UNet; None: SD-1.5), strict on keys and shapes; on the meta device for key tables."""
    from diffusers import ControlNetModel

    from .base_weights import BaseWeightsError, _device_of, _load_strict

    config = controlnet_config(cfg, controlnet_hint_channels(sd))
    with _device_of(sd):
        model = ControlNetModel(**config)
    try:
        _load_strict(model, controlnet_to_diffusers(sd, config), name, "ControlNet")
    except BaseWeightsError as e:
        raise PublicWeightsError(str(e)) from None
    return model


# -- LoRA ------------------------------------------------------------------------------------------------------


def _lora_targets(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """kohya name ("lora_unet_down_blocks_0_attentions_0_..._attn2_to_k") -> Linear/Conv2d module."""
    return {"lora_unet_" + n.replace(".", "_"): m for n, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def lora_pairs(lora: dict[str, torch.Tensor], unet: torch.nn.Module, name: str = "LoRA"
               ) -> list[tuple[str, torch.nn.Module, torch.Tensor, torch.Tensor, float]]:
    """(module name, module, up, down, alpha/rank scale) for every layer of a kohya LoRA or an IP-Adapter `.bin`
    LoRA ("0.to_q_lora.down.weight", numbered as `attention_layers`); unmapped keys are refused."""
    out = []
    keys = {k.removeprefix("ip_adapter."): v for k, v in lora.items()}
    if any(_LORA_RE.match(k) for k in keys):
        layers = attention_layers(unet)
        bad = [k for k in keys if not _LORA_RE.match(k) or int(k.split(".")[0]) >= len(layers)]
        if bad:
            raise PublicWeightsError(f"{name}: {len(bad)} LoRA key(s) do not map onto this UNet (e.g. {bad[:2]})")
        for k in sorted(keys):
            m = _LORA_RE.match(k)
            if m[3] != "down":
                continue
            layer = layers[int(m[1])][0]
            target = f"{layer}.{'to_out.0' if m[2] == 'out' else 'to_' + m[2]}"
            up = keys.get(k.replace(".down.", ".up."))
            if up is None:
                raise PublicWeightsError(f"{name}: {k} has no up weight")
            out.append((target, unet.get_submodule(target), up, keys[k], 1.0))
        return out
    targets = _lora_targets(unet)
    names = {k.split(".", 1)[0] for k in keys}
    te = sorted(n for n in names if n.startswith("lora_te"))
    if te:
        warnings.warn(f"{name}: {len(te)} text-encoder LoRA layers left out (the UNet's LoRA is merged)", stacklevel=3)
    unknown = [k for k in keys if k.split(".", 1)[0] not in targets and not k.startswith("lora_te")]
    if unknown:
        raise PublicWeightsError(f"{name}: {len(unknown)} LoRA key(s) name no layer of this UNet (e.g. "
                                 f"{unknown[:2]}): is it an SD-1.5 LoRA in kohya naming?")
    for n in sorted(names - set(te)):
        down, up = keys.get(f"{n}.lora_down.weight"), keys.get(f"{n}.lora_up.weight")
        if down is None or up is None:
            raise PublicWeightsError(f"{name}: {n} lacks its lora_{'down' if down is None else 'up'}.weight")
        alpha = keys.get(f"{n}.alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        out.append((n, targets[n], up, down, scale))
    return out


def lora_delta(module: torch.nn.Module, up: torch.Tensor, down: torch.Tensor, name: str) -> torch.Tensor:
    """up @ down in the shape of module.weight (Linear, or Conv2d with a 1x1 up and a kxk down)."""
    w = module.weight
    if up.shape[0] != w.shape[0] or down.shape[1] != w.shape[1] or up.shape[1] != down.shape[0]:
        raise PublicWeightsError(f"{name}: LoRA up {tuple(up.shape)} / down {tuple(down.shape)} do not fit the "
                                 f"layer's weight {tuple(w.shape)}: a LoRA for another base model?")
    d = up.flatten(1).to(device=w.device, dtype=torch.float32) @ down.flatten(1).to(device=w.device,
                                                                                   dtype=torch.float32)
    if d.numel() != w.numel():
        raise PublicWeightsError(f"{name}: LoRA up {tuple(up.shape)} / down {tuple(down.shape)} do not fit the "
                                 f"layer's weight {tuple(w.shape)}")
    return d.reshape(w.shape)


@torch.no_grad()
def merge_lora(unet: torch.nn.Module, lora: str | os.PathLike | dict, strength: float) -> int:
    """W += strength * scale * up @ down for every layer of a kohya LoRA (`lora_unet_..._attn2_to_k`, scale =
    alpha/rank where the file has alpha, else 1) or of an IP-Adapter `.bin` LoRA (`0.to_q_lora.down.weight`,
    scale 1, as PEFT applies it). Works on UNet2DConditionModel and UNetMotionModel (motion modules are not
    numbered). Every key must map onto a layer with the right shape. Returns how many layers were merged."""
    name = Path(lora).name if not isinstance(lora, dict) else "LoRA"
    sd = read_tensors(lora) if not isinstance(lora, dict) else lora
    pairs = lora_pairs(sd, unet, name)
    deltas = [(m, lora_delta(m, up, down, f"{name} ({target})"), scale) for target, m, up, down, scale in pairs]
    for m, d, scale in deltas:  # all shapes checked before the first write
        m.weight.add_((strength * scale * d).to(m.weight.dtype))
    return len(deltas)


# -- header checks before any model is built ----------------------------------------------------------------------

_FOLDER = {"base": "checkpoints", "motion": "animatediff_models", "controlnet": "controlnet",
           "ip_adapter": "ipadapter", "ip_lora": "loras", "clip_vision": "clip_vision"}
_SOURCE = {"base": SD15_SOURCE, "motion": MOTION_SOURCE, "controlnet": OPENPOSE_SOURCE,
           "ip_adapter": f"{H94_FACEID} (FaceID) or {H94} (Plus-Face)", "ip_lora": H94_FACEID,
           "clip_vision": VIT_H_SOURCE}
_LORA_FILE = {"faceid": "ip-adapter-faceid_sd15_lora.safetensors",
              "faceid_plusv2": "ip-adapter-faceid-plusv2_sd15_lora.safetensors",
              "faceid_plus": "ip-adapter-faceid-plus_sd15_lora.safetensors",
              "faceid_portrait": "ip-adapter-faceid-plusv2_sd15_lora.safetensors"}


def clip_width_needed(proj: dict[str, torch.Tensor], variant: str) -> tuple[str, int] | None:
    """("hidden"|"projection", width) the IP-Adapter's image projection reads from CLIP, or None (FaceID)."""
    if "perceiver_resampler.proj_in.weight" in proj:
        return "hidden", proj["perceiver_resampler.proj_in.weight"].shape[1]
    if "proj_in.weight" in proj:
        return "hidden", proj["proj_in.weight"].shape[1]
    if "proj.weight" in proj:
        return "projection", proj["proj.weight"].shape[1]
    if variant == "full_face" and "proj.0.weight" in proj:
        return "hidden", proj["proj.0.weight"].shape[1]
    return None


def _info(slot: str, p) -> tuple[PublicFile, dict]:
    path = Path(p)
    if not path.exists():
        raise PublicWeightsError(f"{path.name} not found ({path}): put it in models/{_FOLDER[slot]} "
                                 f"(get it from {_SOURCE[slot]})")
    header = {} if path.is_dir() else read_header(path)
    return identify(path, header if not path.is_dir() else None), header


def check_public_files(*, base=None, motion=None, controlnet=None, ip_adapter=None, ip_lora=None,
                       clip_vision=None) -> dict[str, PublicFile]:
    """Headers only, before any model is built: each given file is of the family its slot needs, for SD-1.5, and
    partners fit (a FaceID IP-Adapter has its LoRA, in the file or as `ip_lora`; the CLIP encoder is the one the
    IP-Adapter reads, ViT-H/14). Raises PublicWeightsError naming the file and the fix; returns what each is."""
    found: dict[str, PublicFile] = {}
    headers: dict[str, dict] = {}
    for slot, p in (("base", base), ("motion", motion), ("controlnet", controlnet), ("ip_adapter", ip_adapter),
                    ("ip_lora", ip_lora), ("clip_vision", clip_vision)):
        if p is not None:
            found[slot], headers[slot] = _info(slot, p)
    if "base" in found:
        f = found["base"]
        if f.family != "checkpoint":
            raise PublicWeightsError(f"{f.name} is {f.words}, not an SD-1.5 checkpoint: put one in "
                                     f"models/checkpoints ({SD15_SOURCE})")
        if f.base != "sd15":
            raise PublicWeightsError(f"{f.name} is {f.words}; the pack is built on SD-1.5: give an SD-1.5 "
                                     f"checkpoint ({SD15_SOURCE})")
        if f.variant not in ("4ch", "9ch"):
            raise PublicWeightsError(f"{f.name} is {f.words} (an instruct model?): give a standard (4-channel) or "
                                     "inpainting (9-channel) SD-1.5 checkpoint")
    if "motion" in found:
        f = found["motion"]
        if f.family == "sparsectrl":
            raise PublicWeightsError(f"{f.name} is an AnimateDiff SparseCtrl encoder, not a motion module: give "
                                     f"mm_sd_v15_v2.ckpt or v3_sd15_mm.ckpt ({MOTION_SOURCE})")
        if f.family != "motion_module" or f.base not in ("sd15", ""):
            raise PublicWeightsError(f"{f.name} is {f.words}, not an SD-1.5 AnimateDiff motion module: give "
                                     f"mm_sd_v15_v2.ckpt or v3_sd15_mm.ckpt in models/animatediff_models "
                                     f"({MOTION_SOURCE})")
    if "controlnet" in found:
        f = found["controlnet"]
        check_controlnet(f)
        if f.variant not in ("openpose", "unknown"):
            warnings.warn(f"{f.name} is a {f.variant} ControlNet (by its name), not OpenPose: the pose images "
                          f"drive it as its hint", stacklevel=2)
    if "clip_vision" in found:
        f = found["clip_vision"]
        if f.family != "clip_vision" or f.variant == "open_clip":
            raise PublicWeightsError(f"{f.name} is {f.words}, not a CLIP image encoder in the transformers layout:"
                                     f" put {VIT_H_FILE} in models/clip_vision ({VIT_H_SOURCE})")
    if "ip_adapter" in found:
        _check_ip_partners(found, headers)
    elif "ip_lora" in found:
        _check_lora(found["ip_lora"], None)
    return found


def _check_lora(f: PublicFile, variant: str | None) -> None:
    if f.family != "lora" or f.variant in ("other", "motion_lora"):
        raise PublicWeightsError(f"{f.name} is {f.words}, not a kohya SD-1.5 LoRA: give "
                                 f"{_LORA_FILE.get(variant or 'faceid_plusv2')} in models/loras ({H94_FACEID})")
    if f.base and f.base != "sd15":
        raise PublicWeightsError(f"{f.name} is {f.words}: give the SD-1.5 LoRA "
                                 f"{_LORA_FILE.get(variant or 'faceid_plusv2')} ({H94_FACEID})")


def _check_ip_partners(found: dict[str, PublicFile], headers: dict[str, dict]) -> None:
    f = found["ip_adapter"]
    if f.family != "ip_adapter":
        raise PublicWeightsError(f"{f.name} is {f.words}, not an IP-Adapter: put ip-adapter-faceid-plusv2_sd15.bin "
                                 f"in models/ipadapter ({H94_FACEID})")
    if f.base not in ("sd15", ""):  # "": a width no published base has (tiny test files); checked when mapped
        raise PublicWeightsError(f"{f.name} is {f.words} (K/V width "
                                 f"{ {'sdxl': 2048, 'sd2': 1024}.get(f.base, '?')}, SD-1.5 has 768): use its _sd15 "
                                 f"version ({H94_FACEID if f.variant in FACEID_VARIANTS else H94})")
    proj, ip = _split_ip(headers["ip_adapter"])
    has_lora = any(_LORA_RE.match(k) for k in ip)
    lora = found.get("ip_lora")
    if f.variant in FACEID_VARIANTS and not has_lora and lora is None:
        want = _LORA_FILE[f.variant]
        raise PublicWeightsError(f"{f.name} needs its LoRA: put {want} in models/loras ({H94_FACEID})")
    if lora is not None:
        _check_lora(lora, f.variant)
        if f.variant not in FACEID_VARIANTS:
            raise PublicWeightsError(f"{lora.name} is given as the LoRA of {f.name}, an {IP_WORDS[f.variant]}, which "
                                     "has none: leave the IP-Adapter LoRA empty")
        ln = lora.name.lower().replace("-", "").replace("_", "")
        if "faceid" in ln and (("plusv2" in ln) != (f.variant == "faceid_plusv2")
                               or ("plus" in ln) != (f.variant in ("faceid_plus", "faceid_plusv2"))):
            raise PublicWeightsError(f"{lora.name} is the LoRA of another FaceID variant than {f.name} "
                                     f"({IP_WORDS[f.variant]}): use {_LORA_FILE[f.variant]} ({H94_FACEID})")
    need = clip_width_needed(proj, f.variant)
    clip = found.get("clip_vision")
    if need is None:
        return
    if clip is None:
        raise PublicWeightsError(f"{f.name} ({IP_WORDS[f.variant]}) needs the CLIP ViT-H/14 image encoder: put "
                                 f"{VIT_H_FILE} in models/clip_vision ({VIT_H_SOURCE})")
    h = headers["clip_vision"]
    if not h:  # a transformers folder: its config
        return
    patch = next(v for k, v in h.items() if k.endswith(_CLIP_PATCH))
    proj_w = next((v.shape[0] for k, v in h.items() if k.endswith("visual_projection.weight")), None)
    have = patch.shape[0] if need[0] == "hidden" else proj_w
    if have != need[1]:
        want = {1280: "ViT-H/14", 1024: "ViT-H/14 (1024-d projection)"}.get(need[1], f"width {need[1]}")
        raise PublicWeightsError(f"{clip.name} is {clip.words}, but {f.name} reads CLIP {want} features "
                                 f"({need[0]} width {need[1]}): put {VIT_H_FILE} in models/clip_vision "
                                 f"({VIT_H_SOURCE})")
