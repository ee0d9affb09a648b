"""Known-answer tests for the paper's metrics: masked PSNR/SSIM/LPIPS, CSIM, FVD and the Table I printer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from m2h_core.metrics import (
    I3D_FILENAME,
    LPIPS,
    LPIPS_CHANNELS,
    LPIPS_FILENAME,
    LPIPS_LAYERS,
    cosine_similarity,
    csim,
    format_table,
    frechet_distance,
    frechet_distance_from_stats,
    fvd,
    gaussian_stats,
    i3d_features,
    i3d_preprocess,
    load_i3d,
    load_lpips_lin_weights,
    masked_lpips,
    masked_psnr,
    masked_ssim,
    split_clips,
)
from m2h_core.vgg import MissingWeightsError, VGGFeatures


def _images(n: int = 2, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ PSNR


def test_psnr_identical_is_inf() -> None:
    a = _images()
    assert masked_psnr(a, a) == math.inf
    assert masked_psnr(a, a, np.ones(a.shape[1:3], bool)) == math.inf


def test_psnr_known_mse_and_mask_ignores_outside() -> None:
    target = np.zeros((1, 16, 16, 3), np.uint8)
    pred = np.full_like(target, 200)  # huge error outside the mask...
    mask = np.zeros((1, 16, 16), bool)
    mask[0, 4:12, 4:12] = True
    pred[0][mask[0]] = 10  # ...error 10 inside: MSE = 100 (0..255 scale)
    expected = 10 * math.log10(255**2 / 100)
    assert masked_psnr(pred, target, mask) == pytest.approx(expected, abs=1e-9)
    # float input in [0,1] gives the same number; a uint8 0/255 mask works too
    got = masked_psnr(pred.astype(np.float32) / 255, target.astype(np.float32) / 255, mask.astype(np.uint8) * 255)
    assert got == pytest.approx(expected, abs=1e-5)
    # without the mask the 200-error dominates
    assert masked_psnr(pred, target) < 10


def test_psnr_per_frame_and_empty_mask() -> None:
    target = np.zeros((3, 8, 8, 3), np.uint8)
    pred = target.copy()
    pred[1] = 255
    pred[2] = 10
    mask = np.ones((3, 8, 8), bool)
    mask[2] = False
    per = masked_psnr(pred, target, mask, per_frame=True)
    assert per[0] == math.inf and per[1] == pytest.approx(0.0) and math.isnan(per[2])
    assert masked_psnr(pred[:2], target[:2]) == math.inf  # mean of (inf, 0)
    assert masked_psnr(pred[1:], target[1:], mask[1:]) == pytest.approx(0.0)  # empty-mask frame skipped
    with pytest.raises(ValueError, match="shape"):
        masked_psnr(pred, target, np.ones((2, 8, 8), bool))


def test_psnr_pooled_is_one_mse_over_all_frames() -> None:
    """pooled: MSE 0 on frame 0 and 100 on frame 1 (uint8 scale), equal pixel counts -> MSE 50 over the set."""
    target = np.zeros((2, 8, 8, 3), np.uint8)
    pred = target.copy()
    pred[1] = 10
    assert masked_psnr(pred, target, pooled=True) == pytest.approx(10 * math.log10(255**2 / 50), abs=1e-9)
    assert masked_psnr(pred, target) == math.inf  # the per-frame mean differs: (inf + 28.1) / 2
    assert math.isnan(masked_psnr(pred, target, np.zeros((2, 8, 8), bool), pooled=True))


# ------------------------------------------------------------------------------------------ SSIM


def test_ssim_identical_is_one_and_matches_skimage_inside_border() -> None:
    from skimage.metrics import structural_similarity

    a = _images(1, 40, 40, seed=1)
    assert masked_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(a.astype(int) + np.random.default_rng(2).integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(
        noisy[0] / 255.0,
        a[0] / 255.0,
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    interior = np.zeros((40, 40), bool)
    interior[5:-5, 5:-5] = True  # skimage's mean crops (win_size-1)//2 = 5 px
    assert masked_ssim(noisy, a, interior) == pytest.approx(ref, abs=1e-10)
    assert masked_ssim(noisy, a) < 0.99


def test_ssim_ignores_changes_far_outside_mask() -> None:
    a = _images(1, 40, 60, seed=3)
    b = a.copy()
    b[0, :, 40:] = 255 - b[0, :, 40:]  # change columns >= 40
    mask = np.zeros((40, 60), bool)
    mask[:, :30] = True  # 10 px away > the 5 px window radius
    assert masked_ssim(b, a, mask) == pytest.approx(1.0, abs=1e-12)
    near = np.zeros((40, 60), bool)
    near[:, 35:45] = True
    assert masked_ssim(b, a, near) < 0.9


# ------------------------------------------------------------------------------------------ LPIPS


def _lpips_lin_file(path: Path, seed: int = 0, only_first: bool = False) -> list[torch.Tensor]:
    """Write lin weights with the lpips package's key layout (Dropout at model.0, 1x1 conv at model.1)."""
    g = torch.Generator().manual_seed(seed)
    ws = [torch.rand(1, c, 1, 1, generator=g) / c for c in LPIPS_CHANNELS]
    if only_first:
        ws = [ws[0]] + [torch.zeros_like(w) for w in ws[1:]]
    torch.save({f"lin{k}.model.1.weight": w for k, w in enumerate(ws)}, path)
    return ws


@pytest.fixture(scope="module")
def rand_vgg() -> VGGFeatures:
    return VGGFeatures.random(0, LPIPS_LAYERS)


def test_lpips_lin_file_layout(tmp_path: Path) -> None:
    f = tmp_path / LPIPS_FILENAME
    ws = _lpips_lin_file(f, seed=3)
    lins = load_lpips_lin_weights(f)
    assert [tuple(w.shape) for w in lins] == [(1, c, 1, 1) for c in LPIPS_CHANNELS]
    for got, want in zip(lins, ws):
        assert torch.equal(got, want)


def _bilinear_matrix(out_n: int, in_n: int) -> np.ndarray:
    """(out_n, in_n) weights of 1-D bilinear resampling with half-pixel centres (align_corners=False): output
    pixel i samples the input at x = (i + 0.5)·in/out - 0.5, clamped to the first pixel."""
    a = np.zeros((out_n, in_n))
    for i in range(out_n):
        x = max((i + 0.5) * in_n / out_n - 0.5, 0.0)
        i0 = min(int(np.floor(x)), in_n - 1)
        i1 = min(i0 + 1, in_n - 1)
        a[i, i0] += 1 - (x - i0)
        a[i, i1] += x - i0
    return a


def _hand_lpips_layers(model: LPIPS, lins: list[torch.Tensor], a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Per layer, the (N, h_l, w_l) map sum_c w_c (fa_c/|fa| - fb_c/|fb|)^2, in float64 from the raw features."""
    xa = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    xb = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        fa, fb = model.vgg(xa), model.vgg(xb)
    out = []
    for k, name in enumerate(LPIPS_LAYERS):
        ga, gb = fa[name].double().numpy(), fb[name].double().numpy()  # (N, C, h, w)
        na = ga / (np.sqrt((ga**2).sum(1, keepdims=True)) + 1e-10)
        nb = gb / (np.sqrt((gb**2).sum(1, keepdims=True)) + 1e-10)
        w = lins[k].double().numpy().reshape(1, -1, 1, 1)
        out.append(((na - nb) ** 2 * w).sum(1))
    return out


def test_lpips_all_five_layers_known_answer(rand_vgg: VGGFeatures) -> None:
    """LPIPS (Zhang et al. 2018, Eq. 1) = sum over the 5 layers of the spatial mean of the lin-weighted squared
    difference of unit-normalised features. The masked form: each layer's map resampled bilinearly to the frame."""
    g = torch.Generator().manual_seed(11)
    # deeper layers of the random VGG differ less; scale their lin weights so each layer is ~1/5 of the answer
    lins = [torch.rand(1, c, 1, 1, generator=g) / c * s for c, s in zip(LPIPS_CHANNELS, (1, 10, 50, 200, 300))]
    model = LPIPS(rand_vgg, lins)
    a = _images(2, 32, 48, seed=4)
    b = _images(2, 32, 48, seed=5)
    layers = _hand_lpips_layers(model, lins, a, b)
    assert [m.shape[1:] for m in layers] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    means = np.array([m.mean(axis=(1, 2)) for m in layers])  # (5, N)
    assert (means > 0.1 * means.sum(0)).all()  # every layer carries weight in the answer
    # whole frame: the lpips package's definition (spatial average per layer, summed)
    np.testing.assert_allclose(masked_lpips(a, b, model=model, per_frame=True), means.sum(0), rtol=1e-5)
    # masked: the map is the sum of the layers' maps, each resampled to 32x48 with half-pixel bilinear weights
    full = sum(_bilinear_matrix(32, m.shape[1]) @ m @ _bilinear_matrix(48, m.shape[2]).T for m in layers)
    mask = np.zeros((2, 32, 48), bool)
    mask[0, :10, :7] = True  # corner: the deep layers' clamped edge
    mask[1, 5:, 20:] = True
    per = masked_lpips(a, b, mask, model=model, per_frame=True)
    np.testing.assert_allclose(per, [full[i][mask[i]].mean() for i in range(2)], rtol=1e-5)
    assert masked_lpips(a, a, model=model) == 0.0


def test_lpips_mask_ignores_far_pixels(tmp_path: Path, rand_vgg: VGGFeatures) -> None:
    f = tmp_path / "lin.pth"
    _lpips_lin_file(f, seed=1, only_first=True)  # relu1_2 only: 5x5 receptive field
    model = LPIPS(rand_vgg, load_lpips_lin_weights(f))
    a = _images(1, 32, 64, seed=6)
    b = a.copy()
    b[0, :, 40:] = 0
    far = np.zeros((32, 64), bool)
    far[:, :30] = True
    assert masked_lpips(b, a, far, model=model) == 0.0
    near = ~far
    assert masked_lpips(b, a, near, model=model) > 0


def test_lpips_full_model_identical_zero_and_ordering() -> None:
    model = LPIPS.random(2)
    a = _images(1, 32, 32, seed=7)
    small = np.clip(a.astype(int) + 8, 0, 255).astype(np.uint8)
    big = 255 - a
    assert masked_lpips(a, a, model=model) == 0.0
    assert 0 < masked_lpips(small, a, model=model) < masked_lpips(big, a, model=model)


def test_lpips_missing_files_name_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M2H_MODELS", str(tmp_path))
    with pytest.raises(MissingWeightsError) as info:
        LPIPS.from_files()
    msg = str(info.value)
    assert LPIPS_FILENAME in msg and "lpips" in msg and str(tmp_path / "lpips") in msg
    (tmp_path / "lpips").mkdir()
    _lpips_lin_file(tmp_path / "lpips" / LPIPS_FILENAME)
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        LPIPS.from_files()


def test_lpips_rejects_wrong_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(ValueError, match="lin1"):
        load_lpips_lin_weights(bad)


# ------------------------------------------------------------------------------------------ CSIM


def _toy_embedder(img: np.ndarray) -> np.ndarray | None:
    """'Face' = mean colour of the top-left 4x4 patch; a black patch means no face."""
    patch = img[:4, :4].reshape(-1, 3).astype(np.float64).mean(0)
    return None if patch.sum() == 0 else patch


def test_cosine_known_values() -> None:
    assert cosine_similarity([1, 0], [0, 2]) == pytest.approx(0.0)
    assert cosine_similarity([1, 1], [-2, -2]) == pytest.approx(-1.0)
    assert cosine_similarity(torch.tensor([3.0, 4.0]), np.array([6.0, 8.0])) == pytest.approx(1.0)


def test_csim_reference_image_and_missing_faces() -> None:
    ref = np.zeros((8, 8, 3), np.uint8)
    ref[..., 0] = 200
    gen = np.zeros((3, 8, 8, 3), np.uint8)
    gen[0, ..., 0] = 100  # same direction -> 1
    gen[1, ..., 1] = 100  # orthogonal -> 0
    # gen[2] is black: no face, skipped
    per = csim(gen, ref, _toy_embedder, per_frame=True)
    assert per[0] == pytest.approx(1.0) and per[1] == pytest.approx(0.0) and math.isnan(per[2])
    assert csim(gen, ref, _toy_embedder) == pytest.approx(0.5)
    assert csim(gen[:2], gen[:2], _toy_embedder) == pytest.approx(1.0)  # pairwise with ground truth
    with pytest.raises(ValueError, match="reference"):
        csim(gen, np.zeros((8, 8, 3), np.uint8), _toy_embedder)


# ------------------------------------------------------------------------------------------ FVD


class _TinyI3D(nn.Module):
    """Stand-in for the I3D TorchScript: same call signature, 4-d features of per-frame channel means."""

    def __init__(self, frames: int = 10) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * frames, 4, generator=g))
        self.frames = frames

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[-1] == 224 and x.shape[-2] == 224
        means = x[:, :, : self.frames].mean(dim=(3, 4)).reshape(x.shape[0], -1)
        feats = means @ self.proj
        if return_features:
            return feats
        return torch.softmax(feats, dim=1)


@pytest.fixture(scope="module")
def tiny_i3d_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fvd") / I3D_FILENAME
    torch.jit.save(torch.jit.script(_TinyI3D()), str(path))
    return path


def _videos(n: int, seed: int, shift: float = 0.0, t: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(0.2, 0.7, (t, 1, 1, 3)) + shift
        out.append(np.clip(base + rng.normal(0, 0.02, (t, 20, 30, 3)), 0, 1).astype(np.float32))
    return out


def test_fvd_with_torchscript_from_disk(tiny_i3d_file: Path) -> None:
    i3d = load_i3d(tiny_i3d_file)
    real = _videos(8, seed=0)
    assert abs(fvd(real, real, i3d, batch_size=3)) < 1e-6
    feats = i3d_features(real, i3d, batch_size=3)
    assert feats.shape == (8, 4)  # features, not softmax probabilities
    assert not np.allclose(feats.sum(1), 1.0)
    near = frechet_distance(feats, i3d_features(_videos(8, seed=1), i3d))
    far = frechet_distance(feats, i3d_features(_videos(8, seed=1, shift=0.25), i3d))
    assert 0 < near < far
    with pytest.raises(ValueError, match="at least 10"):
        i3d_features(_videos(2, seed=0, t=9), i3d)


class _MeanFeatures(nn.Module):
    """Stand-in I3D whose features are known: the mean of the first `dim` frames' red channel, one per frame."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
                ) -> torch.Tensor:
        return x[:, 0, : self.dim].mean(dim=(-1, -2))


def _feature_videos(points: list[tuple[float, float]]) -> list[np.ndarray]:
    """Constant-colour videos (10 frames) whose stand-in features are `points` (i3d_preprocess maps v -> 2v - 1)."""
    out = []
    for p in points:
        v = np.full((10, 16, 24, 3), 0.5, np.float32)
        v[0, ..., 0], v[1, ..., 0] = (p[0] + 1) / 2, (p[1] + 1) / 2
        out.append(v)
    return out


def test_fvd_known_nonzero_distance() -> None:
    """Two sets of 4 feature points m ± a·e1, m ± b·e2: mean m, unbiased covariance diag(2a²/3, 2b²/3). For
    diagonal covariances the Fréchet distance is |m1 - m2|² + sum_i (s1_i - s2_i)² (s = standard deviations)."""

    def cross(m: tuple[float, float], a: float, b: float) -> list[tuple[float, float]]:
        return [(m[0] + a, m[1]), (m[0] - a, m[1]), (m[0], m[1] + b), (m[0], m[1] - b)]

    real = _feature_videos(cross((0.0, 0.0), 0.3, 0.6))  # variances 0.06, 0.24
    gen = _feature_videos(cross((0.2, -0.1), 0.6, 0.3))  # variances 0.24, 0.06
    # 0.2² + 0.1² + 2·(√0.06 - √0.24)² = 0.05 + 2·(0.30 - 2·0.12) = 0.17
    assert fvd(real, gen, _MeanFeatures(), batch_size=3) == pytest.approx(0.17, rel=1e-5)
    assert fvd(gen, real, _MeanFeatures()) == pytest.approx(0.17, rel=1e-5)  # symmetric
    # same spread, only the means differ: just |m1 - m2|²
    shifted = _feature_videos(cross((0.2, -0.1), 0.3, 0.6))
    assert fvd(real, shifted, _MeanFeatures()) == pytest.approx(0.05, rel=1e-5)


def test_i3d_missing_file_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M2H_MODELS", str(tmp_path))
    with pytest.raises(MissingWeightsError) as info:
        load_i3d()
    msg = str(info.value)
    assert I3D_FILENAME in msg and "dropbox.com" in msg and str(tmp_path / "fvd") in msg


def test_i3d_preprocess_resize_crop_range() -> None:
    video = np.zeros((10, 64, 128, 3), np.uint8)  # wide: short side 64 -> 224, long 448, centre crop
    video[:, :, 32:96] = 255  # the middle half is white, exactly what the crop keeps
    x = i3d_preprocess(video, fit="center_crop")
    assert x.shape == (3, 10, 224, 224)
    # white maps to +1; only the outermost columns blend with the black border (bilinear, no antialias)
    torch.testing.assert_close(x[..., 2:-2], torch.ones_like(x[..., 2:-2]))
    assert x[..., 0].max().item() < 1.0
    tall = np.full((12, 100, 50, 3), 0.25, np.float32)
    y = i3d_preprocess(tall, fit="center_crop")
    assert y.shape == (3, 12, 224, 224)
    torch.testing.assert_close(y, torch.full_like(y, -0.5))


def test_i3d_preprocess_whole_frame_fits() -> None:
    """resize (default) shows I3D the whole 2:1 portrait frame; pad keeps its aspect with black bars."""
    video = np.full((10, 64, 32, 3), 255, np.uint8)
    video[:, :8] = 0  # the top eighth (the head's rows) is black
    x = i3d_preprocess(video)  # resize: rows 0..27 of 224 come from the black top eighth
    assert x.shape == (3, 10, 224, 224)
    assert x[:, :, :26].max().item() == -1.0 and x[:, :, 30:].min().item() == pytest.approx(1.0)
    p = i3d_preprocess(np.full((10, 64, 32, 3), 255, np.uint8), fit="pad")  # 224 x 112 + 56-column black bars
    assert p.shape == (3, 10, 224, 224)
    assert p[..., :56].max().item() == -1.0 and p[..., 168:].max().item() == -1.0
    torch.testing.assert_close(p[..., 57:167], torch.ones_like(p[..., 57:167]))
    with pytest.raises(ValueError, match="fit"):
        i3d_preprocess(video, fit="squash")


@pytest.mark.parametrize("fit", ["resize", "pad"])
def test_fvd_sees_a_change_only_in_the_head(tiny_i3d_file: Path, fit: str) -> None:
    """At 512x256-like 2:1 framing a change in the head's rows only (top eighth) moves FVD with the whole-frame
    fits; the centre crop (rows 1/4..3/4) cannot see it at all."""
    i3d = load_i3d(tiny_i3d_file)
    real = [np.repeat(np.linspace(0.2, 0.8, 64, dtype=np.float32)[None, :, None, None], 10, 0).repeat(32, 2)
            .repeat(3, 3) * s for s in (0.9, 1.0, 1.1)]
    fake = []
    for i, v in enumerate(real):
        v = v.copy()
        v[:, :8] = 0.1 + 0.3 * i  # another head, rows 0-7 of 64 (0-63 of 512)
        fake.append(v)
    crop = "center_crop"
    np.testing.assert_array_equal(i3d_features(real, i3d, fit=crop), i3d_features(fake, i3d, fit=crop))
    assert abs(fvd(real, fake, i3d, fit="center_crop")) < 1e-6
    assert fvd(real, fake, i3d, fit=fit) > 1e-3


def test_frechet_distance_closed_form() -> None:
    rng = np.random.default_rng(0)
    d = 4
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # independent route: tr((S1^1/2 S2 S1^1/2)^1/2) from symmetric eigendecompositions
    w, v = np.linalg.eigh(s1)
    s1h = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(s1h @ s2 @ s1h)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # 1-D: (mu1-mu2)^2 + (sd1-sd2)^2
    assert frechet_distance_from_stats([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # large samples approach the closed form
    f1 = rng.multivariate_normal(mu1, s1, size=20000)
    f2 = rng.multivariate_normal(mu2, s2, size=20000)
    assert frechet_distance(f1, f2) == pytest.approx(expected, rel=0.05)
    m, s = gaussian_stats(f1)
    assert frechet_distance(f1, f2) == pytest.approx(frechet_distance_from_stats(m, s, *gaussian_stats(f2)))


def test_frechet_distance_singular_covariances_stay_real() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, 6))  # N < D: rank-deficient covariance
    assert abs(frechet_distance(f, f)) < 1e-5
    g = rng.normal(size=(3, 6)) + 1
    val = frechet_distance(f, g)
    assert isinstance(val, float) and math.isfinite(val) and val > 0
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(f[:1], g)


def test_split_clips() -> None:
    clips = split_clips(np.arange(40), 16)
    assert [c[0] for c in clips] == [0, 16]
    assert len(split_clips(np.arange(40), 16, stride=8)) == 4


# ------------------------------------------------------------------------------------------ Table I


def test_format_table_layout() -> None:
    rows = [
        {"method": "MimicMotion [41]", "dataset": "UBC fashion", "psnr": 23.01, "ssim": 0.878, "lpips": 0.079,
         "csim": 0.928, "fvd": 35.52},
        {"method": "M2HVideo (ours)", "dataset": "UBC fashion", "psnr": 23.47, "ssim": 0.886, "lpips": 0.069,
         "csim": 0.935, "fvd": 13.35},
        {"method": "M2HVideo (ours)", "dataset": "ASOS", "psnr": 25.23, "ssim": 0.891, "lpips": 0.041,
         "csim": 0.938, "fvd": 24.86},
    ]
    text = format_table(rows)
    lines = text.splitlines()
    assert "UBC fashion" in lines[0] and "ASOS" in lines[0] and lines[0].index("UBC") < lines[0].index("ASOS")
    assert lines[1].replace("|", " ").split() == ["PSNR↑", "SSIM↑", "LPIPS↓", "CSIM↑", "FVD↓"] * 2
    mimic = next(line for line in lines if line.startswith("MimicMotion"))
    assert mimic.replace("|", " ").split()[2:] == ["23.01", "0.878", "0.079", "0.928", "35.52"] + ["-"] * 5
    ours = next(line for line in lines if line.startswith("M2HVideo"))
    assert "25.23" in ours and "24.86" in ours
    md = format_table(rows, markdown=True)
    assert "| **23.47** |" in md and "| 23.01 |" in md and "**13.35**" in md
    assert "**25.23**" not in md  # a column with one value has no "best"
