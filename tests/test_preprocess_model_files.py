"""Model discovery: explicit path, caller dirs, $M2H_MODELS, recursion, nested packs, clear errors, doctor."""

from __future__ import annotations

import pytest
import torch

from m2h_core.preprocess import model_files as mf
from m2h_core.preprocess.model_files import MissingModelError, doctor, find_model_file, format_doctor


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_explicit_path_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    f = _touch(tmp_path / "elsewhere" / "my_det.onnx")
    assert find_model_file("dwpose", str(f)) == f


def test_search_dirs_kind_subfolder_and_recursive(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    f = _touch(tmp_path / "comfy" / "models" / "dwpose" / "sub" / "yolox_l.onnx")
    assert find_model_file("dwpose", "yolox_l.onnx", [tmp_path / "comfy" / "models"]) == f
    assert find_model_file("dwpose", "dwpose_det", [tmp_path / "comfy" / "models"]) == f  # registry key


def test_env_dir_used_after_search_dirs(tmp_path, monkeypatch):
    env = tmp_path / "env"
    f_env = _touch(env / "dwpose" / "dw-ll_ucoco_384.onnx")
    monkeypatch.setenv(mf.ENV_VAR, str(env))
    assert find_model_file("dwpose", "dw-ll_ucoco_384.onnx") == f_env
    f_first = _touch(tmp_path / "first" / "dw-ll_ucoco_384.onnx")
    assert find_model_file("dwpose", "dw-ll_ucoco_384.onnx", [tmp_path / "first"]) == f_first


def test_nested_insightface_pack_found(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    inner = tmp_path / "insightface" / "models" / "antelopev2" / "antelopev2"
    for n in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        _touch(inner / n)
    assert find_model_file("insightface", "antelopev2", [tmp_path]) == inner
    # the outer folder given explicitly also resolves to the inner one
    assert find_model_file("insightface", str(inner.parent), [tmp_path]) == inner


def test_missing_file_message_names_file_place_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    with pytest.raises(MissingModelError) as ei:
        find_model_file("dwpose", "yolox_l.onnx", [tmp_path])
    msg = str(ei.value)
    assert "yolox_l.onnx" in msg and str(tmp_path) in msg
    assert "dwpose" in msg and "huggingface.co/yzd-v/DWPose" in msg
    assert isinstance(ei.value, FileNotFoundError)


def test_pack_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    _touch(tmp_path / "insightface" / "models" / "antelopev2" / "scrfd_10g_bnkps.onnx")
    with pytest.raises(MissingModelError, match="glintr100.onnx"):
        find_model_file("insightface", "antelopev2", [tmp_path])


def test_doctor_lists_every_file(tmp_path, monkeypatch):
    monkeypatch.delenv(mf.ENV_VAR, raising=False)
    _touch(tmp_path / "dwpose" / "yolox_l.onnx")
    rows = doctor([tmp_path])
    assert {r.key for r in rows} == {s.key for s in mf.REGISTRY}
    by = {r.key: r for r in rows}
    assert by["dwpose_det"].found and not by["dwpose_pose"].found
    text = format_doctor(rows)
    assert "dw-ll_ucoco_384.onnx" in text and "onnxruntime" in text and "CPUExecutionProvider" in text
    assert "non-commercial" in text


def test_double_onnxruntime_install_warns(monkeypatch):
    monkeypatch.setattr(mf, "onnxruntime_distributions", lambda: ["onnxruntime==1", "onnxruntime-gpu==1"])
    assert any("WARNING" in line for line in mf.onnxruntime_report())


def test_providers_cpu_last():
    assert mf.onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert mf.onnx_providers()[-1] == "CPUExecutionProvider"


def test_describe_file_says_what_a_broken_download_is(tmp_path):
    from m2h_core.preprocess.model_files import describe_file

    cases = {"empty.onnx": b"", "lfs.onnx": b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n",
             "page.safetensors": b"<!DOCTYPE html><html><body>Sign in</body></html>",
             "image.mp4": b"\x89PNG\r\n\x1a\n" + b"\0" * 16, "pickle.ckpt": b"\x80\x04\x95" + b"\0" * 16}
    expect = {"empty.onnx": "empty file", "lfs.onnx": "Git LFS pointer", "page.safetensors": "HTML page",
              "image.mp4": "PNG image", "pickle.ckpt": "pickle"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert expect[name] in describe_file(tmp_path / name), name
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1000)}, str(tmp_path / "w.safetensors"))
    whole = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    assert "cut short" in describe_file(tmp_path / "cut.safetensors")
    assert "cut short" not in describe_file(tmp_path / "w.safetensors")


def test_a_corrupt_onnx_file_gives_one_line_with_the_file_and_the_fix(tmp_path):
    from m2h_core.preprocess.model_files import ModelFileError, create_onnx_session

    bad = tmp_path / "dw-ll_ucoco_384.onnx"
    bad.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(ModelFileError, match=r"dw-ll_ucoco_384.onnx: not a loadable ONNX model .* download it again "
                                             r"from https://huggingface.co/yzd-v/DWPose") as info:
        create_onnx_session(bad, ["CPUExecutionProvider"])
    assert "\n" not in str(info.value)
