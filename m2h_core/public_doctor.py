"""`m2h doctor`'s report on the public SD-1.5 files: which were found in each model folder, what each is (from its
header), whether its keys and shapes match the published layout (`public_layouts`), and what the zero-shot mode
still lacks, where to put it and where users get it. Reads headers only; never downloads, never raises."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .preprocess.model_files import _env_dirs

#: ComfyUI folder -> the families that belong there
PUBLIC_FOLDERS = {"checkpoints": ("checkpoint",), "animatediff_models": ("motion_module",),
                  "controlnet": ("controlnet", "sparsectrl"), "ipadapter": ("ip_adapter",), "loras": ("lora",),
                  "clip_vision": ("clip_vision",)}
_HOME = {fam: folder for folder, fams in PUBLIC_FOLDERS.items() for fam in fams}
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MAX_FILES = 200  # per folder


@dataclass(frozen=True)
class FoundFile:
    """One weight file in a public-model folder: what it is (None: unreadable) and the check's words."""

    folder: str
    path: Path
    family: str
    variant: str
    base: str
    note: str


def _folders(kind: str, search_dirs: Iterable[str | os.PathLike]) -> list[Path]:
    out: list[Path] = []
    for d in [Path(x).expanduser() for x in search_dirs] + _env_dirs():
        for cand in (d / kind, d) if d.name == kind else (d / kind,):
            if cand.is_dir() and cand.resolve() not in [o.resolve() for o in out]:
                out.append(cand)
    return out


def _files(root: Path, depth: int = 3) -> list[Path]:
    out = []
    for cur, dirs, files in os.walk(root, followlinks=True):
        if len(Path(cur).relative_to(root).parts) >= depth:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(cur) / f for f in files if f.lower().endswith(WEIGHT_SUFFIXES)]
    return sorted(out)[:MAX_FILES]


@functools.lru_cache(maxsize=32)
def _table(kind: str, variant: str, option: str = "") -> dict | None:
    """A published table, built once per doctor run (tables are read, never changed)."""
    from .public_layouts import controlnet_table, ip_adapter_table, table_for

    if kind == "controlnet":
        return controlnet_table(option)
    if kind == "ip_adapter":
        return ip_adapter_table(variant, with_lora=option == "lora")
    return table_for(kind, variant)


def check_file(path: str | os.PathLike, folder: str = "") -> FoundFile:
    """What one file is and whether it matches the published layout of its family (headers only)."""
    from .public_layouts import compare
    from .public_weights import _LORA_RE, _split_ip, controlnet_layout, identify, read_header

    path = Path(path)
    try:
        if path.suffix != ".safetensors":
            with open(path, "rb") as f:
                if f.read(2) != b"PK":
                    return FoundFile(folder, path, "unknown", "", "", "a legacy pickle: not read (use the "
                                     ".safetensors version)")
        header = read_header(path)
        info = identify(path, header)
    except Exception as e:  # noqa: BLE001 - the doctor reports, it never fails
        return FoundFile(folder, path, "unknown", "", "", str(e).splitlines()[0] if str(e) else type(e).__name__)
    words = info.words
    if folder and info.family in _HOME and _HOME[info.family] != folder:
        words += f"; it belongs in models/{_HOME[info.family]}"
    table, scope = None, ""
    try:
        if info.family == "controlnet" and info.base in ("sd15", ""):
            table = _table("controlnet", "", controlnet_layout(header))
        elif info.family == "ip_adapter" and info.base == "sd15":
            has_lora = any(_LORA_RE.match(k) for k in _split_ip(header)[1])
            table = _table("ip_adapter", info.variant, "lora" if has_lora else "") if info.variant in (
                "faceid", "faceid_plus", "faceid_plusv2", "plus", "plus_face", "base") else None
        elif info.family == "motion_module" and not any("temporal_transformer" in k for k in header):
            words += " (diffusers layout: not compared)"
        elif info.family == "clip_vision":
            header = {k.removeprefix("clip_vision."): v for k, v in header.items()}
            table = _table(info.family, info.variant)
        elif info.base in ("sd15", ""):
            table = _table(info.family, info.variant)
            scope = "model.diffusion_model." if info.family == "checkpoint" else ""
    except Exception as e:  # noqa: BLE001
        words += f" (no table: {e})"
    if table is not None:
        words += "; " + compare(header, table, scope).words()
    return FoundFile(folder, path, info.family, info.variant, info.base, words)


def scan_public_files(search_dirs: Iterable[str | os.PathLike] | None = None) -> list[FoundFile]:
    """Every weight file in the public-model folders (`<dir>/<folder>` of each search dir and $M2H_MODELS)."""
    dirs = list(search_dirs or [])
    return [check_file(p, kind) for kind in PUBLIC_FOLDERS for root in _folders(kind, dirs) for p in _files(root)]


def _pick(found: list[FoundFile], family: str, variants: tuple[str, ...] = ()) -> FoundFile | None:
    ok = [f for f in found if f.family == family and f.base in ("sd15", "") and "differs" not in f.note]
    for v in variants or (None,):
        for f in ok:
            if v is None or f.variant == v:
                return f
    return None


def zero_shot_needs(found: list[FoundFile]) -> list[str]:
    """What the zero-shot mode still lacks (one line each: what, where to put it, where to get it), or the pairing
    error of the files it would pick; [] when everything is there."""
    from .public_weights import (
        _LORA_FILE,
        H94,
        H94_FACEID,
        MOTION_SOURCE,
        OPENPOSE_FILE,
        OPENPOSE_SOURCE,
        SD15_SOURCE,
        VIT_H_FILE,
        VIT_H_SOURCE,
        PublicWeightsError,
        check_public_files,
    )

    lines = []
    base = _pick(found, "checkpoint", ("4ch", "9ch"))
    motion = _pick(found, "motion_module", ("v3", "v2", "v1"))
    cn = _pick(found, "controlnet", ("openpose",))
    ip = _pick(found, "ip_adapter", ("faceid_plusv2", "faceid", "plus_face"))
    if base is None:
        lines.append(f"an SD-1.5 checkpoint: put one in models/checkpoints (get: {SD15_SOURCE})")
    if motion is None:
        lines.append("an AnimateDiff motion module: put v3_sd15_mm.ckpt or mm_sd_v15_v2.ckpt in "
                     f"models/animatediff_models (get: {MOTION_SOURCE.split(' (')[0]})")
    if cn is None:
        other = _pick(found, "controlnet")
        lines.append(f"ControlNet OpenPose: put {OPENPOSE_FILE} in models/controlnet (get: {OPENPOSE_SOURCE})"
                     + (f"; {other.path.name} is not named openpose" if other else ""))
    if ip is None:
        lines.append(f"an IP-Adapter: put ip-adapter-faceid-plusv2_sd15.bin in models/ipadapter (get: {H94_FACEID}; "
                     f"research use only) or ip-adapter-plus-face_sd15.safetensors (get: {H94}; Apache-2.0)")
        if not any(f.family == "clip_vision" and f.variant == "ViT-H/14" for f in found):
            lines.append(f"CLIP ViT-H/14 (read by FaceID-PlusV2 and Plus-Face): put {VIT_H_FILE} in "
                         f"models/clip_vision (get: {VIT_H_SOURCE})")
        return lines
    lora = None
    if ip.variant in _LORA_FILE and "LoRA inside" not in ip.note:
        loras = [f for f in found if f.family == "lora" and f.variant == "faceid"]
        lora = next((f for f in loras if f.path.name.lower() == _LORA_FILE[ip.variant]), loras[0] if loras else None)
    clip = next((f for f in found if f.family == "clip_vision" and f.variant == "ViT-H/14"), None) or \
        next((f for f in found if f.family == "clip_vision"), None)
    try:
        check_public_files(ip_adapter=ip.path, ip_lora=lora.path if lora else None,
                           clip_vision=clip.path if clip else None)
    except PublicWeightsError as e:
        lines.append(str(e))
    return lines


def format_public_report(found: list[FoundFile]) -> str:
    out = ["Public SD-1.5 files (zero-shot mode and warm start; an M2H checkpoint needs none of them)", "=" * 20]
    for folder in PUBLIC_FOLDERS:
        mine = [f for f in found if f.folder == folder]
        out.append(f"models/{folder}/: " + ("nothing found" if not mine else f"{len(mine)} file(s)"))
        out += [f"  {f.path.name}: {f.note}" for f in mine]
    needs = zero_shot_needs(found)
    out.append("")
    out.append("zero-shot mode: " + ("all files found" if not needs else "missing or mismatched:"))
    out += [f"  - {n}" for n in needs]
    out.append("licences: IP-Adapter FaceID files and the insightface models are for non-commercial research only; "
               "ip-adapter-plus-face_sd15 is Apache-2.0")
    return "\n".join(out)
