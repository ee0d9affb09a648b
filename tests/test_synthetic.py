"""Synthetic mannequin/human clips: determinism, mask consistency, paired renderings, poses, identity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from m2h_core.pose_render import draw_pose
from m2h_core.demo.synthetic import (
    MOTIONS,
    Garment,
    Identity,
    Outfit,
    SyntheticClip,
    generate_clip,
    generate_dataset,
    identity_embedding,
)

SIZES = [(128, 64), (64, 32)]


@pytest.fixture(scope="module")
def clips() -> dict[tuple, SyntheticClip]:
    out = {}
    for h, w in SIZES:
        for m in MOTIONS:
            for seed in (1, 2):
                out[(h, w, m, seed)] = generate_clip(seed, n_frames=16, height=h, width=w, motion=m)
    return out


def test_shapes_and_types(clips):
    for (h, w, m, _), c in clips.items():
        n = 16
        assert c.human.shape == c.mannequin.shape == c.pose_images.shape == (n, h, w, 3)
        assert c.human.dtype == c.mannequin.dtype == c.pose_images.dtype == np.uint8
        for mask in (c.clothing_mask, c.face_mask, c.person_mask, c.mannequin_mask):
            assert mask.shape == (n, h, w) and mask.dtype == bool
        assert len(c.poses) == n and c.poses[0].body.shape == (18, 3)
        assert (c.poses[0].width, c.poses[0].height) == (w, h)
        assert c.identity_image.shape == c.identity_landmarks.shape == (h, w, 3)
        assert c.identity_embedding.shape == (512,) and c.identity_embedding.dtype == np.float32
        assert c.motion == m and c.fps > 0 and c.yaw.shape == (n,)


def test_deterministic_for_a_seed():
    a = generate_clip(7, n_frames=6)
    b = generate_clip(7, n_frames=6)
    for f in ("human", "mannequin", "clothing_mask", "face_mask", "person_mask", "pose_images", "identity_image",
              "identity_landmarks", "identity_embedding"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.identity == b.identity and a.outfit == b.outfit and a.motion == b.motion
    np.testing.assert_array_equal(a.poses[3].body, b.poses[3].body)
    c = generate_clip(8, n_frames=6)
    assert not np.array_equal(a.human, c.human)


def test_masks_consistent(clips):
    for key, c in clips.items():
        assert not (c.clothing_mask & ~c.person_mask).any(), key
        assert not (c.clothing_mask & ~c.mannequin_mask).any(), key
        assert not (c.face_mask & ~c.person_mask).any(), key
        assert not (c.face_mask & c.clothing_mask).any(), key
        assert c.clothing_mask.reshape(16, -1).any(1).all(), key  # clothes visible in every frame
        area = c.person_mask.reshape(16, -1).mean(1)
        assert (area > 0.05).all() and (area < 0.6).all(), key
        # the figure does not touch the left/right image border
        assert not c.person_mask[:, :, [0, -1]].any(), key


def test_face_mask_follows_the_turn(clips):
    for (h, w, m, seed), c in clips.items():
        if m != "turn":
            continue
        cosy = np.cos(c.yaw)
        face_px = c.face_mask.reshape(16, -1).sum(1)
        back, front = cosy < -0.9, cosy > 0.9
        assert back.any() and front.any()
        assert (face_px[back] == 0).all(), (h, seed, face_px, cosy)
        assert (face_px[front] > 0).all(), (h, seed, face_px, cosy)
        # at the back the head is still there (hair), so the person mask covers the head area
        nose_less = [i for i in np.flatnonzero(back)]
        assert all(c.poses[i].body[0, 2] == 0 for i in nose_less)  # no nose keypoint from behind
        # the body narrows when seen from the side
        width = np.abs(np.array([p.body[2, 0] - p.body[5, 0] for p in c.poses]))
        assert width.min() < 0.4 * width.max()
    for (h, w, m, seed), c in clips.items():
        if m != "turn":
            assert (c.face_mask.reshape(16, -1).sum(1) > 0).all()  # sway/walk face the camera


def test_mannequin_and_human_share_clothes_not_skin(clips):
    for key, c in clips.items():
        cm = c.clothing_mask
        assert np.array_equal(c.human[cm], c.mannequin[cm]), key
        bg = ~c.person_mask & ~c.mannequin_mask
        assert np.array_equal(c.human[bg], c.mannequin[bg]), key
        both = c.person_mask & c.mannequin_mask & ~cm  # skin / head visible in both renderings
        diff = np.abs(c.human.astype(int) - c.mannequin.astype(int)).sum(-1)
        assert both.sum() > 50 and diff[both].mean() > 30, key
        # face pixels differ from the bald mannequin head
        fm = c.face_mask & c.mannequin_mask
        if fm.any():
            assert diff[fm].mean() > 30, key


def test_mannequin_is_uniform_and_identity_free():
    ida = Identity((240, 200, 170), (30, 20, 15), "long", (60, 110, 185), "round")
    idb = Identity((100, 60, 40), (220, 190, 120), "short", (70, 40, 22), "square")
    a = generate_clip(11, n_frames=8, identity=ida)
    b = generate_clip(11, n_frames=8, identity=idb)
    assert a.outfit == b.outfit and a.motion == b.motion and a.identity != b.identity
    assert np.array_equal(a.mannequin, b.mannequin)  # the mannequin video does not leak the identity
    for pose_a, pose_b in zip(a.poses, b.poses):
        np.testing.assert_array_equal(pose_a.body, pose_b.body)
    assert not np.array_equal(a.human, b.human)
    # bare skin (outside clothes, below the head) is the mannequin colour on the mannequin
    col = np.array(a.mannequin_color)
    body = a.mannequin_mask & ~a.clothing_mask
    body[:, : a.human.shape[1] // 2] = False  # skip head, hair and shoulders (long hair hides some clothes)
    px = a.mannequin[body].astype(int)
    ratio = px / np.maximum(col, 1)
    assert np.all(np.abs(ratio - ratio[:, :1]) < 0.08)  # grey shades of one colour


@pytest.mark.parametrize("h,w", SIZES)
def test_pose_keypoints_inside_person(clips, h, w):
    k = np.ones((3, 3), np.uint8)
    for (hh, ww, m, seed), c in clips.items():
        if (hh, ww) != (h, w):
            continue
        for i, p in enumerate(c.poses):
            human = cv2.dilate(c.person_mask[i].astype(np.uint8), k).astype(bool)
            mann = cv2.dilate(c.mannequin_mask[i].astype(np.uint8), k).astype(bool)
            pts = np.concatenate([p.body, p.feet])
            vis = pts[:, 2] > 0
            assert vis[1:14].all()
            xy = np.round(pts[vis, :2]).astype(int)
            assert ((xy >= 0) & (xy < [w, h])).all(), (m, seed, i)
            assert human[xy[:, 1], xy[:, 0]].all(), (m, seed, i)
            body_xy = np.round(p.body[1:14, :2]).astype(int)
            assert mann[body_xy[:, 1], body_xy[:, 0]].all(), (m, seed, i)
            assert p.face is None  # mannequin-style poses: no face keypoints


def test_pose_images_are_drawn_poses(clips):
    c = clips[(128, 64, "walk", 1)]
    for i in (0, 9):
        assert np.array_equal(c.pose_images[i], draw_pose(c.poses[i], 128, 64))
        assert (c.pose_images[i].sum(-1) > 0).sum() > 100


def test_walk_grows_and_legs_alternate(clips):
    for (h, w, m, seed), c in clips.items():
        if m != "walk":
            continue
        area = c.person_mask.reshape(16, -1).sum(1)
        assert area[-1] > 1.3 * area[0]
        ank = np.array([p.body[10, 1] - p.body[13, 1] for p in c.poses])  # right minus left ankle height
        assert ank.max() > 0.01 * h and ank.min() < -0.01 * h  # each foot leads at some point


def test_sway_moves_a_little(clips):
    for (h, w, m, seed), c in clips.items():
        if m != "sway":
            continue
        neck_x = np.array([p.body[1, 0] for p in c.poses])
        assert 0.5 < np.ptp(neck_x) < 0.3 * w
        assert (np.cos(c.yaw) > 0.8).all()


def test_garment_types_cover_the_right_parts():
    rng = np.random.default_rng(0)
    top = Garment("t-shirt", (200, 30, 30), (20, 20, 20))
    long_top = Garment("long-sleeve", (30, 30, 200), (240, 240, 240), pattern="stripes", period=0.03)
    trousers = Garment("trousers", (30, 120, 30), (0, 0, 0))
    shorts = Garment("shorts", (30, 120, 30), (0, 0, 0), pattern="checks")
    dress = Garment("dress", (220, 150, 170), (255, 255, 255), pattern="dots", sleeves=False, length=0.2)

    def at(c, i, a, b, t):  # clothing mask at a point between two keypoints
        p = c.poses[i].body
        x, y = p[a, :2] * (1 - t) + p[b, :2] * t
        return bool(c.clothing_mask[i, int(round(y)), int(round(x))])

    c = generate_clip(3, n_frames=4, motion="sway", outfit=Outfit(top, trousers))
    assert at(c, 0, 9, 10, 0.5) and at(c, 0, 2, 3, 0.2) and not at(c, 0, 3, 4, 0.5)  # shin, upper arm, not forearm
    c = generate_clip(3, n_frames=4, motion="sway", outfit=Outfit(long_top, shorts))
    assert at(c, 0, 3, 4, 0.5) and not at(c, 0, 9, 10, 0.5)  # sleeve on forearm, bare shin
    c = generate_clip(3, n_frames=4, motion="sway", outfit=Outfit(dress))
    assert at(c, 0, 8, 11, 0.5) and not at(c, 0, 2, 3, 0.5) and not at(c, 0, 9, 10, 0.9)
    # patterns: plain is one colour (up to shading), stripes show two
    plain = generate_clip(3, n_frames=1, motion="sway", outfit=Outfit(top, trousers))
    striped = generate_clip(3, n_frames=1, motion="sway", outfit=Outfit(long_top, trousers))
    def n_colours(c):
        px = c.human[0][c.clothing_mask[0]].astype(int)
        return len({tuple(v // 40) for v in px})
    assert n_colours(striped) > n_colours(plain)
    with pytest.raises(ValueError):
        Outfit(dress, trousers)
    with pytest.raises(ValueError):
        Outfit(top)
    assert Outfit.random(rng).top.kind in ("t-shirt", "long-sleeve", "dress")


def test_identity_image_landmarks_and_embedding(clips):
    c = clips[(128, 64, "sway", 1)]
    # a frontal human frame not in the clip
    assert all(not np.array_equal(c.identity_image, f) for f in c.human)
    face = c.identity_pose.face
    assert face is not None and face.shape == (68, 3) and (face[:, 2] > 0).all()
    lm = c.identity_landmarks
    ys, xs = np.nonzero(lm.sum(-1))
    assert len(ys) > 20 and set(np.unique(lm)) <= {0, 255}
    nose = c.identity_pose.body[0]
    assert nose[2] > 0 and np.abs(xs - nose[0]).max() < 12 and np.abs(ys - nose[1]).max() < 12
    # the landmarks sit on skin-coloured face pixels of the identity image
    skin = np.array(c.identity.skin)
    inner = face[27:36, :2].round().astype(int)  # nose
    px = c.identity_image[inner[:, 1], inner[:, 0]].astype(int)
    assert (np.abs(px - skin).max(1) < 90).all()
    # embedding: unit norm, same identity -> same vector
    e = c.identity_embedding
    assert abs(np.linalg.norm(e) - 1) < 1e-5
    np.testing.assert_array_equal(e, identity_embedding(c.identity))
    assert np.array_equal(e, generate_clip(99, n_frames=1, identity=c.identity).identity_embedding)


def test_different_identities_low_cosine():
    rng = np.random.default_rng(123)
    ids = [Identity.random(rng) for _ in range(40)]
    ids = [i for k, i in enumerate(ids) if i not in ids[:k]]
    e = np.stack([identity_embedding(i) for i in ids])
    cos = e @ e.T
    off = cos[~np.eye(len(ids), dtype=bool)]
    assert off.mean() < 0.15 and np.median(off) < 0.15
    assert np.allclose(np.diag(cos), 1, atol=1e-5)
    # a small change of one attribute keeps the vector close, a different hair style does not
    a = ids[0]
    near = Identity(tuple(min(v + 3, 255) for v in a.skin), a.hair_color, a.hair_style, a.eye_color, a.face_shape)
    other_style = "bob" if a.hair_style != "bob" else "short"
    far = Identity(a.skin, a.hair_color, other_style, a.eye_color, a.face_shape)
    assert identity_embedding(a) @ identity_embedding(near) > 0.9
    assert identity_embedding(a) @ identity_embedding(far) < 0.7  # same colours, other hair: related, not equal


def test_identity_colours_are_linearly_decodable_from_the_embedding():
    """Like real face-recognition embeddings, the stand-in carries attributes (here skin colour) linearly: a least-
    squares readout fitted on some people predicts unseen people's skin; without the linear part it does not."""
    rng = np.random.default_rng(7)
    ids = [Identity.random(rng) for _ in range(300)]
    skin = np.array([i.skin for i in ids], np.float64) / 255

    def r2(linear_dims):
        e = np.stack([identity_embedding(i, linear_dims=linear_dims) for i in ids]).astype(np.float64)
        x = np.c_[e, np.ones(len(e))]
        w, *_ = np.linalg.lstsq(x[:200], skin[:200], rcond=1e-6)
        err = ((x[200:] @ w - skin[200:]) ** 2).sum()
        return 1 - err / ((skin[200:] - skin[200:].mean(0)) ** 2).sum()

    assert r2(128) > 0.8
    assert r2(0) < 0.6


def test_generate_dataset():
    ds = generate_dataset(4, seed=5, n_frames=3, height=64, width=32)
    assert len(ds) == 4 and all(c.human.shape == (3, 64, 32, 3) for c in ds)
    assert len({c.identity for c in ds}) > 1
    again = generate_dataset(4, seed=5, n_frames=3, height=64, width=32)
    assert all(np.array_equal(a.human, b.human) for a, b in zip(ds, again))
    with pytest.raises(ValueError):
        generate_clip(0, motion="jump")
