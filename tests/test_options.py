"""Every option reaches the code it controls (issue 32): a test that would pass with the option dropped or two
options swapped is not enough, so each is given a value unlike its default and unlike every other option's.

- `m2h generate` / `m2h batch`: the real argparse, then the request, sampler settings and model files that
  `generate` receives (it is replaced by a recorder: what it does with them is tested elsewhere).
- jobs.csv: each column overrides the command's value for its row; a row without it gets the command's.
- `SamplerSettings` -> the sampler: the model's conditioning gets the strengths, the UNet calls follow the
  window / chunk / CFG settings, and steps, seed, scheduler and guidance change the result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from m2h_core import cli
from m2h_core.inference import generate as gen
from m2h_core.inference.generate import GenerateReport, GenerateRequest, ModelFiles
from m2h_core.inference.sampler import SamplerSettings, sample_video
from m2h_core.video_io import AUDIO_NOT_KEPT

SAMPLING = ["--steps", "3", "--cfg", "2.5", "--scheduler", "euler", "--seed", "11", "--pose-strength", "0.5",
            "--identity-strength", "1.5", "--context", "6", "--overlap", "2", "--chunk-frames", "12",
            "--batch-cfg"]
SETTINGS = SamplerSettings(steps=3, guidance_scale=2.5, scheduler="euler", seed=11, context_frames=6,
                           context_overlap=2, chunk_frames=12, batch_cfg=True, pose_strength=0.5,
                           identity_strength=1.5)
MODELS = ["--checkpoint", "m.safetensors", "--base", "sd.safetensors", "--clip-vision", "clip.safetensors",
          "--models-dir", "dirA", "--models-dir", "dirB", "--parser", "parsing_atr.onnx", "--face-pack", "buffalo_l",
          "--garment-lock", "--keep-background", "--device", "meta", "--precision", "bf16"]
FILES = ModelFiles("m.safetensors", "sd.safetensors", "clip.safetensors", "meta", torch.bfloat16)


def differs_everywhere(a, b) -> None:
    """Every field of dataclass `a` differs from `b`'s (the values chosen show when an option is dropped)."""
    same = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) == getattr(b, f.name)]
    assert not same, f"give these a non-default value: {same}"


@pytest.fixture()
def recorded(monkeypatch):
    calls: list[tuple] = []

    def record(files, req, settings=None, progress=None, *, models=None, pipeline=None):
        calls.append((files, req, settings))
        return GenerateReport(req.out, 1, 8.0, 32, 64, [f"{AUDIO_NOT_KEPT} GIF output carries no sound"])

    monkeypatch.setattr(gen, "generate", record)
    monkeypatch.delenv("M2H_MODELS", raising=False)
    return calls


def test_every_generate_option_reaches_the_request_settings_and_model_files(recorded):
    argv = ["generate", "--video", "v.mp4", "--identity", "a.png", "b.png", "--out", "o.mp4", "--masks", "m.npy",
            "--poses", "p.mp4", "--frames", "5", *MODELS, *SAMPLING]
    assert cli.main(argv) == 0
    files, req, settings = recorded[-1]
    want = GenerateRequest("v.mp4", ["a.png", "b.png"], "o.mp4", "m.npy", "p.mp4", 5, "parsing_atr.onnx",
                           "buffalo_l", ["dirA", "dirB"], True, True)
    assert (files, req, settings) == (FILES, want, SETTINGS)
    assert cli.main(["generate", "--video", "v.mp4", "--identity", "a.png", "--out", "o.mp4", "--checkpoint",
                     "m.safetensors", "--device", "cpu", "--precision", "fp32"]) == 0
    files0, req0, settings0 = recorded[-1]
    differs_everywhere(settings, settings0)
    differs_everywhere(dataclasses.replace(req, video="", out=""), dataclasses.replace(req0, video="x", out="y"))
    differs_everywhere(dataclasses.replace(files, checkpoint=""), files0)
    assert req0.identity == "a.png"  # one photo stays a path, several a list


def test_models_dir_from_the_environment_comes_after_the_flags(recorded, monkeypatch):
    monkeypatch.setenv("M2H_MODELS", "envdir")
    cli.main(["generate", "--video", "v.mp4", "--identity", "a.png", "--out", "o.mp4", "--checkpoint", "m",
              "--models-dir", "flagdir", "--device", "cpu", "--precision", "fp32"])
    assert recorded[-1][1].search_dirs == ["flagdir", "envdir"]


def test_every_batch_option_and_job_column_reaches_its_job(recorded, monkeypatch, tmp_path, capsys):
    """Row 2 sets every optional column (values unlike the command's); row 3 sets none and gets the command's."""
    monkeypatch.setattr(ModelFiles, "check", lambda self: None)
    monkeypatch.setattr(ModelFiles, "load", lambda self: "the pipeline")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,identity,output,masks,poses,frames,steps,cfg,seed,scheduler,context,overlap,"
                    "garment_lock,keep_background\n"
                    "v1.mp4,a.png;b.png,o1.mp4,m1.npy,p1.mp4,7,4,3.5,13,dpmpp_2m,5,1,no,false\n"
                    "v2.mp4,c.png,o2.mp4,,,,,,,,,,,\n")
    argv = ["batch", "--jobs", str(jobs), "--failed", str(tmp_path / "bad.csv"), *MODELS, *SAMPLING]
    argv[argv.index("--device") + 1] = "cpu"  # batch runs accelerate's process state on the device given
    assert cli.main(argv) == 0
    assert (tmp_path / "bad.csv").is_file()  # --failed reaches the failure log
    assert f"{AUDIO_NOT_KEPT} GIF output carries no sound: row 3" in capsys.readouterr().out  # said per job
    (f1, r1, s1), (f2, r2, s2) = recorded
    assert f1 == f2 == dataclasses.replace(FILES, device="cpu")
    d = str(tmp_path)
    common = {"parser": "parsing_atr.onnx", "face_pack": "buffalo_l", "search_dirs": ["dirA", "dirB"]}
    assert r1 == GenerateRequest(f"{d}/v1.mp4", [f"{d}/a.png", f"{d}/b.png"], f"{d}/o1.mp4", f"{d}/m1.npy",
                                 f"{d}/p1.mp4", 7, **common, garment_lock=False, keep_background=False)
    assert s1 == dataclasses.replace(SETTINGS, steps=4, guidance_scale=3.5, seed=13, scheduler="dpmpp_2m",
                                     context_frames=5, context_overlap=1)
    differs_everywhere(dataclasses.replace(s1, chunk_frames=0, batch_cfg=False, pose_strength=0.0,
                                           identity_strength=0.0), SETTINGS)
    assert r2 == GenerateRequest(f"{d}/v2.mp4", f"{d}/c.png", f"{d}/o2.mp4", None, None, None, **common,
                                 garment_lock=True, keep_background=True)
    assert s2 == SETTINGS


# ------------------------------------------------------------------------------------------ settings -> sampler


@pytest.fixture(scope="module")
def tiny_model():
    from m2h_core.config import tiny
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.models.m2h import M2HModel

    cfg = tiny()
    torch.manual_seed(0)
    model = M2HModel(cfg).eval()
    with torch.no_grad():  # the zero-initialised parts non-zero, so every condition changes the result
        for p in model.parameters():
            if torch.count_nonzero(p) == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    return cfg, model, FrozenEncoders.random(cfg)


class Recorder:
    """Wraps the model's conditioning and UNet calls (they run unchanged) to see what the sampler asked for."""

    def __init__(self, model, monkeypatch):
        self.encode_kwargs: list[dict] = []
        self.denoise_calls: list[tuple[int, tuple[int, ...] | None, bool]] = []
        enc, den = type(model).encode_conditions.__get__(model), type(model).denoise.__get__(model)  # unwrapped

        def encode_conditions(*a, **k):
            self.encode_kwargs.append(k)
            return enc(*a, **k)

        def denoise(z, t, cond, frames=None, **k):
            self.denoise_calls.append((z.shape[0], None if frames is None else tuple(frames.tolist()),
                                       k.get("motion_windows") is not None))
            return den(z, t, cond, frames=frames, **k)

        monkeypatch.setattr(model, "encode_conditions", encode_conditions)
        monkeypatch.setattr(model, "denoise", denoise)


def test_sampler_settings_reach_the_model(tiny_model, monkeypatch):
    from m2h_core.inference.inputs import IdentityInputs, VideoInputs

    cfg, model, enc = tiny_model
    g = torch.Generator().manual_seed(0)
    n, h, w = 7, cfg.height, cfg.width
    masks = torch.zeros(n, h, w)
    masks[:, h // 4: 3 * h // 4] = 1
    video = VideoInputs(torch.rand(n, 3, h, w, generator=g), masks, torch.rand(n, 3, h, w, generator=g))
    ident = IdentityInputs(torch.rand(3, h, w, generator=g), torch.rand(3, h, w, generator=g),
                           torch.randn(512, generator=g))
    base = SamplerSettings(steps=1, guidance_scale=2.0, seed=1, context_frames=4, context_overlap=1, chunk_frames=0,
                           batch_cfg=True, pose_strength=0.5, identity_strength=1.5)

    def run(**change):
        rec = Recorder(model, monkeypatch)
        lat = sample_video(model, enc, video, ident, settings=dataclasses.replace(base, **change), decode=False)
        return rec, lat.latents

    rec, ref = run()
    assert torch.equal(run()[1], ref)
    assert rec.encode_kwargs == [{"classifier_free": True, "pose_strength": 0.5, "identity_strength": 1.5}]
    # windows of 4 with overlap 1 over 7 frames: 0-3 and 3-6, each one call of [cond; uncond]
    assert rec.denoise_calls == [(2, (0, 1, 2, 3), False), (2, (3, 4, 5, 6), False)]
    rec, _ = run(context_overlap=2)  # 0-3, 2-5, 3-6
    assert [c[1][0] for c in rec.denoise_calls] == [0, 2, 3]
    rec, _ = run(context_frames=3, context_overlap=0)
    assert [c[1] for c in rec.denoise_calls] == [(0, 1, 2), (3, 4, 5), (4, 5, 6)]
    rec, _ = run(chunk_frames=7)  # both windows in one call, the motion modules told where they are
    assert rec.denoise_calls == [(2, None, True)]
    rec, same2 = run(batch_cfg=False)  # the two branches as two calls of one
    assert [c[0] for c in rec.denoise_calls] == [1, 1, 1, 1]
    torch.testing.assert_close(same2, ref, atol=1e-4, rtol=1e-4)  # the same numbers either way
    rec, _ = run(guidance_scale=1.0)
    assert rec.encode_kwargs[0]["classifier_free"] is False and {c[0] for c in rec.denoise_calls} == {1}
    rec, _ = run(steps=3)
    assert len(rec.denoise_calls) == 3 * 2
    for change in ({"seed": 2}, {"guidance_scale": 3.0}, {"scheduler": "euler"}, {"pose_strength": 1.0},
                   {"identity_strength": 0.5}):
        assert not torch.equal(run(**change)[1], ref), change  # the same settings give the same bits


def test_prepare_data_options_reach_process_video(monkeypatch, tmp_path):
    """train/prepare_data.py's --max-side, --max-frames and --min-frames arrive where videos are processed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import prepare_data

    seen = {}

    def fake_prepare(videos, out, pre, **kw):
        seen.update(kw)
        return {"split": {}, "failed": []}

    monkeypatch.setattr(prepare_data, "prepare_videos", fake_prepare)
    (tmp_path / "v").mkdir()
    assert prepare_data.main(["--videos", str(tmp_path / "v"), "--out", str(tmp_path / "c"), "--max-side", "300",
                              "--max-frames", "40", "--min-frames", "12", "--seed", "5", "--test-fraction",
                              "0.25"]) == 0
    assert {k: seen[k] for k in ("max_side", "max_frames", "min_frames", "seed", "test_fraction")} == {
        "max_side": 300, "max_frames": 40, "min_frames": 12, "seed": 5, "test_fraction": 0.25}
