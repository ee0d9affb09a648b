"""Model folders, file lists for the node dropdowns, and path resolution inside ComfyUI.

Folders the pack adds under ComfyUI/models (also settable in extra_model_paths.yaml under the same keys):
  m2hvideo/            M2HVideo checkpoints (.safetensors)
  animatediff_models/  AnimateDiff motion modules (shared with AnimateDiff-Evolved)
  dwpose/              yolox_l.onnx, dw-ll_ucoco_384.onnx
  human_parsing/       segformer_b2_clothes/ (folder), parsing_atr.onnx, parsing_lip.onnx
  insightface/         models/antelopev2/ or models/buffalo_l/ (shared with IPAdapter / InstantID / PuLID)
`folder_paths` is imported inside the functions, so this module imports without ComfyUI.
"""

from __future__ import annotations

import logging
import os
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
}

# Names always offered (so a shared workflow validates, and running it says where to get a missing file).
CANONICAL = {
    "dwpose_det": ("yolox_l.onnx",),
    "dwpose_pose": ("dw-ll_ucoco_384.onnx",),
    "human_parsing": ("auto", "segformer_b2_clothes", "parsing_atr.onnx", "parsing_lip.onnx"),
    "insightface": ("antelopev2", "buffalo_l"),
    "m2hvideo": ("m2hvideo.safetensors",),
}
NONE = "none"
DIFFUSERS_PREFIX = "diffusers/"


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


def resolve(key: str, name: str) -> str:
    """Absolute path of a dropdown value: ComfyUI's folder lookup, else m2h_core's recursive search (which
    raises MissingModelError naming the file, where it looked and where to get it)."""
    import folder_paths

    from m2h_core.preprocess.model_files import find_model_file

    if key == "base" and name.startswith(DIFFUSERS_PREFIX):
        for root in folder_dirs("diffusers"):
            p = os.path.join(root, name[len(DIFFUSERS_PREFIX):])
            if os.path.isdir(p):
                return p
        raise FileNotFoundError(f"diffusers folder {name!r} not found in {folder_dirs('diffusers')}")
    folder = "checkpoints" if key == "base" else key
    try:
        p = folder_paths.get_full_path(folder, name)
    except KeyError:
        p = None
    if p:
        return p
    for root in folder_dirs(folder):
        cand = os.path.join(root, name)
        if os.path.exists(cand):
            return cand
    return str(find_model_file(folder, name, search_dirs(folder)))
