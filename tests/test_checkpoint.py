"""The M2H checkpoint format: bit-exact round trip and one clear `CheckpointError` per kind of bad file."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from m2h_core.checkpoint import (
    FORMAT_VERSION,
    PARTS,
    CheckpointError,
    load_checkpoint,
    read_config,
    read_metadata,
    save_checkpoint,
)
from m2h_core.config import M2HConfig, sd15, tiny
from tests.fixtures import write_m2h_checkpoint, write_sd15_single_file



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m2h_tiny.safetensors"
    model = write_m2h_checkpoint(path, tiny(), seed=3, extra={"step": 1200, "note": "test run"})
    return path, model


def _rewrite(src, dst, tensors=None, **meta_changes):
    """Copy a checkpoint with some tensors and metadata entries replaced (None deletes an entry)."""
    sd = load_file(str(src)) if tensors is None else tensors
    meta = dict(read_metadata(src))
    for k, v in meta_changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file(sd, str(dst), metadata=meta)
    return dst


def test_round_trip_is_bit_exact(saved):
    path, model = saved
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.cfg.to_json() == model.cfg.to_json()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert not loaded.training
    meta = read_metadata(path)
    assert meta["format"] == "m2hvideo" and meta["format_version"] == FORMAT_VERSION
    assert meta["base_model"] == "tiny" and json.loads(meta["step"]) == 1200 and meta["note"] == "test run"
    assert read_config(path) == model.cfg
    with safe_open(str(path), framework="pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == set(PARTS)
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]  # atomic write left nothing behind


def test_round_trip_of_ablation_config_and_half_precision(tmp_path):
    cfg = tiny()
    cfg.use_head_encoder, cfg.use_motion = False, False
    cfg.adapter.normalize = False
    model = write_m2h_checkpoint(tmp_path / "a.safetensors", cfg, seed=4)
    loaded = load_checkpoint(tmp_path / "a.safetensors", expect_base="tiny")
    assert loaded.cfg == cfg and not loaded.head_encoder.fuse
    assert not any("motion_modules" in k for k in loaded.state_dict())
    save_checkpoint(model, tmp_path / "h.safetensors", dtype=torch.float16)
    with safe_open(str(tmp_path / "h.safetensors"), framework="pt") as f:
        assert f.get_tensor("pose_encoder.to_input.weight").dtype == torch.float16
    half = load_checkpoint(tmp_path / "h.safetensors", dtype=torch.float16)
    w = half.state_dict()["pose_encoder.to_input.weight"]
    assert w.dtype == torch.float16 and torch.equal(w, model.state_dict()["pose_encoder.to_input.weight"].half())


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_random_bytes(tmp_path):
    p = tmp_path / "random.safetensors"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="random.safetensors is not a readable .safetensors file"):
        load_checkpoint(p)


def test_pickle_file(tmp_path, saved):
    p = tmp_path / "pickled.safetensors"
    torch.save(saved[1].state_dict(), p)
    with pytest.raises(CheckpointError, match="pickled.safetensors is not a readable .safetensors file"):
        load_checkpoint(p)
    p2 = tmp_path / "plain.safetensors"
    p2.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a readable .safetensors file"):
        load_checkpoint(p2)


@pytest.mark.parametrize("keep", [0.5, 0.999, 12, 3])
def test_truncated_file(tmp_path, saved, keep):
    data = saved[0].read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"cut.safetensors is not a readable .safetensors file \((a "
                                              r"safetensors file cut short|a binary file)"):
        load_checkpoint(p)


def test_stable_diffusion_checkpoint_given_as_m2h(tmp_path):
    p = tmp_path / "v1-5-like.safetensors"
    write_sd15_single_file(p, tiny(), seed=0)
    with pytest.raises(CheckpointError, match="not an M2HVideo checkpoint.*select it as the base model"):
        load_checkpoint(p)


def test_missing_part(tmp_path, saved):
    sd = {k: v for k, v in load_file(str(saved[0])).items() if not k.startswith("head_encoder.")}
    p = _rewrite(saved[0], tmp_path / "no_head.safetensors", sd)
    with pytest.raises(CheckpointError, match="no_head.safetensors has no weights for head_encoder; it is incomplete"):
        load_checkpoint(p)


def test_missing_single_tensor(tmp_path, saved):
    sd = load_file(str(saved[0]))
    del sd["id_encoder.to_latent.bias"]
    sd["unet.extra.weight"] = torch.zeros(1)
    p = _rewrite(saved[0], tmp_path / "holey.safetensors", sd)
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. \['id_encoder.to_latent.bias'\]\).*1 unexpected"):
        load_checkpoint(p)


def test_config_does_not_match_weights(tmp_path, saved):
    cfg = tiny()
    cfg.head.dim = 48  # H's width in the metadata no longer matches the stored tensors
    p = _rewrite(saved[0], tmp_path / "wrong_cfg.safetensors", config=cfg.to_json())
    with pytest.raises(CheckpointError,
                       match=r"does not match its own config: .* of another shape \(e.g. \['head_encoder"):
        load_checkpoint(p)


def test_unreadable_config(tmp_path, saved):
    p = _rewrite(saved[0], tmp_path / "bad_json.safetensors", config="{not json")
    with pytest.raises(CheckpointError, match="its model config can't be read"):
        load_checkpoint(p)
    p = _rewrite(saved[0], tmp_path / "future.safetensors",
                 config=json.dumps({**json.loads(tiny().to_json()), "new_feature": 1}))
    with pytest.raises(CheckpointError, match="unknown M2H config keys"):
        load_checkpoint(p)
    newer = json.loads(tiny().to_json())
    newer["head"]["gated"] = True
    p = _rewrite(saved[0], tmp_path / "future_sub.safetensors", config=json.dumps(newer))
    with pytest.raises(CheckpointError, match=r"unknown M2H config keys \['head.gated'\]"):
        load_checkpoint(p)
    p = _rewrite(saved[0], tmp_path / "no_cfg.safetensors", config=None)
    with pytest.raises(CheckpointError, match="its model config can't be read"):
        load_checkpoint(p)


def test_nan_weights(tmp_path, saved):
    sd = load_file(str(saved[0]))
    k = next(k for k in sd if k.startswith("unet.") and "attn2.processor.to_k_id" in k)
    sd[k][0, 0] = float("nan")
    p = _rewrite(saved[0], tmp_path / "nan.safetensors", sd)
    with pytest.raises(CheckpointError, match=f"nan.safetensors: tensor {k} contains NaN/inf"):
        load_checkpoint(p)


def test_format_version_mismatch(tmp_path, saved):
    p = _rewrite(saved[0], tmp_path / "v2.safetensors", format_version="2")
    with pytest.raises(CheckpointError, match="has M2H format version 2; this version of the pack reads version 1"):
        load_checkpoint(p)
    p = _rewrite(saved[0], tmp_path / "noversion.safetensors", format_version=None)
    with pytest.raises(CheckpointError, match="format version None"):
        load_checkpoint(p)


def test_expect_base_mismatch(saved):
    with pytest.raises(CheckpointError, match="trained on base model 'tiny', not 'sd15'"):
        load_checkpoint(saved[0], expect_base="sd15")
    assert load_checkpoint(saved[0], expect_base="tiny").cfg.base_model == "tiny"


def test_config_json_round_trip():
    for cfg in (tiny(), M2HConfig()):
        assert M2HConfig.from_json(cfg.to_json()) == cfg


def test_config_without_identity_input_loads_as_full_image_and_presets_use_head():
    """Checkpoints written before `identity_input` existed were trained on whole x_id images: they must load as
    "full"; the presets train head-only; a typo is refused."""
    d = json.loads(tiny().to_json())
    del d["identity_input"]
    assert M2HConfig.from_dict(d).identity_input == "full"
    assert tiny().identity_input == "head" and sd15().identity_input == "head"
    with pytest.raises(ValueError, match="identity_input"):
        M2HConfig(identity_input="face")


def test_written_files_are_readable_by_others_as_with_open(tmp_path):
    """mkstemp makes 0600 files; a checkpoint must get open()'s 0666 & ~umask so another user (a ComfyUI service)
    can read it."""
    import os
    import stat

    from m2h_core.checkpoint import atomic_save_file

    old = os.umask(0o022)
    try:
        atomic_save_file({"x": torch.zeros(1)}, tmp_path / "a.safetensors", {"format": "test"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
