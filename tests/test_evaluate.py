"""train/evaluate.py: Table I protocol (chunks at the training stride, masked metrics, CSIM, FVD over all chunks,
bootstrap intervals, JSON + Markdown with the paper's rows) on a synthetic cache with a tiny checkpoint."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from m2h_core import metrics
from m2h_core.frames import to_nhwc, to_uint8
from m2h_core.checkpoint import save_checkpoint
from m2h_core.config import tiny
from m2h_core.models.m2h import M2HModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import evaluate as evaluate_cli  # noqa: E402 - train/ is on sys.path from here
import prepare_data  # noqa: E402

VIDEO_FRAMES = 45  # every synthetic test video


class _TinyI3D(nn.Module):
    """Stand-in for the I3D TorchScript (same call signature): 6-d features of per-frame channel means."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(30, 6, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        feats = x[:, :, :10].mean(dim=(3, 4)).reshape(x.shape[0], -1) @ self.proj
        return feats if return_features else torch.softmax(feats, dim=1)


def _toy_embedder(img: np.ndarray) -> np.ndarray | None:
    """'Face embedding' of an RGB uint8 image: the mean colour of its top quarter and of the rest; None when the
    top quarter is black."""
    top = img[: img.shape[0] // 4].reshape(-1, 3).astype(np.float64)
    if top.max() == 0:
        return None
    return np.concatenate([top.mean(0), img[img.shape[0] // 4:].reshape(-1, 3).mean(0)]) + 1.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cache = tmp / "cache"
    prepare_data.prepare_synthetic(6, cache, height=128, width=64, frames=VIDEO_FRAMES, test_fraction=0.5,
                                   log=lambda s: None)
    torch.manual_seed(0)
    ckpt = tmp / "m2h.safetensors"
    save_checkpoint(M2HModel(tiny()), ckpt)
    i3d = tmp / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_TinyI3D()), str(i3d))
    return tmp, cache, ckpt, i3d


def _args(ckpt, cache, *extra):
    return ["--checkpoint", str(ckpt), "--data", str(cache), "--random-encoders", "--steps", "2", "--guidance", "2",
            "--overlap", "1", "--device", "cpu", "--bootstrap", "200", *map(str, extra)]


# --------------------------------------------------------------------------------------------- pure pieces


def test_chunk_starts_by_hand():
    # 45 frames at stride 4 -> 12 sampled frames (0..44) -> three 4-frame chunks, the last ending exactly on 44
    assert evaluate_cli.chunk_starts(45, 4, 4) == [0, 16, 32]
    assert evaluate_cli.chunk_starts(44, 4, 4) == [0, 16]  # 11 sampled frames: the remainder is dropped
    assert evaluate_cli.chunk_starts(13, 4, 4) == [0]  # span (4-1)*4+1 = 13 frames fits once
    assert evaluate_cli.chunk_starts(12, 4, 4) == []
    assert evaluate_cli.chunk_starts(360, 16, 4) == [0, 64, 128, 192, 256]  # a UBC-length video: 90 -> 5 chunks
    assert evaluate_cli.chunk_starts(16, 16, 1) == [0]  # the old protocol: the first 16 frames
    with pytest.raises(ValueError, match="stride"):
        evaluate_cli.chunk_starts(10, 4, 0)


def test_default_stride_is_the_runs_frame_stride(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"frame_stride": 2}))
    assert evaluate_cli.training_stride(run / "m2h_final.safetensors") == (2, str(run / "train_config.json"))
    step = run / "checkpoints" / "step_00000004" / "m2h.safetensors"
    assert evaluate_cli.training_stride(step)[0] == 2
    assert evaluate_cli.training_stride(tmp_path / "elsewhere" / "m2h.safetensors")[0] == 4  # the paper's


def test_bootstrap_pooled_mean_and_interval_by_hand():
    # two videos: chunks (1, 1, 1) and (4): pooled mean 7/4 (not the mean of video means, 2.5). Each resample draws
    # video 0 twice (p 1/4, mean 1), both (1/2, 1.75) or video 1 twice (1/4, mean 4): the 2.5/97.5 percentiles of
    # 2000 resamples are 1 and 4.
    point, lo, hi = evaluate_cli.bootstrap_mean_ci([[1, 1, 1], [4]], n_boot=2000, seed=0)
    assert point == pytest.approx(1.75) and lo == pytest.approx(1.0) and hi == pytest.approx(4.0)
    # NaN / None chunks are dropped, a video without values is dropped
    assert evaluate_cli.bootstrap_mean_ci([[1, None, float("nan")], [], [3]], n_boot=10)[0] == pytest.approx(2.0)
    assert evaluate_cli.bootstrap_mean_ci([[2.0, 2.0]], n_boot=10) == (2.0, None, None)  # one video: no interval
    assert evaluate_cli.bootstrap_mean_ci([[None]]) == (None, None, None)


def test_bootstrap_interval_contains_point_and_narrows_with_more_videos():
    rng = np.random.default_rng(1)
    few = [list(rng.normal(20 + v, 1.0, 3)) for v in rng.normal(0, 2, 8)]
    many = [list(rng.normal(20 + v, 1.0, 3)) for v in rng.normal(0, 2, 128)]
    p1, lo1, hi1 = evaluate_cli.bootstrap_mean_ci(few, 1000, seed=0)
    p2, lo2, hi2 = evaluate_cli.bootstrap_mean_ci(many, 1000, seed=0)
    assert lo1 < p1 < hi1 and lo2 < p2 < hi2
    assert (hi2 - lo2) < 0.5 * (hi1 - lo1)  # ~ 1/sqrt(n): 4x the width for 16x fewer videos
    assert evaluate_cli.bootstrap_mean_ci(few, 1000, seed=0) == (p1, lo1, hi1)  # seeded
    flat = evaluate_cli.bootstrap_mean_ci([[0.5, 0.5]] * 5, 100)
    assert flat == (0.5, 0.5, 0.5)  # data that do not vary: a degenerate interval


def test_bootstrap_fvd_point_is_the_distance_over_all_chunks():
    rng = np.random.default_rng(0)
    real = [rng.normal(0, 1, (3, 4)) for _ in range(10)]
    fake = [rng.normal(0.5, 1, (3, 4)) for _ in range(10)]
    point, lo, hi = evaluate_cli.bootstrap_fvd_ci(real, fake, n_boot=100, seed=0)
    assert point == pytest.approx(metrics.frechet_distance(np.concatenate(real), np.concatenate(fake)))
    assert lo < hi and lo <= point <= hi
    same = evaluate_cli.bootstrap_fvd_ci(real, real, n_boot=20, seed=0)
    assert abs(same[0]) < 1e-6 and abs(same[1]) < 1e-6 and abs(same[2]) < 1e-6


def test_zeroed_mask_mode_scores_whole_frames_by_hand():
    """inside: PSNR from the MSE over mask pixels; zeroed: the MSE over the whole frame of v ⊙ M_c, i.e. diluted by
    the mask's area fraction f: PSNR_zeroed = PSNR_inside - 10 log10 f."""
    gt = np.full((2, 32, 16, 3), 100, np.uint8)
    gen = gt.copy()
    mask = np.zeros((2, 32, 16), bool)
    mask[:, 8:16, 4:12] = True  # f = 64 / 512 = 1/8
    gen[mask] = 110
    gen[~mask] = 0  # outside the mask nothing counts in either mode
    inside = evaluate_cli.score_chunk(gen, gt, mask, "inside", {}, torch.device("cpu"))
    zeroed = evaluate_cli.score_chunk(gen, gt, mask, "zeroed", {}, torch.device("cpu"))
    expect = 10 * math.log10(255**2 / 10**2)
    assert inside["psnr"] == pytest.approx(expect)
    assert zeroed["psnr"] == pytest.approx(expect - 10 * math.log10(1 / 8))


def test_split_file_text_and_json(tmp_path):
    (tmp_path / "ids.txt").write_text("# test videos\nb\n\na\n")
    assert evaluate_cli.read_id_list(tmp_path / "ids.txt") == ["b", "a"]
    (tmp_path / "split.json").write_text(json.dumps({"train": ["x"], "test": ["a", "b"]}))
    assert evaluate_cli.read_id_list(tmp_path / "split.json") == ["a", "b"]
    assert evaluate_cli.split_digest(["b", "a"]) == evaluate_cli.split_digest(["a", "b"])
    assert evaluate_cli.split_digest(["a"]) != evaluate_cli.split_digest(["a", "b"])
    (tmp_path / "bad.json").write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="no 'test' list"):
        evaluate_cli.read_id_list(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------- end to end


def test_chunking_at_stride_4_on_a_cache(setup):
    """Every test video (45 frames) at stride 4 in 4-frame chunks: 12 sampled frames -> 3 chunks each, frames
    (0,4,8,12), (16,..,28), (32,..,44), each scored against its own ground truth."""
    _, cache, ckpt, _ = setup
    res = evaluate_cli.evaluate(evaluate_cli.build_parser().parse_args(
        _args(ckpt, cache, "--frames", 4, "--stride", 4, "--no-fvd", "--no-csim")))
    test_ids = json.loads((cache / "split.json").read_text())["test"]
    assert len(test_ids) == 3 and [v["video"] for v in res["videos"]] == test_ids
    assert res["protocol"]["chunks"] == 3 * 3
    for v in res["videos"]:
        assert [c["frame_indices"] for c in v["chunks"]] == [[0, 4, 8, 12], [16, 20, 24, 28], [32, 36, 40, 44]]
        assert all(c["identity_index"] == -1 for c in v["chunks"])  # synthetic clips carry a reference photo
    # the summary is the mean over all 9 chunks, recomputed here from the per-chunk numbers
    psnr = [c["psnr"] for v in res["videos"] for c in v["chunks"]]
    assert res["summary"]["psnr"] == pytest.approx(np.mean(psnr))
    assert len(set(np.round(psnr, 6))) > 1  # chunks differ (own frames, own seed)


def test_evaluate_end_to_end_outputs_every_metric(setup, capsys):
    tmp, cache, ckpt, i3d = setup
    out = tmp / "results" / "eval.json"
    frames_dir = tmp / "generated"
    a = evaluate_cli.build_parser().parse_args(
        _args(ckpt, cache, "--frames", 10, "--stride", 4, "--i3d", i3d, "--out", out, "--dataset-name", "UBC fashion",
              "--save-frames", frames_dir))
    res = evaluate_cli.evaluate(a, embedder=_toy_embedder)
    captured = capsys.readouterr()
    assert "warning: FVD from 3 chunks < 401" in captured.err  # 45 frames: one 10-frame chunk (span 37) per video
    assert "PSNR" in captured.out and "FVD" in captured.out
    saved = json.loads(out.read_text())
    assert saved["summary"] == pytest.approx(res["summary"])
    s, ci = saved["summary"], saved["ci95"]
    for k in ("psnr", "ssim", "lpips", "lpips_alex", "csim", "fvd"):
        assert s[k] is not None and math.isfinite(s[k]), k
        lo, hi = ci[k]
        assert lo < hi, k  # three different videos: the interval is not a point
        if k != "fvd":
            assert lo <= s[k] <= hi, k
    assert s["csim_face_rate"] == 1.0 and -1 <= s["csim"] <= 1
    # Recompute from the saved generated chunks and the cache, independently of evaluate's loop: the masked
    # metrics against the chunk's own ground truth, CSIM against x_id, and FVD over the I3D features of all chunks.
    from safetensors.numpy import load_file

    from m2h_core.training.dataset import ClipCacheDataset, _read_png

    assert saved["protocol"]["chunks"] == 3 and saved["protocol"]["fvd"]
    test_ids = json.loads((cache / "split.json").read_text())["test"]
    ds = ClipCacheDataset(cache, None, ids=test_ids, height=64, width=32)
    net = metrics.load_i3d(i3d)
    real_feats, gen_feats = [], []
    for i, v in enumerate(saved["videos"]):
        (c,) = v["chunks"]
        assert c["frame_indices"] == list(range(0, 40, 4))
        item = ds.window(i, 10, 0, 4)
        gt = to_uint8(to_nhwc(item["frames"]))
        gen = np.stack([_read_png(frames_dir / v["video"] / "00" / f"{f:05d}.png") for f in range(10)])
        mask = item["clothing_masks"].numpy() > 0.5
        assert c["psnr"] == pytest.approx(metrics.masked_psnr(gen, gt, mask))
        assert c["ssim"] == pytest.approx(metrics.masked_ssim(gen, gt, mask))
        ref = _toy_embedder(to_uint8(to_nhwc(item["identity_image"])))
        cos = [metrics.cosine_similarity(_toy_embedder(g), ref) for g in gen]
        assert c["csim"] == pytest.approx(np.mean(cos))
        real_feats.append(metrics.i3d_features([gt], net)[0])
        gen_feats.append(metrics.i3d_features([gen], net)[0])
    feats = load_file(str(out.with_suffix(".i3d.safetensors")))
    np.testing.assert_allclose(feats["real"], np.stack(real_feats), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["fake"], np.stack(gen_feats), rtol=1e-5, atol=1e-6)
    assert feats["video"].tolist() == [0, 1, 2]
    assert s["fvd"] == pytest.approx(metrics.frechet_distance(np.stack(real_feats), np.stack(gen_feats)), rel=1e-4)
    split = json.loads((cache / "split.json").read_text())
    assert saved["protocol"]["split_sha256"] == evaluate_cli.split_digest(split["test"])
    assert saved["protocol"]["test_ids"] == split["test"]
    assert saved["paper_table_i"]["rows"][5]["fvd"] == 13.35  # M2HVideo on UBC
    md = out.with_suffix(".md").read_text()
    for header in ("PSNR↑", "SSIM↑", "LPIPS↓", "CSIM↑", "FVD↓"):
        assert f"UBC fashion {header}" in md and f"ASOS {header}" in md
    ours = next(line for line in md.splitlines() if "(this run)" in line)
    for k, d in (("psnr", 2), ("ssim", 3), ("lpips", 3), ("csim", 3), ("fvd", 2)):
        assert f"{s[k]:.{d}f} [{ci[k][0]:.{d}f}, {ci[k][1]:.{d}f}]" in ours, k
    assert "| M2HVideo (paper) | 23.47 | 0.886 | 0.069 | 0.935 | 13.35 | 25.23 |" in md
    assert "LPIPS-Alex" in md and "Table I" in md and "FVD from 3 chunks" in md


def test_split_file_selects_the_videos_and_models_folder_is_searched(setup, tmp_path):
    _, cache, ckpt, i3d = setup
    one = json.loads((cache / "split.json").read_text())["test"][1]
    (tmp_path / "ids.txt").write_text(one + "\n")
    models = tmp_path / "models"
    (models / "fvd").mkdir(parents=True)
    (models / "fvd" / metrics.I3D_FILENAME).write_bytes(i3d.read_bytes())
    res = evaluate_cli.evaluate(evaluate_cli.build_parser().parse_args(
        _args(ckpt, cache, "--frames", 10, "--no-csim", "--split-file", tmp_path / "ids.txt", "--models", models)))
    assert [v["video"] for v in res["videos"]] == [one]
    assert res["ci95"]["psnr"] is None and any("one test video" in n for n in res["notes"])  # no interval
    assert res["protocol"]["fvd"]  # I3D found in --models/fvd/
    assert res["summary"]["fvd"] is None and any("needs >= 2 chunks" in n for n in res["notes"])  # one chunk


def test_evaluate_bad_inputs(setup, tmp_path, capsys):
    tmp, cache, ckpt, _ = setup
    assert evaluate_cli.main(_args(tmp / "missing.safetensors", cache)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate_cli.main(_args(ckpt, tmp / "nocache")) == 2
    assert "prepare_data" in capsys.readouterr().err
    (tmp_path / "ids.txt").write_text("no-such-video\n")
    assert evaluate_cli.main(_args(ckpt, cache, "--split-file", tmp_path / "ids.txt")) == 2
    assert "re-run prepare_data" in capsys.readouterr().err
    assert evaluate_cli.main(_args(ckpt, cache, "--frames", 16, "--stride", 4, "--no-fvd")) == 2  # span 61 > 45
    assert "lower --frames or --stride" in capsys.readouterr().err
    bad = tmp_path / "i3d_torchscript.pt"
    bad.write_bytes(b"not torchscript")
    assert evaluate_cli.main(_args(ckpt, cache, "--frames", 10, "--i3d", bad, "--no-csim")) == 2
    err = capsys.readouterr().err
    assert "FVD" in err and str(bad) in err


def test_collect_puts_runs_beside_the_paper_ablation_rows(tmp_path, capsys):
    def result(method, sha, psnr):
        summary = {"psnr": psnr, "ssim": 0.8, "lpips": 0.1, "csim": 0.9, "fvd": 20.0}
        return {"method": method, "summary": summary, "ci95": {"psnr": [psnr - 1, psnr + 1]},
                "protocol": {"split_sha256": sha, "frames": 16, "stride": 4, "mask_mode": "inside", "chunks": 300}}

    (tmp_path / "a.json").write_text(json.dumps(result("H0_A0_M0", "s1", 20.5)))
    (tmp_path / "b.json").write_text(json.dumps(result("alpha0.05_beta0", "s1", 19.25)))
    md = tmp_path / "table.md"
    assert evaluate_cli.main(["--collect", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                              "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| H0_A0_M0 | 20.50 [19.50, 21.50] | 0.800 | 0.100 | 0.900 | 20.00 | 300 |" in text
    assert "| H0_A0_M0 (paper) | 20.98 | 0.843 | 0.082 | 0.918 | 19.34 |" in text  # Table III row 1
    assert "| alpha0.05_beta0 (paper) | 20.41 | 0.842 | 0.101 | 0.907 | 30.37 |" in text  # Table IV row 5
    assert "warning" not in text
    (tmp_path / "c.json").write_text(json.dumps(result("other", "s2", 21.0)))
    assert evaluate_cli.main(["--collect", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 0
    assert "split_sha256" in capsys.readouterr().err  # evaluated on different test sets
    (tmp_path / "bad.json").write_text("{}")
    assert evaluate_cli.main(["--collect", str(tmp_path / "bad.json")]) == 2
    assert "not an evaluate.py result" in capsys.readouterr().err
