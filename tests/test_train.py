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
from m2h_core.training.components import make_train_scheduler
from m2h_core.training.config import TrainConfig, load_train_config
from m2h_core.training import state as training_state
from m2h_core.training.state import list_checkpoints
from m2h_core.training.trainer import Trainer

from .fixtures import synthetic_trainer

ROOT = Path(__file__).resolve().parents[1]


def _tc(tmp_path, **kw) -> TrainConfig:
    base = dict(preset="tiny", random_init=True, synthetic_clips=2, synthetic_frames=12, num_frames=4,
                frame_stride=2, batch_size=1, max_steps=4, lr=1e-3, checkpoint_every=2, keep_last=2,
                output_dir=str(tmp_path / "run"), log_every=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_train_scheduler_is_the_samplers_schedule():
    from m2h_core.inference.sampler import make_scheduler

    assert torch.allclose(make_train_scheduler().alphas_cumprod, make_scheduler("ddim").alphas_cumprod)


def test_ten_steps_decrease_the_loss_on_a_fixed_batch(tmp_path):
    tr = synthetic_trainer(_tc(tmp_path, progressive=False, cond_dropout=0.0, vae_sample=False, lr=2e-3))
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
    a = synthetic_trainer(_tc(tmp_path / "a"))
    ra = a.run(resume=None)
    assert ra.step == 4 and [(log.height, log.width) for log in ra.logs] == [(32, 16)] * 2 + [(64, 32)] * 2

    b1 = synthetic_trainer(_tc(tmp_path / "b"))
    r1 = b1.run(resume=None, stop_after=2)
    assert r1.step == 2 and r1.final_checkpoint is None
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["step_00000002"]
    b2 = synthetic_trainer(_tc(tmp_path / "b"))
    r2 = b2.run(resume="auto")
    assert r2.step == 4 and len(r2.logs) == 2
    assert [log.loss for log in r1.logs + r2.logs] == pytest.approx([log.loss for log in ra.logs], rel=1e-5)
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


def _adam_state(tr) -> dict:
    opt = tr.optimizer.optimizer if hasattr(tr.optimizer, "optimizer") else tr.optimizer
    return opt.state_dict()["state"]


def test_resume_across_warmup_restores_lr_and_every_moment(tmp_path):
    """warmup_steps=4, resumed after step 2: the lr of every step follows LambdaLR's warmup written out
    (lr·min(1, (k+1)/4) after k steps) exactly as the uninterrupted run, and Adam's moments and step counts of ALL
    trainable parameters equal the uninterrupted run's."""
    kw = dict(warmup_steps=4, max_steps=4, checkpoint_every=2, progressive=False)
    a = synthetic_trainer(_tc(tmp_path / "a", **kw))
    ra = a.run(resume=None)
    want = [1e-3 * min(1.0, (k + 1) / 4) for k in range(1, 5)]  # after steps 1..4
    assert [log.lr for log in ra.logs] == pytest.approx(want, rel=1e-12)
    synthetic_trainer(_tc(tmp_path / "b", **kw)).run(resume=None, stop_after=2)
    b = synthetic_trainer(_tc(tmp_path / "b", **kw))
    rb = b.run(resume="auto")
    assert [log.lr for log in rb.logs] == pytest.approx(want[2:], rel=1e-12)
    sa, sb = _adam_state(a), _adam_state(b)
    assert len(sa) == len(sb) == len(a.params) > 10
    for i in sa:
        assert float(sa[i]["step"]) == float(sb[i]["step"]) == 4.0
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(sa[i][k], sb[i][k], rtol=1e-5, atol=1e-10), (i, k)
    pa, pb = _params(a.model), _params(b.model)
    assert max((pa[k] - pb[k]).abs().max().item() for k in pa) < 1e-6


def loss_step_seen(tr: Trainer, out_name: str) -> dict:
    """One real `compute_loss` step; returns the network's output (as `out_name`) and the z_t, ε̂, t the mirror loss
    was handed, plus the step's loss terms ("terms")."""
    seen: dict = {}
    tr.model.register_forward_hook(lambda mod, args, out: seen.__setitem__(out_name, out.detach().clone()))
    real = tr.mirror

    def spy(z_t, eps, t, *rest):
        seen.update(z_t=z_t.detach().clone(), eps=eps.detach().clone(), t=t.clone())
        return real(z_t, eps, t, *rest)

    tr.mirror = spy
    seen["terms"] = tr.compute_loss(next(tr._loader(1.0)), generator=torch.Generator().manual_seed(4))
    return seen


def test_v_prediction_feeds_the_mirror_loss_eps_from_v(tmp_path):
    """v-prediction: the ε̂ that compute_loss hands to the mirror loss is √ᾱ_t·v̂ + √(1-ᾱ_t)·z_t (written out
    here) of the network's own output v̂ - checked on the tensors the real step passes."""
    from m2h_core.config import tiny
    from m2h_core.models.m2h import M2HModel

    cfg = tiny()
    cfg.prediction_type = "v_prediction"
    cfg.num_frames = 4
    torch.manual_seed(0)
    tr = synthetic_trainer(_tc(tmp_path, progressive=False, cond_dropout=0.0), model=M2HModel(cfg))
    seen = loss_step_seen(tr, "v")
    a = tr.noise_scheduler.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1, 1)
    want = a.sqrt() * seen["v"] + (1 - a).sqrt() * seen["z_t"]
    assert torch.allclose(seen["eps"], want, atol=1e-5)
    assert not torch.allclose(seen["eps"], seen["v"], atol=1e-3)  # the conversion did something


def test_lora_checkpoint_is_a_plain_m2h_checkpoint(tmp_path):
    tr = synthetic_trainer(_tc(tmp_path, lora_rank=4, max_steps=1, progressive=False, mirror=False, validate_every=1,
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
    # beta = 0.005: Table I's row is Table IV's (0.05, 0.005) row (the text of IV-B says 0.001)
    assert (tc.lr, tc.adam_beta1, tc.adam_beta2, tc.alpha, tc.beta) == (5e-5, 0.0, 0.99, 0.05, 0.005)
    assert TrainConfig().beta == 0.005 and TrainConfig().mirror_reduction == "normalized"
    assert (tc.num_frames, tc.frame_stride, tc.height, tc.width, tc.cond_dropout) == (8, 4, 512, 256, 0.1)
    with pytest.raises(ValueError, match="multiple of"):
        synthetic_trainer(_tc(tmp_path, height=72))


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

    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.inference.inputs import IdentityInputs, VideoInputs
    from m2h_core.inference.sampler import SamplerSettings, sample_video

    model = load_checkpoint(out / "m2h_final.safetensors")
    enc = FrozenEncoders.random(model.cfg)
    n, h, w = 4, model.cfg.height, model.cfg.width
    video = VideoInputs(torch.rand(n, 3, h, w), torch.ones(n, h, w), torch.rand(n, 3, h, w))
    res = sample_video(model, enc, video, IdentityInputs(torch.rand(3, h, w), torch.rand(3, h, w), torch.randn(512)),
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


# ------------------------------------------------------------------------------------------ review fixes


class _AsRank:
    """The real accelerator, reporting another rank / world size (what load() keys the RNG states by)."""

    def __init__(self, acc, rank: int, world: int, **overrides):
        self._acc, self.process_index, self.num_processes = acc, rank, world
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._acc, name)


def test_init_checkpoint_model_config_is_the_checkpoints(tmp_path):
    """prediction_type (the training target) and the config saved into checkpoints come from init_checkpoint;
    a YAML that contradicts the checkpoint's switches or sizes fails clearly."""
    from m2h_core.checkpoint import read_config, save_checkpoint
    from m2h_core.config import tiny
    from m2h_core.models.m2h import M2HModel

    cfg = tiny()
    cfg.prediction_type = "v_prediction"
    cfg.num_frames = 4
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_checkpoint(M2HModel(cfg), init)
    tr = synthetic_trainer(_tc(tmp_path, init_checkpoint=str(init), mirror=False, progressive=False))
    assert tr.cfg.prediction_type == "v_prediction" and tr.cfg.num_frames == 4  # compute_loss's target
    saved = tr.save()
    assert read_config(saved / "m2h.safetensors").prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="contradicts init_checkpoint.*use_head_encoder"):
        synthetic_trainer(_tc(tmp_path, init_checkpoint=str(init), use_head_encoder=False))
    with pytest.raises(ValueError, match="height: 128"):
        synthetic_trainer(_tc(tmp_path, init_checkpoint=str(init), height=128))
    with pytest.raises(ValueError, match="preset: sd15"):
        synthetic_trainer(_tc(tmp_path, init_checkpoint=str(init), preset="sd15"))
    with pytest.raises(ValueError, match="clothing_fill: backdrop"):  # the checkpoint was trained on v ⊙ M_c
        synthetic_trainer(_tc(tmp_path, init_checkpoint=str(init), clothing_fill="backdrop"))
    black = synthetic_trainer(_tc(tmp_path, init_checkpoint=str(init), clothing_fill="black"))
    assert black.cfg.clothing_fill == "black"


def test_checkpoint_rng_per_rank_grad_scaler_and_stale_tmp(tmp_path, monkeypatch):
    a = synthetic_trainer(_tc(tmp_path, mirror=False))
    a.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1234.0, growth_interval=7)
    rank1 = torch.Generator().manual_seed(777)
    own = training_state.gather_rng_states(a)[0]
    fake1 = ({**own[0], "generator": rank1.get_state()}, own[1])
    # a 2-process run, seen from rank 0
    monkeypatch.setattr(training_state, "gather_rng_states", lambda trainer: [own, fake1])
    stale = tmp_path / "run" / "checkpoints" / ".tmp-step_00000001-999"
    stale.mkdir(parents=True)
    (stale / "m2h.safetensors").write_bytes(b"half written")
    a.step = 2
    ckpt = a.save()
    assert not stale.exists() and [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == [ckpt.name]
    state = json.loads((ckpt / "training_state.json").read_text())
    assert state["grad_scaler"]["scale"] == 1234.0 and state["grad_scaler"]["growth_interval"] == 7

    def restored(rank: int, world: int, **kw) -> Trainer:
        t = synthetic_trainer(_tc(tmp_path, mirror=False))
        t.accelerator = _AsRank(t.accelerator, rank, world, **kw)
        t.load(ckpt)
        return t

    r0 = restored(0, 2, scaler=torch.amp.GradScaler("cpu"))
    assert torch.equal(r0.generator.get_state(), own[0]["generator"])
    assert r0.accelerator.scaler.get_scale() == 1234.0 and r0.accelerator.scaler.get_growth_interval() == 7
    r1 = restored(1, 2)
    assert torch.equal(r1.generator.get_state(), rank1.get_state())
    r2, r2b = restored(2, 3), restored(2, 3)  # a rank the saving run did not have: deterministic fresh seed
    assert torch.equal(r2.generator.get_state(), r2b.generator.get_state())
    assert not torch.equal(r2.generator.get_state(), own[0]["generator"])
    assert not torch.equal(r2.generator.get_state(), rank1.get_state())
    # a run started later cleans up what a crash in save() left behind, before it resumes
    stale.mkdir()
    synthetic_trainer(_tc(tmp_path, mirror=False)).run(resume="auto", stop_after=0)
    assert not stale.exists()


def test_lora_resume_clips_prepared_params_and_keeps_optimizer_step_on_cpu(tmp_path, monkeypatch):
    """Grad clipping gets the prepared model's parameters (what a sharded wrapper holds the grads in), and
    resume hands the optimizer CPU tensors: torch places the moments and keeps `step` on the CPU."""
    tc = _tc(tmp_path, lora_rank=2, mirror=False, progressive=False)
    tr = synthetic_trainer(tc)
    clipped = []
    real_clip = tr.accelerator.clip_grad_norm_

    def spy(params, max_norm):
        clipped.append(list(params))
        return real_clip(clipped[-1], max_norm)

    monkeypatch.setattr(tr.accelerator, "clip_grad_norm_", spy)
    tr.train_step([next(tr._loader(1.0))])
    prepared = list(tr.ddp_model.parameters())
    assert len(clipped) == 1 and len(clipped[0]) == len(prepared) > len(tr.params)
    assert all(a is b for a, b in zip(clipped[0], prepared))
    tr.step = 1
    ckpt = tr.save()
    b = synthetic_trainer(tc)
    b.device = torch.device("meta")  # load must not move anything to self.device itself
    b.load(ckpt)
    opt = b.optimizer.optimizer if hasattr(b.optimizer, "optimizer") else b.optimizer
    assert len(opt.state) == len(b.params)
    for p, st in opt.state.items():
        assert st["step"].device.type == "cpu" and float(st["step"]) == 1.0
        assert st["exp_avg"].device == p.device
    with pytest.raises(ValueError, match="LoRA .* under FSDP is not supported"):
        from accelerate.utils import DistributedType

        synthetic_trainer(tc, accelerator=_AsRank(tr.accelerator, 0, 2, distributed_type=DistributedType.FSDP))


def test_load_onto_cpu_index_device(tmp_path):
    """accelerate on a CPU host may name the device cpu:0; loading restores weights, Adam moments and the lr
    schedule onto the CPU exactly as saved."""
    tr = synthetic_trainer(_tc(tmp_path, mirror=False, progressive=False, warmup_steps=10))
    tr.train_step([next(tr._loader(1.0))])
    tr.step = 1
    ckpt = tr.save()
    b = synthetic_trainer(_tc(tmp_path, mirror=False, progressive=False, warmup_steps=10))
    b.device = torch.device("cpu", 0)
    want, before = _params(tr.model), _params(b.model)
    assert any(not torch.equal(want[k], before[k]) for k in want)  # the step changed the weights
    b.load(ckpt)
    got = _params(b.model)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].device.type == "cpu" and torch.equal(got[k], want[k]), k
    opt_a = tr.optimizer.optimizer if hasattr(tr.optimizer, "optimizer") else tr.optimizer
    opt_b = b.optimizer.optimizer if hasattr(b.optimizer, "optimizer") else b.optimizer
    assert len(opt_b.state) == len(b.params) > 0
    for pa, pb in zip(tr.params, b.params):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sb["exp_avg"].device.type == "cpu" and float(sb["step"]) == 1.0
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert b.step == 1 and b.lr_scheduler.last_epoch == 1
    assert b.lr_scheduler.get_last_lr() == tr.lr_scheduler.get_last_lr()


def test_nonfinite_loss_skips_the_step_and_scaler_skips_keep_the_lr_schedule(tmp_path, monkeypatch):
    from accelerate import Accelerator

    tr = synthetic_trainer(_tc(tmp_path, mirror=False, progressive=False, warmup_steps=10, max_nonfinite_steps=3))
    batch = next(tr._loader(1.0))
    real = tr.compute_loss

    def nan_loss(b, generator=None):
        out = real(b, generator)
        out["loss"] = out["loss"] * float("nan")
        return out

    before = _params(tr.model)
    monkeypatch.setattr(tr, "compute_loss", nan_loss)
    for _ in range(2):
        tr.train_step([batch])
    assert tr.skipped_steps == 2 and tr.lr_scheduler.last_epoch == 0
    after = _params(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the weights never saw the NaN
    monkeypatch.setattr(tr, "compute_loss", real)
    tr.train_step([batch])  # a finite step resets the run of non-finite ones
    assert tr.nonfinite_in_a_row == 0 and tr.lr_scheduler.last_epoch == 1
    monkeypatch.setattr(tr, "compute_loss", nan_loss)
    tr.train_step([batch])
    tr.train_step([batch])
    with pytest.raises(FloatingPointError, match="3 steps in a row"):
        tr.train_step([batch])
    # fp16: a step the GradScaler skipped does not advance the lr schedule
    monkeypatch.setattr(tr, "compute_loss", real)
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    tr.train_step([batch])
    assert tr.lr_scheduler.last_epoch == 1


def test_gradient_checkpointing_covers_motion_modules_and_keeps_gradients(tmp_path):
    """enable_gradient_checkpointing also checkpoints the motion modules (diffusers leaves them out): same loss
    and gradients as without, fewer tensors kept for the backward, state-dict names unchanged."""
    import copy

    from m2h_core.training.components import enable_gradient_checkpointing

    tr = synthetic_trainer(_tc(tmp_path, progressive=False, cond_dropout=0.0, vae_sample=False, mirror=False))
    batch = next(tr._loader(1.0))
    plain = tr.model
    ckpt = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    n = enable_gradient_checkpointing(ckpt.unet)
    assert n == sum(1 for name, _ in plain.unet.named_modules() if name.split(".")[-2:-1] == ["motion_modules"]) > 0
    assert list(ckpt.state_dict()) == keys

    def run(model):
        tr.model = tr.ddp_model = model
        model.zero_grad(set_to_none=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            terms = tr.compute_loss(batch, generator=torch.Generator().manual_seed(0))
        terms["loss"].backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return float(terms["loss"].detach()), grads, sum(saved)

    diffusers_only = copy.deepcopy(plain)
    diffusers_only.unet.enable_gradient_checkpointing()
    l1, g1, s1 = run(plain)
    l2, g2, s2 = run(ckpt)
    _, _, s3 = run(diffusers_only)
    assert l1 == pytest.approx(l2, rel=1e-6) and g1.keys() == g2.keys()
    assert all(torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-4) for k in g1)
    assert s2 < 0.8 * s3 < 0.8 * s1, (s1, s3, s2)  # the motion modules' share is gone too


def test_cosine_lr_schedule_warms_up_decays_to_zero_and_resumes(tmp_path):
    """lr_schedule="cosine": linear warm-up, then lr·½(1+cos(π s/max_steps)), 0 at the last step; "constant" stays at
    lr; a resumed run continues the same curve (the factor is rebuilt from the config, the step from the state)."""
    import math

    from m2h_core.training.trainer import lr_factor

    tc = _tc(tmp_path, max_steps=100, warmup_steps=10, lr_schedule="cosine")
    f = lr_factor(tc)
    assert f(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0.0)))
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12) and f(150) == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor(_tc(tmp_path, max_steps=100, warmup_steps=10))(s) for s in (0, 50, 100)] == [0.1, 1.0, 1.0]
    with pytest.raises(ValueError, match="lr_schedule"):
        _tc(tmp_path, lr_schedule="linear")
    run = _tc(tmp_path, max_steps=4, warmup_steps=0, lr_schedule="cosine", checkpoint_every=2, progressive=False)
    tr = synthetic_trainer(run)
    tr.run(stop_after=2)
    lr_after_2 = tr.optimizer.param_groups[0]["lr"]
    assert lr_after_2 == pytest.approx(run.lr * 0.5)
    back = synthetic_trainer(run)
    assert back.resume("auto") and back.optimizer.param_groups[0]["lr"] == pytest.approx(lr_after_2)


def test_input_perturbation_moves_the_input_not_the_target(tmp_path):
    """TrainConfig.input_perturbation (exposure bias, Ning et al. 2023): z_t is made from ε + γξ while L_diff's target
    stays ε. With γ = 0 the step is the plain one; with γ > 0 the same generator gives another z_t, and the z_t the
    network saw is not √ᾱ z_0 + √(1-ᾱ) ε for the ε L_diff is measured against."""
    def seen_with(gamma: float) -> dict:
        torch.manual_seed(0)
        tr = synthetic_trainer(_tc(tmp_path / str(gamma), progressive=False, cond_dropout=0.0, vae_sample=False,
                         input_perturbation=gamma))
        return loss_step_seen(tr, "eps_hat")

    plain, off, on = seen_with(0.0), seen_with(0.0), seen_with(0.5)
    assert torch.equal(plain["z_t"], off["z_t"])
    assert torch.equal(plain["t"], on["t"])
    diff = (on["z_t"] - plain["z_t"]).abs().mean()
    assert diff > 0.01, float(diff)
    with pytest.raises(ValueError, match="input_perturbation"):
        _tc(tmp_path, input_perturbation=-0.1)
