"""DWPose pre/post-processing against hand-derived answers, on the real astronaut photo, through real-format
ONNX files; pose smoothing and gap filling."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from m2h_core.pose_render import PoseFrame
from m2h_core.preprocess import dwpose as dw
from m2h_core.preprocess.smoothing import (FRAME_DETECTED, FRAME_HELD, FRAME_INTERPOLATED, fill_missing,
                                           one_euro_smooth, smooth_pose_sequence)
from tests.test_preprocess_builders import build_dwpose, build_yolox, default_crop_points


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()  # (512, 512, 3) RGB


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "dwpose"
    build_yolox(d / "yolox_l.onnx", boxes_xyxy_input=((100, 50, 400, 600), (500, 500, 540, 560)))
    build_dwpose(d / "dw-ll_ucoco_384.onnx")
    return d


@pytest.fixture(scope="module")
def detector(models):
    return dw.DWPoseDetector(models / "yolox_l.onnx", models / "dw-ll_ucoco_384.onnx", ["CPUExecutionProvider"],
                             threads=2)


# ------------------------------------------------------------------------------------------ pure maths


def test_letterbox_known_answer(astronaut):
    canvas, r = dw.letterbox(astronaut[:256])  # 256x512 -> ratio 1.25, 320x640 image, pad below
    assert r == pytest.approx(1.25)
    assert canvas.shape == (640, 640, 3)
    assert (canvas[320:] == 114).all()
    assert np.abs(canvas[:320].astype(int).mean() - astronaut[:256].mean()) < 2.0


def test_grid_decode_and_nms_known_answer():
    raw = np.zeros((1, 8400, 85), np.float32)
    off = 80 * 80 + 40 * 40
    a = off + 3 * 20 + 5  # stride 32, gx=5, gy=3
    raw[0, a, :4] = [0.5, 0.25, np.log(2.0), np.log(4.0)]
    dec = dw.yolox_grid_decode(raw)
    assert dec[0, a, :4] == pytest.approx([(5.5) * 32, (3.25) * 32, 64, 128])
    assert dec[0, 10, 0] == pytest.approx(10 * 8)  # stride 8 anchor 10 -> x = 10 * 8
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert dw.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.45) == [0, 2]
    assert dw.nms(boxes, np.array([0.5, 0.8, 0.7]), 0.45) == [1, 2]


def test_simcc_decode_split_ratio_and_missing():
    sx = np.zeros((1, 3, 576), np.float32)
    sy = np.zeros((1, 3, 768), np.float32)
    sx[0, 0, 100], sy[0, 0, 300] = 0.9, 0.6
    sx[0, 1, 7], sy[0, 1, 9] = 0.2, 0.5
    locs, vals = dw.simcc_decode(sx, sy, 2.0)
    assert locs[0, 0] == pytest.approx([50, 150]) and vals[0, 0] == pytest.approx(0.6)
    assert vals[0, 1] == pytest.approx(0.2)
    assert (locs[0, 2] == -0.5).all() and vals[0, 2] == 0  # -1 / split ratio


def test_crop_warp_roundtrip_on_photo(astronaut):
    import cv2

    c, s = dw.box_center_scale(np.array([100, 40, 300, 480]))
    assert s[0] / s[1] == pytest.approx(288 / 384)
    assert s[1] == pytest.approx(440 * 1.25)
    m = dw.crop_warp(c, s)
    crop = cv2.warpAffine(astronaut, m, (288, 384))
    # the crop centre is the box centre; a crop pixel maps back to the same image pixel
    for cx, cy in [(144, 192), (60, 100), (250, 330)]:
        x, y = dw.crop_to_image(np.array([[cx, cy]], np.float32), c, s)[0]
        assert np.abs(crop[cy, cx].astype(int) - astronaut[int(round(y)), int(round(x))].astype(int)).max() < 40
    assert dw.crop_to_image(np.array([[144, 192]], np.float32), c, s)[0] == pytest.approx(c)


def test_wholebody_to_openpose_mapping():
    kp = np.zeros((133, 2), np.float32)
    sc = np.full(133, 0.9, np.float32)
    kp[:, 0] = np.arange(133)
    kp[5], kp[6] = [10, 20], [30, 40]
    p = dw.wholebody_to_pose(kp, sc, 100, 200)
    assert isinstance(p, PoseFrame) and (p.width, p.height) == (100, 200)
    assert p.body[1, :2] == pytest.approx([20, 30])  # neck = mean of shoulders
    assert p.body[2, 0] == 30 and p.body[5, 0] == 10  # R shoulder = COCO 6, L shoulder = COCO 5
    assert [p.body[i, 0] for i in (0, 3, 4, 8, 11, 14, 15, 16, 17)] == [0, 8, 10, 12, 11, 2, 1, 4, 3]
    assert p.feet[0, 0] == 17 and p.face[0, 0] == 23 and p.face[-1, 0] == 90
    assert p.hands[0, 0, 0] == 112 and p.hands[1, 0, 0] == 91  # right, left
    sc[5] = 0.1
    assert dw.wholebody_to_pose(kp, sc, 100, 200).body[1, 2] == 0  # neck hidden when a shoulder is


# ------------------------------------------------------------------------------------------ full pipeline


def test_detect_on_photo_known_boxes_and_keypoints(detector, astronaut):
    res = detector.detect(astronaut[None])
    assert len(res) == 1 and res[0].status == dw.STATUS_OK
    # input boxes (100,50,400,600) and (500,500,540,560) in the 640 letterbox; ratio 1.25
    assert res[0].boxes[0] == pytest.approx([80, 40, 320, 480], abs=1e-3)
    assert len(res[0].people) == 2 and res[0].main_index == 0  # the largest box is the main person
    c, s = dw.box_center_scale(res[0].boxes[0])
    pts = dw.crop_to_image(default_crop_points(), c, s)
    pose = res[0].pose
    assert pose.body[0, :2] == pytest.approx(pts[0], abs=0.51)  # nose (COCO 0)
    assert pose.body[2, :2] == pytest.approx(pts[6], abs=0.51)  # right shoulder (COCO 6)
    assert pose.face[:, :2] == pytest.approx(pts[23:91], abs=0.51)
    assert pose.body[0, 2] == pytest.approx(0.8)


def test_batching_and_fixed_batch_padding(detector, astronaut, models, tmp_path):
    frames = np.stack([astronaut, astronaut[:, ::-1], astronaut])
    a = detector.detect(frames)
    dyn = dw.DWPoseDetector(build_yolox(tmp_path / "yolox_l.onnx", batch=None,
                                        boxes_xyxy_input=((100, 50, 400, 600), (500, 500, 540, 560))),
                            models / "dw-ll_ucoco_384.onnx", ["CPUExecutionProvider"], batch_size=2)
    assert dyn._det_batch is None
    b = dyn.detect(frames)
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(ra.pose.body, rb.pose.body, atol=1e-4)


def test_no_person_status_and_bad_inputs(detector, astronaut):
    grey = np.full((2, 120, 90, 3), 114, np.uint8)
    res = detector.detect(grey)
    assert [r.status for r in res] == [dw.STATUS_NO_PERSON] * 2 and res[0].pose is None
    assert detector.render(res).shape == (2, 120, 90, 3) and detector.render(res).max() == 0
    assert detector.detect(np.zeros((0, 64, 64, 3), np.uint8)) == []
    gray2d = astronaut.mean(-1).astype(np.uint8)
    assert detector.detect(gray2d)[0].status == dw.STATUS_OK  # (H, W) grayscale accepted
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 255, np.uint8)], -1)
    assert detector.detect(rgba[None])[0].pose.body == pytest.approx(detector.detect(astronaut)[0].pose.body)
    assert detector.detect(astronaut[:4, :4])[0].status in (dw.STATUS_OK, dw.STATUS_NO_PERSON)  # tiny
    with pytest.raises(ValueError, match="empty"):
        detector.detect(np.zeros((1, 0, 10, 3), np.uint8))


def test_render_body_only_default_and_toggles(detector, astronaut):
    res = detector.detect(astronaut)
    body = detector.render(res)
    full = detector.render(res, hands=True, face=True)
    assert body.shape == (1, 512, 512, 3) and body.dtype == np.uint8 and body.max() > 0
    assert (full != body).any()
    half = dw.render_poses(res, 256, 256)  # rescaled to another canvas
    assert half.shape == (1, 256, 256, 3) and half.max() > 0


def test_missing_model_error(tmp_path):
    from m2h_core.preprocess.model_files import MissingModelError

    with pytest.raises(MissingModelError, match="yolox_l.onnx"):
        dw.DWPoseDetector(search_dirs=[tmp_path])


# ------------------------------------------------------------------------------------------ smoothing


def _pose(x, y, s=0.9):
    body = np.zeros((18, 3), np.float32)
    body[:, 0], body[:, 1], body[:, 2] = x, y, s
    return PoseFrame(body=body, width=64, height=64)


def test_fill_interpolates_holds_and_reports():
    poses = [None, _pose(0, 0), None, None, _pose(30, 60), None]
    out = smooth_pose_sequence(poses, smooth=False)
    assert out.status == [FRAME_HELD, FRAME_DETECTED, FRAME_INTERPOLATED, FRAME_INTERPOLATED, FRAME_DETECTED,
                          FRAME_HELD]
    assert out.filled_frames == [0, 2, 3, 5]
    assert out.poses[2].body[0, :2] == pytest.approx([10, 20])
    assert out.poses[3].body[0, :2] == pytest.approx([20, 40])
    assert out.poses[0].body[0, :2] == pytest.approx([0, 0]) and out.poses[5].body[0, 0] == 30
    held = smooth_pose_sequence(poses, smooth=False, fill="hold")
    assert held.poses[3].body[0, 0] == 0
    gap = smooth_pose_sequence(poses, smooth=False, max_gap=1)
    assert gap.poses[2] is None and gap.status[2] == "missing"
    assert smooth_pose_sequence([None, None]).poses == [None, None]


def test_one_euro_reduces_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(120)
    truth = np.stack([t * 1.0, np.full_like(t, 50.0)], -1).astype(np.float32)
    noisy = truth + rng.normal(0, 2.0, truth.shape).astype(np.float32)
    seq = np.concatenate([noisy, np.full((120, 1), 0.9, np.float32)], -1)[:, None]
    sm = one_euro_smooth(seq, fps=30, min_cutoff=1.0, beta=0.05)
    err_raw = np.abs(noisy[10:] - truth[10:]).mean()
    err_sm = np.abs(sm[10:, 0, :2] - truth[10:]).mean()
    assert err_sm < err_raw
    still = one_euro_smooth(np.ones((5, 2, 3), np.float32) * 7)
    assert still == pytest.approx(np.ones((5, 2, 3)) * 7)


def test_fill_missing_keypoint_held_from_other_side():
    a = np.zeros((3, 2, 3), np.float32)
    a[0] = [[0, 0, 1], [5, 5, 0]]
    a[2] = [[10, 10, 1], [7, 7, 1]]
    out, st = fill_missing(a, np.array([True, False, True]))
    assert out[1, 0, :2] == pytest.approx([5, 5]) and out[1, 1, :2] == pytest.approx([7, 7])
    assert st[1] == FRAME_INTERPOLATED
