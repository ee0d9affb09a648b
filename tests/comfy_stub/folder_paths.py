"""Stand-in of ComfyUI's folder_paths: the registry of model folders (names -> ([folders], {extensions}))."""

from __future__ import annotations

import os
import tempfile

models_dir = os.path.join(tempfile.gettempdir(), f"m2h_comfy_stub_models_{os.getpid()}")
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    k: ([os.path.join(models_dir, k)], set(supported_pt_extensions))
    for k in ("checkpoints", "vae", "clip_vision", "diffusers", "animatediff_models")
}
folder_names_and_paths["custom_nodes"] = ([], set())


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path in paths:
        paths.remove(full_folder_path)
    paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def _allowed(name: str, exts: set[str]) -> bool:
    return not exts or os.path.splitext(name)[1].lower() in exts


def get_filename_list(folder_name: str) -> list[str]:
    paths, exts = folder_names_and_paths[folder_name]
    out = set()
    for root in paths:
        for cur, _, names in os.walk(root, followlinks=True):
            out |= {os.path.relpath(os.path.join(cur, n), root).replace(os.sep, "/") for n in names
                    if _allowed(n, exts)}
    return sorted(out)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        path = os.path.join(root, filename)
        if os.path.isfile(path):
            return path
    return None
