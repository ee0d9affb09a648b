"""The built-in CPU demo (`m2h_core.demo.run.run_demo`) in its quick form: every stage runs and every file is usable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m2h_core.demo.run import STAND_INS, DemoSettings, run_demo

KEYS = ("clothing_psnr", "clothing_ssim", "head_colour_similarity", "head_psnr")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_demo(out, quick=True, seed=0, progress=lines.append)
    return out, report, lines


def psnr(a, b) -> float:
    """metrics.masked_psnr of (N, 3, H, W) images, pooled over all of them (as the VAE's recon_psnr)."""
    from m2h_core.metrics import masked_psnr

    return masked_psnr(a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1), pooled=True)


def test_quick_demo_writes_every_file(quick_run):
    out, report, _ = quick_run
    for name in ("contact_sheet.png", "identity_sheet.png", "m2h_tiny.safetensors", "metrics.json", "README.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    import cv2

    sheet = cv2.imread(str(report.identity_sheet))  # 3 labelled rows of 64 px x3, one column per person
    n = DemoSettings.quick().identity_sheet_people
    assert sheet.shape[0] > 3 * 64 * 3 and sheet.shape[1] == n * 32 * 3 + (n - 1) * 4
    assert report.video.name in ("result.mp4", "result.gif") and report.video.is_file()


def test_quick_demo_video_has_frames_size_and_fps(quick_run):
    from m2h_core.video_io import read_video

    _, report, _ = quick_run
    s = DemoSettings.quick()
    clip = read_video(str(report.video))
    assert clip.num_frames == s.test_frames == report.num_frames
    assert (clip.height, clip.width) == (64 * s.video_scale, 32 * s.video_scale) == report.video_size
    assert clip.fps == pytest.approx(s.fps, rel=1e-3)


def test_quick_demo_metrics_have_both_models(quick_run):
    out, report, _ = quick_run
    m = json.loads((out / "metrics.json").read_text())
    for model in ("trained", "untrained"):
        for k in KEYS:
            assert isinstance(m[model][k], float) and np.isfinite(m[model][k]), (model, k)
    assert set(m["definitions"]) >= set(KEYS)
    assert m["test_case"]["identity_in_training_set"] is False
    assert m["training"]["steps"] == DemoSettings.quick().train_steps
    assert m["heldout_mean"]["trained"]["cases"] == DemoSettings.quick().eval_cases
    # the stable keys: trained / untrained / VAE ceiling on the same pairs, identity across people, wall time
    # plus the shipped pretrained tiny M2H model (m2h_core.demo.pretrained), sampled on the same pairs
    assert set(m["heldout_mean"]) == {"pretrained", "trained", "untrained", "vae_ceiling"}
    assert m["pretrained_model"]["train_steps"] >= 1000 and m["identity"]["model"] == "pretrained"
    assert len(m["heldout_cases"]["pretrained"]) == DemoSettings.quick().eval_cases
    assert m["heldout_mean"]["vae_ceiling"]["cases"] == m["heldout_mean"]["trained"]["cases"]
    # one pair: its ceiling is the shown clip's VAE reconstruction
    assert m["heldout_mean"]["vae_ceiling"]["clothing_psnr"] == pytest.approx(
        m["vae_reconstruction_of_ground_truth"]["clothing_psnr"], abs=1e-3)
    assert m["identity"]["people"] == DemoSettings.quick().identity_sheet_people
    for k in ("face_colour_correlation", "hair_colour_correlation"):
        assert -1.0 <= m["identity"][k] <= 1.0, k
    assert 0 < m["seconds"]["total"] == pytest.approx(report.seconds, abs=0.1)
    assert m == json.loads(json.dumps(report.metrics))


def test_colour_correlation_measures_following_the_person():
    from m2h_core.demo.run import colour_correlation

    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, (6, 3))
    assert colour_correlation(truth * 0.5 + 0.2, truth) == pytest.approx(1.0)  # follows (any gain / offset)
    assert colour_correlation(1 - truth, truth) == pytest.approx(-1.0)
    # always the average face: no variation with the person -> undefined, not a high score
    assert np.isnan(colour_correlation(np.tile(truth.mean(0), (6, 1)), truth))
    # per-channel offsets between people are what counts, not that skin has more red than blue
    same_order = np.tile([[0.9, 0.6, 0.4]], (6, 1)) + rng.normal(0, 0.01, (6, 3))
    assert abs(colour_correlation(same_order, truth)) < 0.9
    nan_row = truth.copy()
    nan_row[0] = np.nan
    assert colour_correlation(nan_row, truth) == pytest.approx(1.0)


def test_quick_demo_training_beats_the_untrained_model(quick_run):
    """The quick run's 12 training steps already move the model away from its start in the right direction. The
    untrained model copies the given clothing frame (clothing_skip, output layer at zero): the garment on the
    scene's backdrop (clothing_fill "backdrop"), so a backdrop where the head and arms should be; training first
    learns to draw them. Measured (quick run, seed 0, trained - untrained on the held-out clip): head PSNR +1.04 dB,
    head colour similarity to the mannequin's head 0.72 vs 0.87 (background -0.03, full frame +0.04: with the
    backdrop given, nothing to learn there yet); a run whose training changes nothing scores exactly the untrained
    numbers."""
    _, report, _ = quick_run
    t, u = report.metrics["trained"], report.metrics["untrained"]
    assert t["head_psnr"] - u["head_psnr"] > 0.3, (t, u)
    assert u["head_colour_similarity_to_mannequin"] - t["head_colour_similarity_to_mannequin"] > 0.05, (t, u)


def test_quick_demo_reports_progress_by_stage(quick_run):
    _, _, lines = quick_run
    text = "\n".join(lines)
    for stage in ("[1/5 data]", "[2/5 vae]", "[3/5 train]", "[4/5 sample]", "[5/5 write]"):
        assert stage in text
    s = DemoSettings.quick()
    assert f"step {s.train_steps}/{s.train_steps}" in text and f"step {s.vae_steps}/{s.vae_steps}" in text


def test_quick_demo_readme_names_the_stand_ins(quick_run):
    out, _, _ = quick_run
    text = (out / "README.txt").read_text()
    for name, _ in STAND_INS:
        assert name in text
    for word in ("CLIP ViT-L/14", "ArcFace", "DWPose", "parsing", "SD-1.5"):
        assert word in text


def test_quick_demo_checkpoint_loads_as_a_pipeline(quick_run):
    from m2h_core.demo.run import _make_test_case, _score
    from m2h_core.inference.pipeline import load_pipeline
    from m2h_core.inference.sampler import SamplerSettings, sample_video

    out, report, _ = quick_run
    pipe = load_pipeline(out / "m2h_tiny.safetensors")
    assert pipe.cfg.name == "tiny"
    assert pipe.encoders.cfg.clothing_fill == "backdrop"  # the pipeline's encoders fill as the model was trained
    assert pipe.cfg.vae.scaling_factor == pytest.approx(report.metrics["vae"]["scaling_factor"])
    assert pipe.encoders.vae.config.scaling_factor == pytest.approx(pipe.cfg.vae.scaling_factor)
    # the file holds the trained model and the VAE it was scored with: sampling the demo's held-out case with the
    # demo's settings from the file gives the scores metrics.json reports for the trained model
    s = DemoSettings.quick()
    case = _make_test_case(0, s.test_frames, pipe.cfg.height, pipe.cfg.width, 2)
    settings = SamplerSettings(steps=s.sample_steps, guidance_scale=s.guidance_scale, scheduler=s.scheduler, seed=0,
                               context_frames=s.num_frames, context_overlap=s.num_frames // 2)
    res = sample_video(pipe.model, pipe.encoders, case.mannequin, case.clothing_masks, case.pose_images,
                       case.identity_image, case.identity_landmarks, case.arcface, settings)
    scores = _score(res.frames, case)
    for k, v in report.metrics["trained"].items():
        assert scores[k] == pytest.approx(v, abs=2e-3), k


def test_training_identity_image_is_the_same_person_in_other_clothes():
    """x_id in training must not show the target outfit (at test time it is another person's photo)."""
    from m2h_core.demo.run import _with_head_mask, _with_other_outfit
    from m2h_core.demo.synthetic import generate_clip

    clip = generate_clip(3, n_frames=4, height=128, width=64)
    other = _with_other_outfit(clip)
    assert other.identity == clip.identity
    assert np.array_equal(other.identity_embedding, clip.identity_embedding)
    assert other.identity_image.shape == clip.identity_image.shape
    assert not np.array_equal(other.identity_image, clip.identity_image)
    assert other.identity_landmarks.any()  # p_id is drawn, not blank
    assert np.array_equal(other.human, clip.human)  # the training target is untouched
    head = _with_head_mask(clip).face_mask
    assert (head >= clip.face_mask).all() and head.sum() > clip.face_mask.sum()  # face + hair
    assert not (head & clip.clothing_mask).any()


def test_garment_edge_band_widens_the_mirror_mask_on_both_sides_of_the_clothing_edge():
    """DemoSettings.garment_edge: the mirror loss's mask gains the pixels within k of the garment's edge, inside and
    outside it, and nothing deeper or farther."""
    from scipy.ndimage import distance_transform_cdt

    from m2h_core.demo.run import _with_garment_edge, _with_head_mask
    from m2h_core.demo.synthetic import generate_clip

    clip = _with_head_mask(generate_clip(3, n_frames=2, height=128, width=64))
    k = 3
    out = _with_garment_edge(clip, k)
    assert (out.face_mask >= clip.face_mask).all()  # the head stays in
    assert np.array_equal(out.human, clip.human) and np.array_equal(out.clothing_mask, clip.clothing_mask)
    cloth = clip.clothing_mask[0]
    added = out.face_mask[0] & ~clip.face_mask[0]
    inside, outside = (distance_transform_cdt(m, metric="chessboard") for m in (cloth, ~cloth))  # a (2k+1)^2 kernel
    assert (added & cloth).any() and (added & ~cloth).any()  # both sides of the edge
    assert (inside[cloth & added] <= k).all() and (outside[~cloth & added] <= k).all()
    band = out.face_mask[0]
    assert band[cloth & (inside <= k)].all() and band[~cloth & (outside <= k)].all()  # ... and all of them


def test_quick_demo_with_the_shipped_vae_and_its_fallback(tmp_path):
    """The full demo's default: the pretrained tiny VAE from m2h_core/assets, embedded in the checkpoint; a missing
    file falls back to training one, saying so."""
    from m2h_core.demo.tiny_vae import SHIPPED_VAE
    from m2h_core.inference.pipeline import load_pipeline

    s = DemoSettings.quick()
    s.vae_source = "shipped"
    lines: list[str] = []
    rep = run_demo(tmp_path / "a", settings=s, progress=lines.append)
    text = "\n".join(lines)
    assert "pretrained tiny VAE" in text and "training the tiny VAE" not in text
    assert rep.metrics["vae"]["heldout_recon_psnr"] > 18.5  # the demo's own held-out clip, not the file's claim
    vae = load_pipeline(rep.checkpoint).encoders.vae
    shipped = load_file(str(SHIPPED_VAE))
    for k, v in vae.state_dict().items():
        assert torch.equal(v, shipped[k]), k

    s.vae_path = str(tmp_path / "nowhere.safetensors")
    lines.clear()
    run_demo(tmp_path / "b", settings=s, progress=lines.append)
    text = "\n".join(lines)
    assert "nowhere.safetensors" in text and "training the tiny VAE on" in text


def test_shipped_vae_reproduces_its_recorded_held_out_figures():
    """The shipped asset loads and gives the figures recorded for it: its metadata's held-out reconstruction PSNR
    (on the held-out clips `tiny_vae.pretrain` scores: seed + 1, 4 clips x 8 frames), and the demo's clothing
    ceiling on its held-out pairs (metrics.json heldout_mean.vae_ceiling, seed 0: 17.53 / 16.15 / 30.85 dB)."""
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    from m2h_core.demo.run import _make_test_case, _score
    from m2h_core.demo.synthetic import generate_dataset
    from m2h_core.demo.tiny_vae import (SHIPPED_VAE, demo_config, load_vae_weights, reconstruct,
                                        vae_training_images)

    cfg = demo_config()
    torch.manual_seed(0)
    vae = AutoencoderKL(**cfg.vae.vae_kwargs())
    load_vae_weights(vae, SHIPPED_VAE)
    with safe_open(str(SHIPPED_VAE), "pt") as f:
        meta = f.metadata()
    hold = vae_training_images(generate_dataset(4, int(meta["seed"]) + 1, n_frames=8, height=128, width=64), 64, 32)
    assert psnr(reconstruct(vae, hold), hold) == pytest.approx(float(meta["recon_psnr"]), abs=0.05)
    for k, want in enumerate((17.53, 16.15, 30.85)):
        case = _make_test_case(1000 * k, 16, 64, 32, 2)
        got = _score(reconstruct(vae, case.ground_truth), case)["clothing_psnr"]
        assert got == pytest.approx(want, abs=0.15), (k, got)
