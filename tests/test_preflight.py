"""`train.py --preflight`: end to end on the tiny preset (real steps on the CPU), every key present in the
printed lines and preflight.json; the gradient-norm ratio equals one computed directly from the total loss; the
α for a target ratio gives that ratio; estimate mode labels itself; bad weight files give one clear line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2h_core.training.config import TrainConfig
from m2h_core.training.preflight import PREFLIGHT_KEYS, first_change, gradient_balance, solve_weight
from m2h_core.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _tiny_args(tmp_path: Path) -> list[str]:
    return ["--config", str(ROOT / "train" / "configs" / "tiny.yaml"), "--output-dir", str(tmp_path / "run"),
            "--batch-size", "1", "--set", "num_frames=4", "--set", "synthetic_clips=2",
            "--set", "synthetic_frames=12", "--set", "frame_stride=2"]


def test_preflight_end_to_end_on_the_tiny_preset(tmp_path):
    proc = _cli(*_tiny_args(tmp_path), "--preflight", "--preflight-steps", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and " " not in
                 line.split("=", 1)[0])
    report = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert list(report) == list(PREFLIGHT_KEYS)
    assert set(PREFLIGHT_KEYS) <= set(lines)
    assert report["mode"] == "measured" and report["device"] == "cpu"
    assert (report["preset"], report["height"], report["width"], report["batch_size"]) == ("tiny", 64, 32, 1)
    assert report["steps_measured"] == report["grad_batches"] == 2  # one per resolution phase
    for k in ("step_s_half", "step_s_full", "peak_mem_gib", "hours_to_max_steps", "grad_ratio",
              "grad_ratio_paper", "alpha_for_target", "crop_vs_full_face_rmse", "est_step_tflops_full",
              "est_peak_mem_gib"):
        assert isinstance(report[k], float) and math.isfinite(report[k]) and report[k] > 0, (k, report[k])
    assert report["est_step_tflops_half"] < report["est_step_tflops_full"]
    assert report["fits_device"] is True and report["first_change"] == "none"
    assert report["loss_finite"] is True and report["bf16_loss_finite"] is True
    assert report["grad_ratio"] == report["grad_ratio_normalized"]  # the configured reduction
    # batch 1, paper's global batch 8: 8x the per-sample time, halved per doubling of GPUs
    assert report["hours_paper_batch_gpus1"] == pytest.approx(8 * report["hours_to_max_steps"], rel=1e-6)
    assert report["hours_paper_batch_gpus2"] == pytest.approx(report["hours_paper_batch_gpus1"] / 2, rel=1e-6)
    assert report["estimate_note"].startswith("est_* are ESTIMATES")
    assert not (tmp_path / "run" / "checkpoints").exists()  # a preflight trains nothing to disk


def test_preflight_estimate_mode_is_labelled(tmp_path):
    proc = _cli(*_tiny_args(tmp_path), "--preflight", "--preflight-mode", "estimate", "--preflight-out",
                str(tmp_path / "p.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["mode"] == "estimate" and report["inputs_missing"] == "none"
    assert report["step_s_full"].startswith("n/a (estimate mode") and report["grad_ratio"].startswith("n/a")
    assert isinstance(report["est_peak_mem_gib"], float) and report["est_fits_rtx4090_24gb"] is True


def test_missing_inputs_are_named(tmp_path):
    from m2h_core.training.preflight import missing_inputs

    tc = TrainConfig(preset="sd15", data=str(tmp_path), base=str(tmp_path / "sd15.safetensors"), vgg=None)
    assert missing_inputs(tc) == f"base={tmp_path / 'sd15.safetensors'}"
    (tmp_path / "sd15.safetensors").write_bytes(b"x")
    assert missing_inputs(tc) == "none"


@pytest.mark.parametrize("reduction", ["normalized", "literal"])
def test_gradient_ratio_equals_the_direct_computation(tmp_path, reduction):
    """grad_ratio = |∇(L_total - L_diff)| / |∇L_diff| computed here from the total loss of the same step; the
    literal reading (Eq. 4 and 6 both sums) is the mixed one (`paper`) over the clip's latent element count."""
    tc = TrainConfig.from_dict(dict(preset="tiny", random_init=True, synthetic_clips=2, synthetic_frames=12,
                                    num_frames=4, frame_stride=2, batch_size=2, progressive=False,
                                    output_dir=str(tmp_path), alpha=0.5, beta=0.05, mirror_reduction=reduction))
    tr = Trainer(tc)
    batch = next(tr._loader(1.0))
    got = gradient_balance(tr, [batch], target=0.1, seed=3)
    params = [p for p in tr.model.parameters() if p.requires_grad]
    terms = tr.compute_loss(batch, generator=torch.Generator().manual_seed(3), keep_graph=True)
    g_tot = torch.autograd.grad(terms["loss"], params, retain_graph=True, allow_unused=True)
    g_diff = torch.autograd.grad(terms["g_diff"], params, allow_unused=True)
    z = torch.zeros(())

    def norm(gs):
        return math.sqrt(sum(float(((g if g is not None else z).double()) .square().sum()) for g in gs))

    mir = [(a if a is not None else z) - (b if b is not None else z) for a, b in zip(g_tot, g_diff)]
    want = norm(mir) / norm(g_diff)
    assert got["grad_ratio"] == pytest.approx(want, rel=1e-3)
    assert got[f"grad_ratio_{reduction}"] == got["grad_ratio"] and got["grad_ratio_paper"] != got["grad_ratio"]
    n_lat = 4 * 4 * 16 * 8  # frames x latent channels x 64/4 x 32/4
    assert got["grad_ratio_literal"] == pytest.approx(got["grad_ratio_paper"] / n_lat, rel=1e-9)
    assert tr.mirror is not None and tr.mirror.alpha == 0.5  # the run's own mirror loss is put back


def test_solve_weight_gives_the_target_ratio():
    g = torch.Generator().manual_seed(0)
    g1, g2, gd = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    a2, ab, b2, d2 = float(g1 @ g1), float(g1 @ g2), float(g2 @ g2), float(gd @ gd)
    w = solve_weight(a2, ab, b2, d2, other=0.1, target=0.7)
    assert w is not None and w > 0
    assert float((w * g1 + 0.1 * g2).norm() / gd.norm()) == pytest.approx(0.7, rel=1e-9)
    assert solve_weight(a2, ab, b2, d2, other=100.0, target=0.01) is None  # the other term alone is too big


def test_first_change_order():
    tc = TrainConfig(random_init=True, synthetic_clips=1, batch_size=4)
    assert first_change(tc, lambda c: True) == "none"
    assert first_change(tc, lambda c: c.gradient_checkpointing) == "gradient_checkpointing: true"
    assert first_change(tc, lambda c: c.lora_rank > 0) == "gradient_checkpointing: true, lora_rank: 16"
    assert first_change(tc, lambda c: c.batch_size <= 2) == ("gradient_checkpointing: true, lora_rank: 16, "
                                                             "batch_size: 2, grad_accum: 2")
    assert "still too big" in first_change(tc, lambda c: False)


def test_cli_bad_vgg_file_is_one_clear_line(tmp_path):
    import argparse

    bad = tmp_path / "vgg16.pth"
    torch.save({"opt": argparse.Namespace(lr=1)}, bad)
    proc = _cli(*_tiny_args(tmp_path), "--vgg", str(bad), "--max-steps", "1")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: {bad}: not a weights file") and "vgg16-397923af.pth" in errors[0]
