"""Clip sampling, the shared crop/resize transform, the on-disk cache and the resumable sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2h_core.training.dataset import (
    ResumableSampler,
    SyntheticClipDataset,
    pick_identity_frame,
    sample_frame_indices,
    transform_sample,
)


def test_frame_indices_stride_clamp_and_no_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ind = sample_frame_indices(100, 8, 4, rng)
        assert len(ind) == 8 and (np.diff(ind) == 4).all() and ind[0] >= 0 and ind[-1] < 100
    starts = {int(sample_frame_indices(100, 8, 4, np.random.default_rng(s))[0]) for s in range(30)}
    assert len(starts) > 5  # random start
    short = sample_frame_indices(15, 8, 4, rng)  # 29-frame span does not fit: stride clamps to 2
    assert (np.diff(short) == 2).all() and short[-1] < 15
    with pytest.raises(ValueError, match="5 frames is shorter than the 8-frame training window"):
        sample_frame_indices(5, 8, 4, rng)  # fewer frames than asked: refused, never looped (issue 32)
    assert sample_frame_indices(8, 8, 4, rng).tolist() == list(range(8))


def test_identity_frame_is_another_frame_with_a_face():
    has_face = np.array([1, 1, 0, 1, 1, 0, 1, 1], bool)
    rng = np.random.default_rng(0)
    for _ in range(20):
        i = pick_identity_frame(has_face, [0, 1, 3, 4], rng)
        assert i in (6, 7)
    assert pick_identity_frame(has_face, list(range(8)), rng) in np.flatnonzero(has_face)


def test_same_transform_for_frames_masks_poses():
    """A marker drawn at the same place in frame, masks and pose lands at the same place after crop+resize."""
    n, h, w = 2, 128, 100  # 100:128 is wider than 1:2 -> width is cropped to 64, then halved
    frames = np.zeros((n, h, w, 3), np.uint8)
    poses = np.zeros((n, h, w, 3), np.uint8)
    cloth = np.zeros((n, h, w), bool)
    face = np.zeros((n, h, w), bool)
    frames[:, 40:60, 28:48] = 255
    poses[:, 40:60, 28:48] = 200
    cloth[:, 40:60, 28:48] = True
    face[:, 40:60, 28:48] = True
    idimg = np.zeros((80, 40, 3), np.uint8)
    out, info = transform_sample(frames, cloth, face, poses, idimg, idimg, 64, 32)
    assert (info.crop_width, info.crop_height) == (64, 128) and info.x0 == 18
    assert out["frames"].shape == (2, 3, 64, 32) and out["clothing_masks"].shape == (2, 64, 32)
    assert out["identity_image"].shape == (3, 64, 32)
    m = out["clothing_masks"][0] > 0.5
    assert torch.equal(m, out["face_masks"][0] > 0.5)
    assert torch.equal(m, out["frames"][0, 0] > 0.5)
    assert torch.equal(m, out["pose_images"][0, 0] > 0.4)
    ys, xs = m.nonzero(as_tuple=True)
    # source box y 40..60, x 28..48 -> crop x 10..30 -> halved: y 20..30, x 5..15
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 29, 5, 14)


def test_synthetic_dataset_scale_and_determinism():
    from m2h_core.demo.synthetic import generate_clip

    clips = [generate_clip(s, n_frames=20, height=128, width=64) for s in (1, 2)]
    ds = SyntheticClipDataset(clips, height=64, width=32)
    a, b = ds[(1, 7)], ds[(1, 7)]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["frame_indices"], b["frame_indices"])
    assert a["frames"].shape == (8, 3, 64, 32) and a["arcface"].shape == (512,)
    assert (np.diff(a["frame_indices"].numpy()) == 2).all()  # 20 frames: stride clamped to 2
    ds.scale = 0.5
    half = ds[(1, 7)]
    assert half["frames"].shape == (8, 3, 32, 16) and half["pose_images"].shape == (8, 3, 32, 16)
    assert half["face_masks"].shape == (8, 32, 16) and half["identity_landmarks"].shape == (3, 32, 16)
    assert float(a["frames"].min()) >= 0 and float(a["frames"].max()) <= 1


def test_resumable_sampler_positions():
    s = ResumableSampler(5, seed=3)
    it = iter(s)
    seq = [next(it) for _ in range(12)]
    assert [p for _, p in seq] == list(range(12))
    assert sorted(c for c, _ in seq[:5]) == list(range(5))  # a permutation per epoch
    it2 = iter(ResumableSampler(5, seed=3, start=7))
    assert [next(it2) for _ in range(5)] == seq[7:12]
    r0, r1 = iter(ResumableSampler(5, 3, 0, 0, 2)), iter(ResumableSampler(5, 3, 0, 1, 2))
    assert [next(r0) for _ in range(3)] == seq[0:6:2] and [next(r1) for _ in range(3)] == seq[1:6:2]


def _landscape_cache(root, n=3, h=256, w=384):
    """One cached video from a landscape source (the 2:1 crop keeps 128 of 384 px, then resizes x 1/4)."""
    from m2h_core.training.dataset import write_cached_video
    from m2h_core.pose_render import PoseFrame, draw_pose

    poses = []
    for i in range(n):
        body = np.zeros((18, 3), np.float32)
        xs = 192 + 6 * i + np.array([0, 0, -20, -28, -30, 20, 28, 30, -12, -14, -14, 12, 14, 14, -4, 4, -8, 8])
        ys = np.array([40, 70, 70, 110, 150, 70, 110, 150, 150, 200, 240, 150, 200, 240, 35, 35, 38, 38])
        body[:, 0], body[:, 1], body[:, 2] = xs, ys, 1.0
        poses.append(PoseFrame(body=body, width=w, height=h))
    poses[-1] = None  # a frame without a person
    frames = np.full((n, h, w, 3), 90, np.uint8)
    masks = np.zeros((n, h, w), bool)
    write_cached_video(root, "vid", frames=frames, clothing_masks=masks, face_masks=masks,
                       pose_images=np.stack([draw_pose(p, h, w) if p else np.zeros((h, w, 3), np.uint8)
                                             for p in poses]),
                       poses=poses, landmarks=np.zeros((n, h, w, 3), np.uint8), arcface=np.zeros((n, 512)),
                       face_boxes=np.zeros((n, 4)), has_face=np.ones(n, bool), fps=8.0, source="synthetic")
    return poses


def test_cache_pose_images_are_drawn_at_the_output_size_like_inference(tmp_path):
    """The pose image is drawn from the keypoints mapped through the crop, at the output size with the default
    line width (what inference does), not drawn at the source size and then shrunk."""
    from m2h_core.training.dataset import ClipCacheDataset
    from m2h_core.pose_render import PoseFrame, draw_pose
    from m2h_core.video_io import apply_crop, compute_center_crop

    poses = _landscape_cache(tmp_path)
    ds = ClipCacheDataset(tmp_path, None, num_frames=3, stride=1, height=64, width=32)
    item = ds.window(0, 3)
    info = compute_center_crop(256, 384, 64, 32)
    assert (info.x0, info.crop_width) == (128, 128)
    got = (item["pose_images"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        mapped = info.map_points(poses[i].body)
        want = draw_pose(PoseFrame(body=mapped, width=32, height=64), 64, 32)
        assert np.array_equal(got[i], want)
        stored = apply_crop(draw_pose(poses[i], 256, 384), info)  # the old way: thin, blurred limbs
        assert not np.array_equal(got[i], stored)
    assert got[2].max() == 0  # no person: black
    # the same frame at half scale is drawn at 32x16, again at that size
    ds.scale = 0.5
    half = ds.window(0, 1)["pose_images"][0]
    info2 = compute_center_crop(256, 384, 32, 16)
    want2 = draw_pose(PoseFrame(body=info2.map_points(poses[0].body), width=16, height=32), 32, 16)
    assert np.array_equal((half * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), want2)
    # a cache without keypoints falls back to cropping/resizing the stored pose images
    (tmp_path / "vid" / "keypoints.json").unlink()
    ds = ClipCacheDataset(tmp_path, None, num_frames=3, stride=1, height=64, width=32)
    old = (ds.window(0, 1)["pose_images"][0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(old, apply_crop(draw_pose(poses[0], 256, 384), info))


def test_write_split_is_stable_when_videos_are_added(tmp_path):
    import json

    from m2h_core.training.dataset import write_split

    def add(names):
        for n in names:
            (tmp_path / n).mkdir()
            (tmp_path / n / "meta.json").write_text("{}")

    add([f"a{i:02d}" for i in range(20)])
    first = write_split(tmp_path, seed=3, test_fraction=0.2)
    assert len(first["test"]) == 4
    add([f"b{i:02d}" for i in range(40)])
    import shutil

    shutil.rmtree(tmp_path / first["train"][0])  # a video removed from the cache is dropped
    second = write_split(tmp_path, seed=3, test_fraction=0.2)
    assert set(first["test"]) <= set(second["test"])
    assert set(first["train"][1:]) <= set(second["train"]) and first["train"][0] not in second["train"]
    new_test = set(second["test"]) - set(first["test"])
    assert 0 < len(new_test) < 40 and all(n.startswith("b") for n in new_test)  # ~20% of the new videos
    assert json.loads((tmp_path / "split.json").read_text()) == second
    assert write_split(tmp_path, seed=3, test_fraction=0.2) == second  # deterministic
    fresh = write_split(tmp_path, seed=4, test_fraction=0.2)  # another seed: a fresh split
    assert len(fresh["test"]) == round(0.2 * 59)
