"""Model folders, file lists for the node dropdowns, and path resolution inside ComfyUI.

Folders the pack adds under ComfyUI/models (also settable in extra_model_paths.yaml under the same keys):
  m2hvideo/            M2HVideo checkpoints (.safetensors)
  animatediff_models/  AnimateDiff motion modules (shared with AnimateDiff-Evolved)
  dwpose/              yolox_l.onnx, dw-ll_ucoco_384.onnx
  human_parsing/       segformer_b2_clothes/ (folder), parsing_atr.onnx, parsing_lip.onnx
  insightface/         models/antelopev2/ or models/buffalo_l/ (shared with IPAdapter / InstantID / PuLID)
  ipadapter/           IP-Adapter files, .bin or .safetensors (shared with ComfyUI_IPAdapter_plus)
The public SD-1.5 files also come from ComfyUI's own checkpoints/, controlnet/, loras/ and clip_vision/.
`folder_paths` is imported inside the functions, so this module imports without ComfyUI.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("M2HVideo")

ONNX = {".onnx"}
# folder key -> (sub-folder of models/, extensions; None = ComfyUI's supported_pt_extensions)
FOLDERS = {
    "m2hvideo": ("m2hvideo", None),
    "animatediff_models": ("animatediff_models", None),
    "dwpose": ("dwpose", ONNX),
    "human_parsing": ("human_parsing", ONNX | {".safetensors", ".json"}),
    "insightface": ("insightface", ONNX),
    "ipadapter": ("ipadapter", None),  # IP-Adapter files (shared with ComfyUI_IPAdapter_plus)
}

# Names always offered (so a shared workflow validates, and running it says where to get a missing file).
CANONICAL = {
    "dwpose_det": ("yolox_l.onnx",),
    "dwpose_pose": ("dw-ll_ucoco_384.onnx",),
    "human_parsing": ("auto", "segformer_b2_clothes", "parsing_atr.onnx", "parsing_lip.onnx"),
    "insightface": ("antelopev2", "buffalo_l"),
    "m2hvideo": ("m2hvideo_sd15.safetensors",),
}
NONE = "none"
DIFFUSERS_PREFIX = "diffusers/"
# dropdowns of the public SD-1.5 files (zero-shot mode): ComfyUI's own folders plus the pack's `ipadapter`
PUBLIC_SOURCES = ("ipadapter", "controlnet", "loras")


def register_folders() -> None:
    """Add the pack's model folders to ComfyUI's folder_paths (idempotent; keeps paths others added)."""
    import folder_paths

    for key, (sub, exts) in FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, sub)
        exts = set(folder_paths.supported_pt_extensions) if exts is None else set(exts)
        if key in folder_paths.folder_names_and_paths:
            paths, old = folder_paths.folder_names_and_paths[key]
            if path not in paths:
                paths.append(path)
            if old:  # an empty set means "any extension": leave it
                folder_paths.folder_names_and_paths[key] = (paths, set(old) | exts)
        else:
            folder_paths.folder_names_and_paths[key] = ([path], exts)


def folder_dirs(key: str) -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(key)
    except KeyError:
        return []


def search_dirs(key: str) -> list[str]:
    """Folders m2h_core's find_model_file searches for ``key`` (it also looks in <dir>/<key>/, recursively)."""
    import folder_paths

    dirs = folder_dirs(key) + [folder_paths.models_dir]
    if key == "dwpose":  # comfyui_controlnet_aux keeps its DWPose files in its own ckpts/ folder
        for cn in folder_dirs("custom_nodes"):
            aux = os.path.join(cn, "comfyui_controlnet_aux", "ckpts")
            if os.path.isdir(aux):
                dirs.append(aux)
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _files(key: str, exts: set[str] | None = None) -> list[str]:
    import folder_paths

    try:
        names = folder_paths.get_filename_list(key)
    except KeyError:
        return []
    if exts:
        names = [n for n in names if os.path.splitext(n)[1].lower() in exts]
    return names


def _dirs_with(key: str, marker: str | tuple[str, ...]) -> list[str]:
    """Sub-folders (relative, '/'-separated) of the key's folders that hold ``marker`` file(s)."""
    markers = (marker,) if isinstance(marker, str) else marker
    out = []
    for root in folder_dirs(key):
        rootp = Path(root)
        if not rootp.is_dir():
            continue
        for cur, dirs, files in os.walk(rootp, followlinks=True):
            depth = len(Path(cur).relative_to(rootp).parts)
            if depth >= 4:
                dirs[:] = []
            if Path(cur) != rootp and all(m in files for m in markers):
                out.append(Path(cur).relative_to(rootp).as_posix())
    return sorted(set(out))


def options(source: str) -> list[str]:
    """The dropdown list for a spec ``options_source``."""
    try:
        if source == "human_parsing":
            found = _files("human_parsing", ONNX) + _dirs_with("human_parsing", "config.json")
        elif source in ("dwpose_det", "dwpose_pose"):
            found = _files("dwpose", ONNX)
        elif source == "insightface":
            found = sorted({Path(d).name for d in _dirs_with("insightface", ()) if
                            any(f.endswith(".onnx") for f in _list(d))})
        elif source == "m2hvideo":
            found = _files("m2hvideo")
        elif source == "base":
            found = [NONE] + _files("checkpoints") + [DIFFUSERS_PREFIX + d for d in _dirs_with("diffusers",
                                                                                             "model_index.json")]
        elif source in ("clip_vision", "animatediff_models"):
            found = [NONE] + _files(source)
        elif source in ("controlnet", "ipadapter", "loras"):  # the zero-shot loader's public files
            found = {"controlnet": [NONE], "loras": ["auto", NONE]}.get(source, []) + _files(source)
        else:
            raise KeyError(source)
    except Exception as err:  # noqa: BLE001 - a broken folder must not break the node list
        log.warning("M2HVideo: could not list %s: %s", source, err)
        found = [NONE] if source in ("base", "clip_vision", "animatediff_models") else []
    canon = CANONICAL.get(source, ())
    return list(dict.fromkeys([*canon[:1], *found, *canon[1:]])) if canon else list(dict.fromkeys(found))


def _list(rel: str) -> list[str]:
    for root in folder_dirs("insightface"):
        p = Path(root) / rel
        if p.is_dir():
            return [f.name for f in p.iterdir()]
    return []


class ModelNameError(ValueError):
    """A model name from a node input that does not name a file inside the kind's registered folders."""


def _parts(name: str) -> list[str]:
    return [q for q in re.split(r"[\\/]+", name) if q not in ("", ".")]


def check_name(key: str, name: str) -> str:
    """Refuse names that could leave the kind's folders (ComfyUI's folder_paths semantics): absolute paths, drive
    letters, home folders, '..' parts, NUL. Returns the name unchanged."""
    text = str(name)
    if (not text.strip() or "\x00" in text or os.path.isabs(text) or text.startswith(("/", "\\", "~"))
            or re.match(r"^[A-Za-z]:", text) or ".." in _parts(text)):
        raise ModelNameError(not_in_message(key, text))
    return text


def allowed_roots(folder: str) -> list[str]:
    """The folders a name of this kind may resolve into: the registered ones, models/<folder>, and for dwpose
    comfyui_controlnet_aux's ckpts/ (symlinks inside them are followed, as ComfyUI does)."""
    import folder_paths

    roots = folder_dirs(folder) + [os.path.join(folder_paths.models_dir, folder)]
    if folder == "dwpose":
        roots += [os.path.join(cn, "comfyui_controlnet_aux", "ckpts") for cn in folder_dirs("custom_nodes")]
    return list(dict.fromkeys(os.path.abspath(r) for r in roots))


def inside(path: str | os.PathLike, roots: list[str]) -> bool:
    """Whether ``path`` lies (lexically, symlinks not resolved) inside one of ``roots``."""
    ap = os.path.abspath(path)
    return any(os.path.commonpath([ap, r]) == r for r in roots if os.path.splitdrive(ap)[0] == os.path.splitdrive(r)[0])


def not_in_message(key: str, name: str) -> str:
    folder = "checkpoints" if key == "base" else key
    source = {"dwpose": "dwpose_det"}.get(key, key)
    try:
        there = [n for n in options(source) if n != NONE] if source in ("m2hvideo", "base", "clip_vision",
                                                                         "animatediff_models", "human_parsing",
                                                                         "insightface", "dwpose_det",
                                                                         *PUBLIC_SOURCES) else []
    except Exception:  # noqa: BLE001 - the message must not fail
        there = []
    listing = ", ".join(there[:20]) + (f" (+{len(there) - 20} more)" if len(there) > 20 else "") if there else \
        "nothing yet"
    return (f"{name!r} is not in models/{folder}: give the name of a file in ComfyUI/models/{folder}/ (or a folder "
            f"registered for '{folder}' in extra_model_paths.yaml), as the dropdown lists them. There: {listing}.")


def resolve(key: str, name: str) -> str:
    """Absolute path of a dropdown value, only ever inside the kind's registered folders: ComfyUI's folder
    lookup, else m2h_core's recursive search of those folders (MissingModelError names the file, where it looked
    and where to get it). Traversal names, absolute paths and anything found outside raise ModelNameError."""
    import folder_paths

    from m2h_core.preprocess.model_files import find_model_file

    check_name(key, name)
    if key == "base" and name.startswith(DIFFUSERS_PREFIX):
        roots = allowed_roots("diffusers")
        for root in folder_dirs("diffusers"):
            p = os.path.join(root, name[len(DIFFUSERS_PREFIX):])
            if os.path.isdir(p) and inside(p, roots):
                return p
        raise ModelNameError(f"{name!r} is not in models/diffusers: no such folder in {folder_dirs('diffusers')}")
    folder = "checkpoints" if key == "base" else key
    roots = allowed_roots(folder)
    try:
        p = folder_paths.get_full_path(folder, name)
    except KeyError:
        p = None
    if p and inside(p, roots):
        return p
    for root in folder_dirs(folder):
        cand = os.path.join(root, name)
        if os.path.exists(cand) and inside(cand, roots):
            return cand
    found = str(find_model_file(folder, name, [r for r in roots if os.path.isdir(r)]))
    if not inside(found, roots):
        raise ModelNameError(not_in_message(key, name))
    return found
