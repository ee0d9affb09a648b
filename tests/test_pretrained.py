"""The shipped pretrained tiny M2H model (`m2h_core.demo.pretrained`, issue 12): it loads, reproduces the held-out
figures recorded in its metadata, and bad files give errors that say how to re-make it."""

from __future__ import annotations

import pytest
import torch

from m2h_core.demo.evaluation import score_heldout
from m2h_core.demo.pretrained import FORMAT_TAG, SHIPPED_M2H, load_pretrained

FIGURES = ("clothing_psnr", "clothing_ssim", "head_psnr", "background_psnr")


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained(SHIPPED_M2H)


def test_shipped_model_is_the_demo_model_with_its_encoders(shipped):
    model, encoders, meta = shipped
    assert meta["demo"] == FORMAT_TAG and meta["train_steps"] >= 1000
    assert model.cfg.clothing_skip and model.cfg.prediction_type == "sample"
    from m2h_core.demo.recipe import DemoSettings

    assert model.cfg.clothing_fill == DemoSettings().clothing_fill == "backdrop"  # told the scene's backdrop colour
    assert not model.training
    # the embedded VAE is the shipped tiny VAE (the demo's), so the recorded ceiling is the demo's ceiling
    from safetensors.torch import load_file

    from m2h_core.demo.tiny_vae import SHIPPED_VAE

    vae = load_file(str(SHIPPED_VAE))
    for k, v in encoders.vae.state_dict().items():
        assert torch.equal(v, vae[k]), k


def test_shipped_model_reproduces_its_recorded_held_out_figures(shipped):
    """The first held-out pair (16 frames, DDIM 20, CFG 1.5, seed 0) and the identity correlations across six
    held-out people, as `python -m m2h_core.demo.pretrained` recorded them when it made the file."""
    model, encoders, meta = shipped
    got = score_heldout(model, encoders, eval_cases=1, people=6)
    want = meta["heldout"]
    for k in FIGURES:
        tol = 0.02 if k.endswith("ssim") else 0.25
        assert got["cases"][0][k] == pytest.approx(want["cases"][0][k], abs=tol), k
    for k in ("face_colour_correlation", "hair_colour_correlation"):
        assert got["identity"][k] == pytest.approx(want["identity"][k], abs=0.03), k
    # and it is a trained model: far above the untrained one (which only copies its clothing latents)
    assert got["cases"][0]["head_psnr"] > 12.0


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m m2h_core.demo.pretrained"):
        load_pretrained(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.safetensors.*python -m m2h_core.demo.pretrained"):
        load_pretrained(bad)
    # an M2H checkpoint that is not the demo's pretrained model (no tag)
    from m2h_core.checkpoint import save_checkpoint
    from m2h_core.demo.recipe import DemoSettings
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.models.m2h import M2HModel

    cfg = DemoSettings().model_config()
    other = tmp_path / "other.safetensors"
    save_checkpoint(M2HModel(cfg), other, encoders=FrozenEncoders.random(cfg))
    with pytest.raises(ValueError, match="not the demo's pretrained"):
        load_pretrained(other)
