"""The trainer: the loss goes down, a resumed run equals an uninterrupted one, a killed CLI run resumes, the
checkpoints load with `load_checkpoint` and run in `sample_video`, LoRA merges, configs fail clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from m2h_core.checkpoint import load_checkpoint
from m2h_core.training import (
    TrainConfig,
    Trainer,
    list_checkpoints,
    load_train_config,
    make_train_scheduler,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared CPU, 2+ threads of tiny ops mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tc(tmp_path, **kw) -> TrainConfig:
    base = dict(preset="tiny", random_init=True, synthetic_clips=2, synthetic_frames=12, num_frames=4,
                frame_stride=2, batch_size=1, max_steps=4, lr=1e-3, checkpoint_every=2, keep_last=2,
                output_dir=str(tmp_path / "run"), log_every=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_train_scheduler_is_the_samplers_schedule():
    from m2h_core.sampler import make_scheduler

    assert torch.allclose(make_train_scheduler().alphas_cumprod, make_scheduler("ddim").alphas_cumprod)


def test_ten_steps_decrease_the_loss_on_a_fixed_batch(tmp_path):
    tr = Trainer(_tc(tmp_path, progressive=False, cond_dropout=0.0, vae_sample=False, lr=2e-3))
    batch = next(tr._loader(1.0))

    def fixed_loss() -> tuple[float, float]:
        with torch.no_grad():
            terms = tr.compute_loss(batch, generator=torch.Generator().manual_seed(123))
        return float(terms["loss"]), float(terms["l_mir"])

    before, mir_before = fixed_loss()
    assert mir_before > 0  # the mirror loss is active in the total
    for _ in range(10):
        terms = tr.train_step([batch])
        assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    after, _ = fixed_loss()
    assert after < 0.9 * before, (before, after)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """4 steps straight vs 2 steps + checkpoint + a fresh Trainer resuming: identical weights and logs. The
    half-resolution phase ends at step 2, so the resume also crosses the phase switch."""
    a = Trainer(_tc(tmp_path / "a"))
    ra = a.run(resume=None)
    assert ra.step == 4 and [(l.height, l.width) for l in ra.logs] == [(32, 16)] * 2 + [(64, 32)] * 2

    b1 = Trainer(_tc(tmp_path / "b"))
    r1 = b1.run(resume=None, stop_after=2)
    assert r1.step == 2 and r1.final_checkpoint is None
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["step_00000002"]
    b2 = Trainer(_tc(tmp_path / "b"))
    r2 = b2.run(resume="auto")
    assert r2.step == 4 and len(r2.logs) == 2
    assert [l.loss for l in r1.logs + r2.logs] == pytest.approx([l.loss for l in ra.logs], rel=1e-5)
    pa, pb = _params(a.model), _params(b2.model)
    assert pa.keys() == pb.keys()
    worst = max((pa[k] - pb[k]).abs().max().item() for k in pa)
    assert worst < 1e-6
    # the optimizer moments came back too
    sa = a.optimizer.optimizer.state_dict()["state"] if hasattr(a.optimizer, "optimizer") else None
    sb = b2.optimizer.optimizer.state_dict()["state"] if hasattr(b2.optimizer, "optimizer") else None
    if sa is not None:
        assert torch.allclose(sa[0]["exp_avg_sq"], sb[0]["exp_avg_sq"], atol=1e-9)
    # keep_last=2 and the final model
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["step_00000002", "step_00000004"]
    assert r2.final_checkpoint is not None and r2.final_checkpoint.is_file()


def test_lora_checkpoint_is_a_plain_m2h_checkpoint(tmp_path):
    tr = Trainer(_tc(tmp_path, lora_rank=4, max_steps=1, progressive=False, mirror=False, validate_every=1,
                     validation_steps=2))
    n_lora = sum(p.numel() for n, p in tr.model.named_parameters() if "lora_" in n and p.requires_grad)
    frozen = [n for n, p in tr.model.named_parameters() if not p.requires_grad]
    assert n_lora > 0 and any("attn1.to_q.base_layer" in n for n in frozen)
    res = tr.run(resume=None)
    assert (tmp_path / "run" / "validation" / "step_00000001.gif").is_file()  # sample_video ran on the model
    model = load_checkpoint(res.final_checkpoint)
    batch = next(tr._loader(1.0))
    inputs = tr.encoders.make_inputs(batch["frames"], batch["clothing_masks"], batch["pose_images"],
                                     batch["identity_image"], batch["identity_landmarks"], batch["arcface"])
    z = torch.randn(1, 4, 4, 16, 8)
    t = torch.tensor([300])
    tr.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(z, t, inputs), tr.model(z, t, inputs), atol=1e-5)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"lr": 1.0, "learning_rate": 2.0})
    with pytest.raises(ValueError, match="base weights"):
        TrainConfig.from_dict({"synthetic_clips": 2})
    with pytest.raises(ValueError, match="no training data"):
        TrainConfig.from_dict({"random_init": True})
    with pytest.raises(FileNotFoundError, match="configs"):
        load_train_config(tmp_path / "nope.yaml")
    tc = load_train_config(ROOT / "train" / "configs" / "sd15.yaml", {"data": "x", "base": "b.safetensors"})
    assert (tc.lr, tc.adam_beta1, tc.adam_beta2, tc.alpha, tc.beta) == (5e-5, 0.0, 0.99, 0.05, 0.001)
    assert (tc.num_frames, tc.frame_stride, tc.height, tc.width, tc.cond_dropout) == (8, 4, 512, 256, 0.1)
    with pytest.raises(ValueError, match="multiple of"):
        Trainer(_tc(tmp_path, height=72))


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train" / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_killed_midway_resumes_and_checkpoint_samples(tmp_path):
    cache = tmp_path / "cache"
    subprocess.run([sys.executable, str(ROOT / "train" / "prepare_data.py"), "--synthetic", "3", "--out",
                    str(cache), "--size", "128x64", "--frames", "12"], check=True, cwd=ROOT, capture_output=True)
    out = tmp_path / "run"
    args = ["--config", str(ROOT / "train" / "configs" / "tiny.yaml"), "--data", str(cache), "--output-dir",
            str(out), "--max-steps", "6", "--checkpoint-every", "2", "--batch-size", "1",
            "--set", "num_frames=4", "--set", "frame_stride=2", "--set", "synthetic_clips=0"]
    proc = _run_cli(args)
    deadline = time.time() + 120
    while time.time() < deadline and not list_checkpoints(out) and proc.poll() is None:
        time.sleep(0.2)
    assert list_checkpoints(out), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = list_checkpoints(out)[-1]
    done_before = int(first.name.split("_")[1])
    assert done_before < 6
    proc = _run_cli(args)  # --resume auto is the default
    log, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, log
    assert f"resumed from {first}" in log and "done: step 6" in log
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and sorted(set(steps)) == list(range(1, 7))
    state = json.loads((list_checkpoints(out)[-1] / "training_state.json").read_text())
    assert state["step"] == 6 and state["data_position"] == 6

    from m2h_core.encoders import FrozenEncoders
    from m2h_core.sampler import SamplerSettings, sample_video

    model = load_checkpoint(out / "m2h_final.safetensors")
    enc = FrozenEncoders.random(model.cfg)
    n, h, w = 4, model.cfg.height, model.cfg.width
    res = sample_video(model, enc, torch.rand(n, 3, h, w), torch.ones(n, h, w), torch.rand(n, 3, h, w),
                       torch.rand(3, h, w), torch.rand(3, h, w), torch.randn(512),
                       SamplerSettings(steps=2, guidance_scale=2.0, context_frames=4, context_overlap=1))
    assert res.frames.shape == (n, 3, h, w) and torch.isfinite(res.frames).all()


def test_cli_grid_and_bad_input(tmp_path):
    sys.path.insert(0, str(ROOT / "train"))
    import train as train_cli  # noqa: PLC0415

    a = train_cli.build_parser().parse_args(["--alpha", "0,0.05", "--beta", "0.005", "--no-mirror",
                                             "--set", "lora_rank=8"])
    base, runs = train_cli.runs_from_args(a)
    assert base["mirror"] is False and base["lora_rank"] == 8
    assert [r[0] for r in runs] == ["alpha0_beta0.005", "alpha0.05_beta0.005"]
    _, runs = train_cli.runs_from_args(train_cli.build_parser().parse_args(["--ablation", "table3"]))
    assert len(runs) == 8 and len({r[0] for r in runs}) == 8
    _, runs = train_cli.runs_from_args(train_cli.build_parser().parse_args(["--sweep", "table4"]))
    assert runs[2] == ("alpha0.05_beta0.005", {"alpha": 0.05, "beta": 0.005})
    # a cache folder that does not exist: a clear error and exit code 2, nothing written
    proc = _run_cli(["--random-init", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")])
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "prepare_data" in log
