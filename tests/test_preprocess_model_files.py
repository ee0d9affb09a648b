"""Model discovery: explicit path, caller dirs, $M2H_MODELS, recursion, nested packs, clear errors, doctor."""

from __future__ import annotations

import pytest

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
