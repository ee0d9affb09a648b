"""OpenPose-style rendering, PoseFrame geometry and OpenPose JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2h_core.pose_render import (
    BODY_COLORS,
    BODY_LIMBS,
    PoseFrame,
    default_line_width,
    draw_face_landmarks,
    draw_pose,
    draw_pose_sequence,
    load_openpose_json,
    save_openpose_json,
)


def _standing(h: int = 128, w: int = 64) -> PoseFrame:
    """A plausible standing pose in pixels of an (h, w) frame, every point visible."""
    u = np.array([
        [0.50, 0.10], [0.50, 0.20], [0.35, 0.21], [0.30, 0.36], [0.28, 0.50], [0.65, 0.21], [0.70, 0.36],
        [0.72, 0.50], [0.42, 0.52], [0.42, 0.72], [0.42, 0.92], [0.58, 0.52], [0.58, 0.72], [0.58, 0.92],
        [0.46, 0.08], [0.54, 0.08], [0.42, 0.09], [0.58, 0.09]])
    body = np.concatenate([u * [w, h], np.ones((18, 1))], 1)
    return PoseFrame(body=body, width=w, height=h)


def _full(rng: np.random.Generator, h: int = 256, w: int = 128) -> PoseFrame:
    def pts(n):
        a = np.concatenate([rng.uniform(0, 1, (n, 2)) * [w, h], rng.uniform(0.1, 1, (n, 1))], 1)
        a[rng.random(n) < 0.2] = 0.0  # some missing
        return a

    return PoseFrame(body=pts(18), hands=np.stack([pts(21), pts(21)]), face=pts(68), feet=pts(6), width=w,
                     height=h)


def test_standard_palette():
    assert len(BODY_LIMBS) == 17 and len(BODY_COLORS) == 18
    assert BODY_LIMBS[0] == (1, 2) and BODY_LIMBS[12] == (1, 0)
    assert BODY_COLORS[0] == (255, 0, 0) and BODY_COLORS[12] == (0, 0, 255)


def test_posefame_normalises_arrays():
    p = PoseFrame(body=np.zeros(54), hands=np.zeros((2, 21, 2)), width=10.0, height=20)
    assert p.body.shape == (18, 3) and p.body.dtype == np.float32
    assert p.hands.shape == (2, 21, 3) and np.all(p.hands[..., 2] == 1)
    assert isinstance(p.width, int)
    with pytest.raises(ValueError):
        PoseFrame(body=np.zeros((17, 3)))


@pytest.mark.parametrize("h,w", [(128, 64), (64, 32), (512, 256)])
def test_draw_pose_colours_limbs_and_joints(h, w):
    pose = _standing(h, w)
    img = draw_pose(pose, h, w)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    b = pose.body
    # limb midpoints carry their limb colour at 0.6 alpha (on black)
    for i in (2, 3, 7, 8, 10, 11):  # arm and leg segments, away from joints
        j0, j1 = BODY_LIMBS[i]
        mid = (b[j0, :2] + b[j1, :2]) / 2
        px = img[int(round(mid[1])), int(round(mid[0]))].astype(int)
        expect = (np.array(BODY_COLORS[i]) * 0.6).astype(int)
        assert np.abs(px - expect).max() <= 2, (i, px, expect)
    # joints on top at full colour
    for j in (3, 4, 9, 13):
        px = img[int(round(b[j, 1])), int(round(b[j, 0]))]
        assert tuple(px) == BODY_COLORS[j]
    # most of the image stays black
    assert (img.sum(-1) > 0).mean() < 0.25


def test_draw_pose_nothing_when_scores_are_low():
    pose = _standing()
    pose.body[:, 2] = 0.0
    assert draw_pose(pose, 128, 64).max() == 0
    pose.body[:, 2] = 0.25  # below the default threshold 0.3
    assert draw_pose(pose, 128, 64).max() == 0
    assert draw_pose(pose, 128, 64, score_threshold=0.2).max() > 0


def test_draw_pose_missing_joint_drops_its_limbs():
    pose = _standing()
    pose.body[3, 2] = 0  # right elbow
    img = draw_pose(pose, 128, 64)
    b = pose.body
    for j0, j1 in ((2, 3), (3, 4)):
        mid = (b[j0, :2] + b[j1, :2]) / 2
        assert img[int(round(mid[1])), int(round(mid[0]))].max() == 0


def test_line_width_scales_with_size():
    assert default_line_width(512, 256) == 8
    assert default_line_width(64, 32) >= 2
    thin = (draw_pose(_standing(512, 256), 512, 256).sum(-1) > 0).sum()
    thick = (draw_pose(_standing(512, 256), 512, 256, line_width=20).sum(-1) > 0).sum()
    assert thick > 1.8 * thin


def test_draw_pose_rescales_to_canvas():
    pose = _standing(128, 64)
    big = draw_pose(pose, 256, 128)
    ref = draw_pose(_standing(256, 128), 256, 128)
    assert (big.sum(-1) > 0).sum() > 0
    assert np.array_equal(big, ref)


def test_hands_face_feet_layers():
    rng = np.random.default_rng(0)
    pose = _full(rng)
    body_only = draw_pose(pose, 256, 128)
    with_all = draw_pose(pose, 256, 128, hands=True, face=True, feet=True)
    assert (with_all.sum(-1) > 0).sum() > (body_only.sum(-1) > 0).sum()
    only_face = draw_pose(pose, 256, 128, body=False, face=True)
    vals = only_face.reshape(-1, 3)
    vals = vals[vals.sum(1) > 0]
    assert len(vals) > 0 and np.all(vals == 255)  # white dots only
    only_hands = draw_pose(pose, 256, 128, body=False, hands=True)
    k = pose.hands[0][pose.hands[0][:, 2] > 0.3][0]
    assert tuple(only_hands[int(round(k[1])), int(round(k[0]))]) == (0, 0, 255)  # blue hand joints


def test_draw_face_landmarks():
    pts = np.array([[10.0, 10.0, 1.0], [30.0, 20.0, 0.0], [20.0, 40.0, 0.9]])
    img = draw_face_landmarks(pts, 64, 48)
    assert img.shape == (64, 48, 3) and img.dtype == np.uint8
    assert tuple(img[10, 10]) == (255, 255, 255) and tuple(img[40, 20]) == (255, 255, 255)
    assert img[20, 30].max() == 0  # score 0 skipped
    assert (img.sum(-1) > 0).sum() < 30
    # (N, 2) input, 68 points with contour lines
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    p68 = np.stack([64 + 40 * np.cos(t), 64 + 40 * np.sin(t)], 1)
    dots = draw_face_landmarks(p68, 128, 128)
    lines = draw_face_landmarks(p68, 128, 128, connect=True)
    assert (lines.sum(-1) > 0).sum() > (dots.sum(-1) > 0).sum()
    with pytest.raises(ValueError):
        draw_face_landmarks(np.zeros((5, 4)), 10, 10)


def test_draw_pose_sequence():
    seq = draw_pose_sequence([_standing(), None, _standing()], 128, 64)
    assert seq.shape == (3, 128, 64, 3)
    assert seq[1].max() == 0 and np.array_equal(seq[0], seq[2]) and seq[0].max() > 0


def test_scaled_affine():
    pose = _full(np.random.default_rng(1), 200, 100)
    s = pose.scaled(0.5, 2.0, dx=3, dy=-4)
    assert (s.width, s.height) == (50, 400)
    np.testing.assert_allclose(s.body[:, 0], pose.body[:, 0] * 0.5 + 3, rtol=1e-6)
    np.testing.assert_allclose(s.face[:, 1], pose.face[:, 1] * 2.0 - 4, rtol=1e-6)
    np.testing.assert_allclose(s.hands[..., 2], pose.hands[..., 2])
    assert pose.body is not s.body


def test_openpose_dict_round_trip():
    pose = _full(np.random.default_rng(2))
    d = pose.to_openpose_dict()
    assert len(d["pose_keypoints_2d"]) == 54 and len(d["face_keypoints_2d"]) == 204
    assert len(d["hand_left_keypoints_2d"]) == 63 and len(d["foot_keypoints_2d"]) == 18
    json.dumps(d)  # plain JSON types
    back = PoseFrame.from_openpose_dict(d, pose.width, pose.height)
    for a, b in ((pose.body, back.body), (pose.face, back.face), (pose.hands, back.hands), (pose.feet, back.feet)):
        a = a.copy()
        a[a[..., 2] <= 0] = 0
        np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(back.hands[0], np.where(pose.hands[0][:, 2:] > 0, pose.hands[0], 0), atol=1e-3)
    assert (back.width, back.height) == (pose.width, pose.height)


def test_openpose_body25_and_frame_dicts():
    b25 = np.arange(75, dtype=np.float32).reshape(25, 3)
    b25[:, 2] = 1
    p = PoseFrame.from_openpose_dict({"pose_keypoints_2d": b25.reshape(-1).tolist()}, 100, 200)
    assert np.array_equal(p.body[8], b25[9]) and np.array_equal(p.body[17], b25[18])
    assert np.array_equal(p.feet, b25[19:25]) and p.hands is None and p.face is None
    frame = {"people": [_standing().to_openpose_dict()], "canvas_width": 64, "canvas_height": 128}
    q = PoseFrame.from_openpose_dict(frame, 0, 0)
    assert (q.width, q.height) == (64, 128)
    np.testing.assert_allclose(q.body, _standing().body, atol=1e-3)
    empty = PoseFrame.from_openpose_dict({"people": []}, 64, 128)
    assert empty.body.shape == (18, 3) and empty.body.max() == 0


def test_openpose_json_file_round_trip(tmp_path):
    poses = [_full(np.random.default_rng(i)) for i in range(3)] + [_standing()]
    path = tmp_path / "poses.json"
    save_openpose_json(poses, path)
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == 4 and data[0]["canvas_width"] == 128
    back = load_openpose_json(path)
    assert len(back) == 4
    for a, b in zip(poses, back):
        ref = a.body.copy()
        ref[ref[:, 2] <= 0] = 0
        np.testing.assert_allclose(b.body, ref, atol=1e-3)
        assert (b.width, b.height) == (a.width, a.height)
        assert np.array_equal(draw_pose(a, a.height, a.width, hands=True, face=True),
                              draw_pose(b, b.height, b.width, hands=True, face=True))
    # a single OpenPose frame file also loads
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"people": [_standing().to_openpose_dict()], "canvas_width": 64,
                                  "canvas_height": 128}))
    assert len(load_openpose_json(single)) == 1
