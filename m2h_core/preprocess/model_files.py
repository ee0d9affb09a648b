"""Model-file discovery for every weight file the pack can use.

Nothing here downloads. A file is searched, in order:

1. the explicit path the caller gave (if it exists);
2. the search dirs given by the caller (the ComfyUI node layer passes ComfyUI's model folders; m2h_core never
   imports ComfyUI) -- each dir itself and ``<dir>/<kind>/``, recursively;
3. the directory (or ``os.pathsep``-separated directories) in the ``M2H_MODELS`` environment variable, the
   same way.

The recursive search copes with the classic ``insightface/models/antelopev2/antelopev2/`` nesting mistake. A
file that is not found raises :class:`MissingModelError` naming the file, where we looked, where to put it and
where users usually get it.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "M2H_MODELS"
MAX_DEPTH = 6  # recursion limit below each search dir


@dataclass(frozen=True)
class ModelSpec:
    """One model the pack can use: accepted file (or folder) names, the folder kind, where to get it."""

    key: str
    kind: str
    filenames: tuple[str, ...]
    description: str
    source: str
    licence: str
    is_dir: bool = False  # a folder (transformers model, insightface pack) rather than one file
    required_files: tuple[str, ...] = ()  # for folders: files that must be inside
    optional: bool = False  # the pack runs without it (another choice exists)


def _spec(*args, **kw) -> ModelSpec:
    return ModelSpec(*args, **kw)


_INSIGHTFACE_LICENCE = "insightface model packs: non-commercial research use only"
_DWPOSE_SRC = "https://huggingface.co/yzd-v/DWPose (also mirrored by comfyui_controlnet_aux under ckpts/)"

#: Every model file the pack knows about. Keys are stable identifiers used by the nodes and ``m2h doctor``.
REGISTRY: tuple[ModelSpec, ...] = (
    _spec("dwpose_det", "dwpose", ("yolox_l.onnx",), "DWPose person detector (YOLOX-L, ONNX)",
          _DWPOSE_SRC, "Apache-2.0 (DWPose / YOLOX)"),
    _spec("dwpose_pose", "dwpose", ("dw-ll_ucoco_384.onnx",), "DWPose 133-keypoint whole-body pose (ONNX)",
          _DWPOSE_SRC, "Apache-2.0 (DWPose)"),
    _spec("segformer_clothes", "human_parsing", ("segformer_b2_clothes",),
          "SegFormer-B2 clothes parser (transformers folder: config.json + weights)",
          "https://huggingface.co/mattmdjaga/segformer_b2_clothes", "MIT (see the model card)",
          is_dir=True, required_files=("config.json",), optional=True),
    _spec("parsing_atr", "human_parsing", ("parsing_atr.onnx",), "SCHP human parsing, ATR 18 labels (ONNX)",
          "https://huggingface.co/levihsu/OOTDiffusion (checkpoints/humanparsing) or yisol/IDM-VTON",
          "SCHP code MIT; these exports ship with OOTDiffusion / IDM-VTON (CC BY-NC-SA 4.0)", optional=True),
    _spec("parsing_lip", "human_parsing", ("parsing_lip.onnx",), "SCHP human parsing, LIP 20 labels (ONNX)",
          "https://huggingface.co/levihsu/OOTDiffusion (checkpoints/humanparsing) or yisol/IDM-VTON",
          "SCHP code MIT; these exports ship with OOTDiffusion / IDM-VTON (CC BY-NC-SA 4.0)", optional=True),
    _spec("insightface_antelopev2", "insightface", ("antelopev2",),
          "insightface antelopev2 pack (SCRFD-10G detector + glintr100 ArcFace)",
          "insightface model zoo (antelopev2.zip; e.g. https://huggingface.co/MonsterMMORPG/tools "
          "or the InstantID instructions); unzip to models/insightface/models/antelopev2/",
          _INSIGHTFACE_LICENCE, is_dir=True, required_files=("scrfd_10g_bnkps.onnx", "glintr100.onnx")),
    _spec("insightface_buffalo_l", "insightface", ("buffalo_l",),
          "insightface buffalo_l pack (det_10g detector + w600k_r50 ArcFace + landmarks)",
          "insightface model zoo (buffalo_l.zip, github.com/deepinsight/insightface/releases); "
          "unzip to models/insightface/models/buffalo_l/",
          _INSIGHTFACE_LICENCE, is_dir=True, required_files=("det_10g.onnx", "w600k_r50.onnx"), optional=True),
    _spec("sd15", "checkpoints",
          ("v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly-fp16.safetensors", "v1-5-pruned.safetensors"),
          "Stable Diffusion 1.5 base checkpoint", "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
          "CreativeML OpenRAIL-M"),
    _spec("clip_vision_vit_l14", "clip_vision",
          ("clip_vision_vit_l14.safetensors", "CLIP-ViT-L-14.safetensors", "clip-vit-large-patch14.safetensors"),
          "CLIP ViT-L/14 image encoder (clothing embedding)", "https://huggingface.co/openai/clip-vit-large-patch14",
          "MIT (OpenAI CLIP)"),
    _spec("animatediff_v2", "animatediff_models",
          ("mm_sd_v15_v2.safetensors", "mm_sd_v15_v2.ckpt", "v3_sd15_mm.safetensors", "v3_sd15_mm.ckpt"),
          "AnimateDiff SD-1.5 motion module (v2 or v3, told apart by its header)",
          "https://huggingface.co/guoyww/animatediff", "Apache-2.0"),
    # public SD-1.5 files for the zero-shot mode and the warm start (`m2h doctor` checks their headers)
    _spec("sd15_inpainting", "checkpoints", ("sd-v1-5-inpainting.ckpt", "sd-v1-5-inpainting.safetensors",
                                             "512-inpainting-ema.safetensors"),
          "Stable Diffusion 1.5 inpainting checkpoint (9-channel UNet; optional inpainting mode / warm start)",
          "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting", "CreativeML OpenRAIL-M",
          optional=True),
    _spec("controlnet_openpose", "controlnet",
          ("control_v11p_sd15_openpose_fp16.safetensors", "control_v11p_sd15_openpose.pth",
           "control_v11p_sd15_openpose.safetensors"),
          "ControlNet 1.1 OpenPose for SD-1.5 (zero-shot mode)",
          "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors or "
          "https://huggingface.co/lllyasviel/ControlNet-v1-1", "OpenRAIL (see the model card)", optional=True),
    _spec("ip_adapter_faceid_plusv2", "ipadapter", ("ip-adapter-faceid-plusv2_sd15.bin",),
          "IP-Adapter FaceID-PlusV2 for SD-1.5 (zero-shot identity; carries its LoRA)",
          "https://huggingface.co/h94/IP-Adapter-FaceID", "non-commercial research use only", optional=True),
    _spec("ip_adapter_faceid", "ipadapter", ("ip-adapter-faceid_sd15.bin",),
          "IP-Adapter FaceID for SD-1.5 (fallback; no CLIP encoder needed)",
          "https://huggingface.co/h94/IP-Adapter-FaceID", "non-commercial research use only", optional=True),
    _spec("ip_adapter_plus_face", "ipadapter", ("ip-adapter-plus-face_sd15.safetensors", "ip-adapter-plus-face_sd15.bin"),
          "IP-Adapter Plus-Face for SD-1.5 (commercial-safe fallback; needs CLIP ViT-H)",
          "https://huggingface.co/h94/IP-Adapter (models/)", "Apache-2.0", optional=True),
    _spec("ip_adapter_faceid_plusv2_lora", "loras", ("ip-adapter-faceid-plusv2_sd15_lora.safetensors",),
          "FaceID-PlusV2 LoRA in kohya keys (needed only where the IP-Adapter file carries none)",
          "https://huggingface.co/h94/IP-Adapter-FaceID", "non-commercial research use only", optional=True),
    _spec("ip_adapter_faceid_lora", "loras", ("ip-adapter-faceid_sd15_lora.safetensors",),
          "FaceID LoRA in kohya keys (needed only where the IP-Adapter file carries none)",
          "https://huggingface.co/h94/IP-Adapter-FaceID", "non-commercial research use only", optional=True),
    _spec("clip_vision_vit_h14", "clip_vision",
          ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision_vit_h.safetensors"),
          "CLIP ViT-H/14 image encoder (SD-1.5 IP-Adapters: FaceID-PlusV2, Plus-Face)",
          "https://huggingface.co/h94/IP-Adapter (models/image_encoder/model.safetensors, renamed)", "MIT",
          optional=True),
    _spec("m2hvideo", "m2hvideo", ("m2hvideo.safetensors", "m2hvideo_sd15.safetensors"),
          "M2HVideo adapter / head encoder / pose guider weights",
          "trained with this pack's train/ scripts (no official weights are public)", "as trained"),
    _spec("vgg16", "vgg", ("vgg16-397923af.pth", "vgg16.safetensors"),
          "torchvision VGG16 ImageNet weights (mirror loss; load with weights_only=True)",
          "https://download.pytorch.org/models/vgg16-397923af.pth", "BSD-3-Clause (torchvision)",
          optional=True),
    _spec("i3d", "i3d", ("i3d_torchscript.pt",), "I3D TorchScript for FVD",
          "common_metrics_on_video_quality / stylegan-v (i3d_torchscript.pt)", "Apache-2.0 / see source",
          optional=True),
)


def get_spec(key: str) -> ModelSpec:
    """The registry entry for ``key`` (KeyError with the known keys otherwise)."""
    for spec in REGISTRY:
        if spec.key == key:
            return spec
    raise KeyError(f"unknown model key {key!r}; known: {', '.join(s.key for s in REGISTRY)}")


def _spec_for(kind: str, name: str) -> ModelSpec | None:
    for spec in REGISTRY:
        if spec.key == name or (spec.kind == kind and name in spec.filenames):
            return spec
    return None


class ModelFileError(ValueError):
    """A model file that exists but cannot be loaded: one line naming it, what it seems to be, and the fix."""


_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"\x1a\x45\xdf\xa3", "a WebM/Matroska video"), (b"PK\x03\x04", "a ZIP archive (e.g. a PyTorch .pt/.ckpt)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (fetch it with git lfs pull)"),
    (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"),
)


def describe_file(path: str | os.PathLike) -> str:
    """What a file seems to be from its first bytes, in words ("an empty file", "an HTML page (...)", ...)."""
    p = Path(path)
    if p.is_dir():
        return "a folder"
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if size == 0:
        return "an empty file (an interrupted download?)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if head[:4] == b"RIFF":
        return {b"WEBP": "a WebP image", b"AVI ": "an AVI video"}.get(head[8:12], "a RIFF file")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return _describe_safetensors(p, size)
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML page, not a model (a download-error or login page?)"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return f"a text file of {size:,} bytes"
    return f"a binary file of {size:,} bytes"


def _describe_safetensors(p: Path, size: int) -> str:
    """A safetensors file, and whether it is shorter than its header says (an interrupted download)."""
    import json

    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if n < (100 << 20) else {}
        end = 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError):
        return f"a safetensors file of {size:,} bytes with an unreadable header"
    if size < end:
        return f"a safetensors file cut short: {size:,} of {end:,} bytes (an interrupted download or copy?)"
    return f"a safetensors file of {size:,} bytes"


def spec_for_file(path: str | os.PathLike) -> ModelSpec | None:
    """The registry entry whose file (or folder) name matches `path`'s name, if any."""
    name = Path(path).name.lower()
    return next((s for s in REGISTRY if name in {n.lower() for n in s.filenames}), None)


class MissingModelError(FileNotFoundError):
    """A model file was not found; the message says what, where we looked, where to put it, where to get it."""

    def __init__(self, names: Sequence[str], kind: str, looked_in: Sequence[str], source: str = "",
                 detail: str = ""):
        self.names = tuple(names)
        self.kind = kind
        self.looked_in = tuple(looked_in)
        self.source = source
        where = "\n".join(f"  - {p}" for p in self.looked_in) or "  (no search folder given and $M2H_MODELS unset)"
        first = self.looked_in[0] if self.looked_in else f"$M2H_MODELS/{kind}"
        put = first if Path(first).name == kind else str(Path(first) / kind)
        msg = (
            f"Model file not found: {' or '.join(repr(n) for n in self.names)} (folder kind '{kind}').\n"
            f"{detail + chr(10) if detail else ''}"
            f"Looked in (recursively):\n{where}\n"
            f"Put it in: {put}/ (ComfyUI: models/{kind}/), or set {ENV_VAR}=/some/dir and use /some/dir/{kind}/.\n"
        )
        if source:
            msg += f"Users usually get it from: {source}\n"
        super().__init__(msg)


def _env_dirs() -> list[Path]:
    raw = os.environ.get(ENV_VAR, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def search_roots(kind: str, search_dirs: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Folders to search for ``kind``: for each caller dir then each ``$M2H_MODELS`` dir, ``<dir>/<kind>`` and
    ``<dir>``; existing ones only, de-duplicated, in order."""
    out: list[Path] = []
    seen: set[str] = set()
    for base in [Path(d).expanduser() for d in (search_dirs or [])] + _env_dirs():
        for cand in (base / kind, base):
            key = os.path.realpath(cand)
            if key not in seen and cand.is_dir():
                seen.add(key)
                out.append(cand)
    return out


def _looked_in(kind: str, search_dirs: Iterable[str | os.PathLike] | None) -> list[str]:
    dirs = [str(Path(d).expanduser()) for d in (search_dirs or [])] + [str(d) for d in _env_dirs()]
    return dirs if dirs else []


def _walk(root: Path, max_depth: int = MAX_DEPTH):
    """Yield (dirpath, dirnames, filenames) breadth-first, following symlinks once, up to ``max_depth``."""
    seen: set[str] = set()
    queue = [(root, 0)]
    while queue:
        cur, depth = queue.pop(0)
        real = os.path.realpath(cur)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(cur))
        except OSError:
            continue
        dirs = sorted(e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))
        files = sorted(e.name for e in entries if e.is_file(follow_symlinks=True))
        yield cur, dirs, files
        if depth < max_depth:
            queue.extend((cur / d, depth + 1) for d in dirs)


def _find_in(roots: Sequence[Path], names: Sequence[str], is_dir: bool,
             required: Sequence[str]) -> Path | None:
    wanted = {n.lower() for n in names}
    for root in roots:
        for cur, dirs, files in _walk(root):
            if is_dir:
                # the folder itself may be what we want (nested-folder mistake: pick the one holding the files)
                if cur.name.lower() in wanted and all((cur / r).is_file() for r in required):
                    return cur
            else:
                for f in files:
                    if f.lower() in wanted:
                        return cur / f
    return None


def find_model_file(kind: str, name_or_path: str | os.PathLike,
                    search_dirs: Iterable[str | os.PathLike] | None = None) -> Path:
    """Find a model file (or a model folder) of folder kind ``kind``.

    ``name_or_path`` is an existing path, a registry key (``'dwpose_det'``) or a file/folder name
    (``'yolox_l.onnx'``, ``'antelopev2'``). Raises :class:`MissingModelError` when nothing matches.
    """
    text = str(name_or_path)
    p = Path(text).expanduser()
    spec = _spec_for(kind, text) or _spec_for(kind, p.name)
    is_dir = spec.is_dir if spec else False
    required = spec.required_files if spec else ()
    if p.exists() and text != (spec.key if spec else None):
        if p.is_dir() and required:
            inner = _find_in([p], [*(spec.filenames if spec else ()), p.name], True, required)
            if inner is not None:
                return inner
            missing = [r for r in required if not any(True for _ in p.rglob(r))]
            raise MissingModelError(missing or list(required), kind, [str(p)], spec.source if spec else "",
                                    detail=f"The folder {p} exists but lacks {', '.join(missing or required)}.")
        return p
    if spec and text == spec.key:
        names = list(spec.filenames)
    elif spec and p.name in spec.filenames:
        names = [p.name] + [n for n in spec.filenames if n != p.name]
    else:
        names = [p.name]
    roots = search_roots(kind, search_dirs)
    found = _find_in(roots, names, is_dir, required)
    if found is not None:
        return found
    detail = ""
    if is_dir and required:
        # a folder with the right name but missing files: name the missing files
        partial = _find_in(roots, names, True, ())
        if partial is not None:
            missing = [r for r in required if not any(True for _ in partial.rglob(r))]
            detail = (f"Found folder {partial} but it lacks {', '.join(missing) or 'the files at the top level'} "
                      f"(needs: {', '.join(required)}).")
    raise MissingModelError(names, kind, _looked_in(kind, search_dirs), spec.source if spec else "", detail)


# ----------------------------------------------------------------------------------------------- onnxruntime


def onnxruntime_distributions() -> list[str]:
    """Installed onnxruntime distributions (``onnxruntime``, ``onnxruntime-gpu``, ...)."""
    names = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
             "onnxruntime-silicon", "onnxruntime-rocm", "onnxruntime-training")
    out = []
    for n in names:
        try:
            out.append(f"{n}=={importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def onnx_providers(device: str | None = None) -> list[str]:
    """Execution providers for ``device`` ('cpu', 'cuda', or None = best available), CPU always last."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device is not None and str(device).startswith("cpu"):
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("CUDAExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider",
                          "DmlExecutionProvider") if p in avail]
    if device is not None and str(device).startswith("cuda"):
        wanted = [p for p in wanted if p == "CUDAExecutionProvider"]
    return wanted + ["CPUExecutionProvider"]


def create_onnx_session(path: str | os.PathLike, providers: Sequence[str] | None = None,
                        threads: int | None = None):
    """An onnxruntime session with sensible CPU threading (intra-op = physical-ish cores, capped at 8)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    n = threads if threads is not None else max(1, min(8, (os.cpu_count() or 2) // 2))
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or onnx_providers()))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise onnx_load_error(path, e) from None


def onnx_load_error(path: str | os.PathLike, err: BaseException) -> ModelFileError:
    """One line for an .onnx file onnxruntime refused: the file, what it seems to be, and the fix."""
    p = Path(path)
    if not p.is_file():
        return ModelFileError(f"{p}: ONNX model not found ({describe_file(p)})")
    spec = spec_for_file(p)
    where = f" from {spec.source}" if spec else ""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = detail.split(" : ")[-1][:160]
    return ModelFileError(f"{p}: not a loadable ONNX model ({describe_file(p)}; onnxruntime: {detail}); "
                          f"delete it and download it again{where}")


# ----------------------------------------------------------------------------------------------- doctor


@dataclass
class DoctorRow:
    """One line of ``m2h doctor``: a registry entry and where (if anywhere) it was found."""

    key: str
    kind: str
    names: tuple[str, ...]
    found: str | None
    optional: bool
    source: str
    licence: str
    note: str = ""
    extra: dict = field(default_factory=dict)


def doctor(search_dirs: Iterable[str | os.PathLike] | None = None) -> list[DoctorRow]:
    """Look for every registry file; never raises."""
    dirs = list(search_dirs or [])
    rows = []
    for spec in REGISTRY:
        found, note = None, ""
        try:
            found = str(find_model_file(spec.kind, spec.key, dirs))
        except MissingModelError as err:
            note = err.args[0].splitlines()[1] if "lacks" in err.args[0] else ""
        rows.append(DoctorRow(spec.key, spec.kind, spec.filenames, found, spec.optional, spec.source,
                              spec.licence, note))
    return rows


def onnxruntime_report() -> list[str]:
    """Lines on the onnxruntime install: version, available providers, double-install warning."""
    lines = []
    try:
        import onnxruntime as ort

        lines.append(f"onnxruntime {ort.__version__}; available providers: {', '.join(ort.get_available_providers())}")
        lines.append(f"providers the pack will use: {', '.join(onnx_providers())}")
    except Exception as err:  # noqa: BLE001 - report, don't crash the doctor
        lines.append(f"onnxruntime not importable: {err!r}")
    dists = onnxruntime_distributions()
    if dists:
        lines.append(f"installed: {', '.join(dists)}")
    if len(dists) > 1:
        lines.append("WARNING: more than one onnxruntime distribution is installed; they overwrite each other "
                     "and the GPU provider may silently vanish. Uninstall all of them and reinstall exactly one "
                     "(onnxruntime-gpu for NVIDIA GPUs, onnxruntime otherwise).")
    return lines


def format_doctor(rows: Sequence[DoctorRow]) -> str:
    """Human-readable table of ``doctor`` rows plus the onnxruntime report."""
    out = ["M2HVideo model files", "=" * 20]
    for r in rows:
        status = "OK     " if r.found else ("missing" if not r.optional else "absent ")
        out.append(f"[{status}] {r.key:24s} {r.kind + '/':20s} {' | '.join(r.names)}")
        if r.found:
            out.append(f"          -> {r.found}")
        else:
            if r.note:
                out.append(f"          {r.note}")
            out.append(f"          get: {r.source}")
        out.append(f"          licence: {r.licence}")
    missing = [r.key for r in rows if not r.found and not r.optional]
    out.append("")
    out.append(f"required but missing: {', '.join(missing) if missing else 'none'}")
    out.append("")
    out.extend(onnxruntime_report())
    return "\n".join(out)
