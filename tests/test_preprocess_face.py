"""Face analysis: our alignment against known answers on insightface's packaged photo t1.jpg, masks, p_id,
and the full FaceAnalyzer on an insightface-style pack of tiny models with the real ONNX signatures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2h_core.preprocess import face as fc
from m2h_core.preprocess.model_files import MissingModelError
from tests.test_preprocess_builders import build_face_pack

insightface = pytest.importorskip("insightface")  # installable from PyPI; skip only where it truly is not


@pytest.fixture(scope="module")
def t1():
    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[..., ::-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # the classic nested-folder mistake
    build_face_pack(root / "insightface" / "models" / "antelopev2" / "antelopev2")
    return root


@pytest.fixture(scope="module")
def analyzer(models):
    return fc.FaceAnalyzer("antelopev2", search_dirs=[models], providers=["CPUExecutionProvider"],
                           det_size=(320, 320))


# ------------------------------------------------------------------------------------------ alignment


def test_similarity_transform_recovers_known_transform():
    ang, s, t = np.deg2rad(17.0), 1.7, np.array([12.0, -5.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = s * src @ r.T + t
    m = fc.similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-4)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-3)


def test_similarity_transform_never_reflects():
    """A mirrored point set has no exact similarity. Points with variance 8/5 along x and 2/5 along y, mirrored in
    x: the best rotation is by 180 degrees, with scale (8 - 2) / (8 + 2) = 0.6 (Umeyama 1991 with the sign fix)."""
    src = np.array([[-2, 0], [2, 0], [0, -1], [0, 1], [0, 0]], float) + [10, 20]
    dst = (src - [10, 20]) * [-1, 1] + [3, 4]
    m = fc.similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], -0.6 * np.eye(2), atol=1e-6)
    np.testing.assert_allclose(m[:, 2], [3 + 0.6 * 10, 4 + 0.6 * 20], atol=1e-5)  # t = mu_d - s R mu_s


def test_alignment_matches_skimage_estimate():
    from skimage.transform import SimilarityTransform

    kps = np.array([[420, 300], [480, 296], [452, 340], [425, 372], [478, 370]], np.float32)
    est = SimilarityTransform.from_estimate(kps, fc.ARCFACE_TEMPLATE) if hasattr(
        SimilarityTransform, "from_estimate") else None
    if est is None:
        est = SimilarityTransform()
        est.estimate(kps, fc.ARCFACE_TEMPLATE)
    np.testing.assert_allclose(fc.alignment_matrix(kps), est.params[:2], atol=1e-3)


def test_align_on_photo_known_answer(t1):
    """Keypoints placed by a known similarity S^-1 of the template: the aligned crop must equal warp(S)."""
    ang, s, t = np.deg2rad(-9.0), 0.45, np.array([-250.0, -120.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    m_true = np.hstack([s * r, t[:, None]]).astype(np.float32)
    inv = cv2.invertAffineTransform(m_true)
    kps = fc.ARCFACE_TEMPLATE @ inv[:, :2].T + inv[:, 2]
    crop, m = fc.align_face(t1, kps)
    np.testing.assert_allclose(m, m_true, atol=1e-3)
    ref = cv2.warpAffine(t1, m_true, (112, 112))
    assert crop.shape == (112, 112, 3) and np.abs(crop.astype(int) - ref.astype(int)).mean() < 1.0
    assert crop.std() > 10  # real image content, not border


def test_alignment_agrees_with_insightface_norm_crop(t1):
    face_align = pytest.importorskip("insightface.utils.face_align")
    kps = np.array([[560, 250], [620, 245], [592, 285], [566, 318], [615, 314]], np.float32)
    ours, _ = fc.align_face(t1, kps)
    theirs = face_align.norm_crop(t1, kps)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2.0


def test_masks_and_landmark_image_on_photo(t1):
    h, w = t1.shape[:2]
    ell = fc.face_mask_from_box([500, 200, 700, 460], h, w)
    assert ell.shape == (h, w) and ell[330, 600] and not ell[205, 505]
    assert abs(ell.sum() - np.pi * 100 * 130) / (np.pi * 100 * 130) < 0.03
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([600 + 80 * np.cos(ang), 350 + 90 * np.sin(ang)], 1)
    hull = fc.face_mask_from_landmarks(pts, h, w, bbox=[510, 200, 690, 450])
    assert hull[350, 600] and hull[215, 600] and not hull[100, 600]
    p_id = fc.landmark_points_image(pts, h, w)
    assert p_id.shape == (h, w, 3) and p_id.dtype == np.uint8
    assert p_id[350, 680].max() > 0 and p_id[350, 600].max() == 0


def test_face_similarity():
    a = np.array([1.0, 0.0, 0.0])
    assert fc.face_similarity(a, a * 3) == pytest.approx(1.0)
    assert fc.face_similarity(a, np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    assert fc.face_similarity(np.stack([a, -a]), a) == pytest.approx([1.0, -1.0])


# ------------------------------------------------------------------------------------------ full analyzer


def test_analyzer_on_photo_with_real_format_pack(analyzer, t1):
    assert analyzer.folder.name == "antelopev2" and analyzer.folder.parent.name == "antelopev2"
    assert analyzer.landmark_model is not None and analyzer.landmark_model.num == 106
    r = analyzer.analyze(t1)
    h, w = t1.shape[:2]
    assert r.embedding.shape == (512,) and np.linalg.norm(r.embedding) == pytest.approx(1.0, abs=1e-5)
    assert r.num_faces > 1 and len(r.all_boxes) == r.num_faces
    areas = (r.all_boxes[:, 2] - r.all_boxes[:, 0]) * (r.all_boxes[:, 3] - r.all_boxes[:, 1])
    assert (r.bbox[2] - r.bbox[0]) * (r.bbox[3] - r.bbox[1]) == pytest.approx(areas.max())  # the largest
    assert r.kps.shape == (5, 2) and r.aligned.shape == (112, 112, 3)
    assert r.landmarks.shape == (106, 2)
    # the stand-in puts points at radius 0.5 (normalised) = 48 px of the 192 crop, which spans 1.5 x the box's
    # longer side: 48 * 1.5 / 192 = 0.375 x that side, about the box centre
    c = (r.bbox[:2] + r.bbox[2:]) / 2
    rad = np.linalg.norm(r.landmarks - c, axis=1)
    np.testing.assert_allclose(rad, 0.375 * max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1]), rtol=0.02)
    assert r.landmark_image.shape == (h, w, 3) and r.mask.shape == (h, w) and r.mask.any()
    again = analyzer.analyze(t1[..., ::-1].copy())  # different pixels, same geometry
    assert fc.face_similarity(r, analyzer.analyze(t1)) == pytest.approx(1.0, abs=1e-5)
    assert fc.face_similarity(r, again) < 0.999


def test_analyzer_inputs(analyzer, t1):
    gray = cv2.cvtColor(t1, cv2.COLOR_RGB2GRAY)
    assert analyzer.analyze(gray).embedding.shape == (512,)
    rgba = np.concatenate([t1, np.full(t1.shape[:2] + (1,), 255, np.uint8)], -1)
    np.testing.assert_allclose(analyzer.analyze(rgba).embedding, analyzer.analyze(t1).embedding, atol=1e-5)
    with pytest.raises(fc.NoFaceError, match="too small"):
        analyzer.analyze(t1[:20, :20])
    with pytest.raises(ValueError, match="empty"):
        analyzer.analyze(np.zeros((0, 0, 3), np.uint8))
    assert analyzer.analyze(t1, mask_mode="ellipse").mask.sum() > 0


def test_no_face_raises(tmp_path, t1):
    build_face_pack(tmp_path / "insightface" / "models" / "buffalo_l", pack="buffalo_l", landmarks=False,
                    score_logit=-10.0)
    fa = fc.FaceAnalyzer("buffalo_l", search_dirs=[tmp_path], det_size=(320, 320))
    assert fa.landmark_model is None
    with pytest.raises(fc.NoFaceError, match="no face"):
        fa.analyze(t1)


def test_missing_pack_files_named(tmp_path):
    d = tmp_path / "insightface" / "models" / "antelopev2"
    d.mkdir(parents=True)
    (d / "glintr100.onnx").write_bytes(b"x")
    with pytest.raises(MissingModelError, match="scrfd_10g_bnkps.onnx"):
        fc.FaceAnalyzer("antelopev2", search_dirs=[tmp_path])
    with pytest.raises(ValueError, match="unknown insightface pack"):
        fc.find_face_pack("nope", [tmp_path])


def test_importing_m2h_core_does_not_import_insightface():
    code = ("import sys; import m2h_core.preprocess.face, m2h_core.preprocess.dwpose, m2h_core.preprocess.parsing;"
            "assert 'insightface' not in sys.modules, 'eager insightface import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_broken_insightface_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # makes `import insightface` fail
    with pytest.raises(ImportError, match="pip install insightface"):
        fc.import_insightface()
