"""benchmarks/gpu_check.py runs end to end at a small size on the CPU (the GPU run is the same code at SD-1.5
shapes): every section prints its figures, none fails."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_small_on_the_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--small", "--device", "cpu", "--frames", "8", "--steps", "3", "--no-estimate", "--out",
                   str(tmp_path)])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    assert rc == 0 and not [k for k in lines if "error" in k], lines
    for key in ("sampler_step_s_8_ours", "sampler_step_s_8_diffusers", "sampler_step_ratio_8", "sampler_mem_ratio_8",
                "sampler_peak_gib_8_ours", "train_step_s_full", "train_peak_mem_gib",
                "grad_ratio_normalized", "grad_ratio_literal", "grad_ratio_paper", "crop_vs_full_face_rmse"):
        value = float(lines[key])
        assert math.isfinite(value) and value > 0, (key, value)
    # the literal reading and the mixed one differ by the latent size of a clip (4 frames x 4 x 16 x 8)
    assert float(lines["grad_ratio_paper"]) / float(lines["grad_ratio_literal"]) == pytest.approx(2048, rel=1e-3)
    assert lines["train_loss_finite"] == "true" and lines["est_peak_mem_gib"].startswith("n/a")
