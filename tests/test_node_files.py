"""nodes/files.py name resolution: a model name from a node input resolves only inside its kind's folders.

Runs without ComfyUI: a small stand-in `folder_paths` module (the host's registry of model folders, with its
documented lookup: a name is joined under each registered folder after dropping leading '/' and '..') is put in
sys.modules; the code under test (files.resolve / check_name) is the pack's own.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from nodes import files


def _stand_in_folder_paths(models: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models)
    fp.supported_pt_extensions = {".safetensors", ".ckpt", ".pt", ".pth", ".bin"}
    fp.folder_names_and_paths = {k: ([str(models / k)], fp.supported_pt_extensions)
                                 for k in ("checkpoints", "clip_vision", "diffusers", "custom_nodes")}

    def get_folder_paths(key):
        return fp.folder_names_and_paths[key][0][:]

    def get_full_path(key, name):
        if key not in fp.folder_names_and_paths:
            return None
        name = os.path.relpath(os.path.join("/", name), "/")
        for root in fp.folder_names_and_paths[key][0]:
            p = os.path.join(root, name)
            if os.path.isfile(p):
                return p
        return None

    def get_filename_list(key):
        roots, exts = fp.folder_names_and_paths[key]
        out = []
        for root in roots:
            for cur, _, names in os.walk(root, followlinks=True):
                for n in names:
                    if not exts or os.path.splitext(n)[1].lower() in exts:
                        out.append(os.path.relpath(os.path.join(cur, n), root).replace(os.sep, "/"))
        return sorted(out)

    fp.get_folder_paths, fp.get_full_path, fp.get_filename_list = get_folder_paths, get_full_path, get_filename_list
    return fp


@pytest.fixture
def models(tmp_path, monkeypatch):
    models = tmp_path / "ComfyUI" / "models"
    (models / "m2hvideo" / "sub").mkdir(parents=True)
    (models / "m2hvideo" / "m2h.safetensors").write_bytes(b"x")
    (models / "m2hvideo" / "sub" / "other.safetensors").write_bytes(b"x")
    (models / "dwpose").mkdir()
    (models / "dwpose" / "yolox_l.onnx").write_bytes(b"x")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "sd15.safetensors").write_bytes(b"x")
    (models / "diffusers" / "sd15" ).mkdir(parents=True)
    (models / "diffusers" / "sd15" / "model_index.json").write_text("{}")
    (models / "clip_vision").mkdir()
    (tmp_path / "ComfyUI" / "secret.safetensors").write_bytes(b"x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "folder_paths", _stand_in_folder_paths(models))
    monkeypatch.delenv("M2H_MODELS", raising=False)
    files.register_folders()
    return models


def test_names_inside_the_folders_resolve(models):
    assert files.resolve("m2hvideo", "m2h.safetensors") == str(models / "m2hvideo" / "m2h.safetensors")
    assert files.resolve("m2hvideo", "sub/other.safetensors") == str(models / "m2hvideo" / "sub" / "other.safetensors")
    assert files.resolve("dwpose", "yolox_l.onnx") == str(models / "dwpose" / "yolox_l.onnx")
    assert files.resolve("base", "sd15.safetensors") == str(models / "checkpoints" / "sd15.safetensors")
    assert files.resolve("base", "diffusers/sd15") == str(models / "diffusers" / "sd15")


TRAVERSAL = ["/etc/passwd", "../secret.safetensors", "../../outside.safetensors", "sub/../../secret.safetensors",
             "..\\secret.safetensors", "C:\\Windows\\win.ini", "~/x.safetensors", "", "a\x00b.safetensors"]


@pytest.mark.parametrize("key", ["m2hvideo", "dwpose", "human_parsing", "insightface", "animatediff_models",
                                 "clip_vision", "base"])
@pytest.mark.parametrize("name", TRAVERSAL)
def test_traversal_names_are_refused_for_every_kind(models, key, name):
    with pytest.raises(files.ModelNameError, match="is not in models/"):
        files.resolve(key, name)


def test_diffusers_traversal_is_refused(models):
    with pytest.raises(files.ModelNameError, match="not in models/"):
        files.resolve("base", "diffusers/../../../../etc")
    with pytest.raises(files.ModelNameError, match="not in models/"):
        files.resolve("base", "diffusers/../checkpoints")


def test_the_message_lists_what_is_there(models):
    with pytest.raises(files.ModelNameError) as e:
        files.resolve("m2hvideo", "../../outside.safetensors")
    msg = str(e.value)
    assert "models/m2hvideo" in msg and "m2h.safetensors" in msg and "sub/other.safetensors" in msg


def test_a_symlink_inside_the_folder_is_followed_as_comfyui_does(models, tmp_path):
    target = tmp_path / "elsewhere" / "linked.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"x")
    os.symlink(target, models / "m2hvideo" / "linked.safetensors")
    assert files.resolve("m2hvideo", "linked.safetensors") == str(models / "m2hvideo" / "linked.safetensors")


def test_missing_names_say_where_to_put_them(models):
    from m2h_core.preprocess.model_files import MissingModelError

    with pytest.raises(MissingModelError):
        files.resolve("m2hvideo", "absent.safetensors")


def test_check_name_keeps_plain_names():
    assert files.check_name("insightface", "antelopev2") == "antelopev2"
    assert files.check_name("human_parsing", "segformer_b2_clothes") == "segformer_b2_clothes"


def test_ipadapter_folder_and_public_file_dropdowns(models):
    """The pack registers models/ipadapter (ComfyUI_IPAdapter_plus's folder); the public files' dropdowns list
    ComfyUI's controlnet / loras folders too."""
    import folder_paths

    assert "ipadapter" in folder_paths.folder_names_and_paths
    (models / "ipadapter").mkdir()
    (models / "ipadapter" / "ip-adapter-faceid-plusv2_sd15.bin").write_bytes(b"x")
    folder_paths.folder_names_and_paths["controlnet"] = ([str(models / "controlnet")], {".safetensors", ".pth"})
    (models / "controlnet").mkdir()
    (models / "controlnet" / "control_v11p_sd15_openpose_fp16.safetensors").write_bytes(b"x")
    assert files.options("ipadapter") == ["ip-adapter-faceid-plusv2_sd15.bin"]
    assert files.options("controlnet") == [files.NONE, "control_v11p_sd15_openpose_fp16.safetensors"]
    assert files.options("loras") == ["auto", files.NONE]  # not registered in this stand-in: no files, no error
    assert files.resolve("ipadapter", "ip-adapter-faceid-plusv2_sd15.bin") == str(
        models / "ipadapter" / "ip-adapter-faceid-plusv2_sd15.bin")
    with pytest.raises(files.ModelNameError, match="is not in models/ipadapter"):
        files.resolve("ipadapter", "../checkpoints/sd15.safetensors")
