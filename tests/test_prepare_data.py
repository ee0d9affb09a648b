"""train/prepare_data.py: resumable preprocessing into the clip cache, failures listed, the test split file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import prepare_data  # noqa: E402 - train/ is on sys.path from here


def test_prepare_data_resumes_and_reports_failures(tmp_path):
    """Real-video path with simple deterministic analyses standing in for the ONNX models: a good video is cached;
    an unreadable file, a video without a person and one without a face are listed in failed.json with the
    reason; a second run skips the finished video and retries only the failed ones."""
    import numpy as np

    from m2h_core.demo.synthetic import generate_clip
    from m2h_core.training.dataset import ClipCacheDataset
    from m2h_core.video_io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    clip = generate_clip(3, n_frames=10, height=128, width=64)
    write_video(videos / "good.mp4", clip.human, 8)
    write_video(videos / "faceless.mp4", 255 - clip.human, 8)  # dark background: the stand-in finds no face
    write_video(videos / "empty.mp4", np.full_like(clip.human, 240), 8)  # background only: no person
    (videos / "broken.mp4").write_bytes(b"not a video")
    parsed = []

    def parse(frames):
        parsed.append(len(frames))
        m = np.abs(frames.astype(int) - 240).sum(-1) > 60
        return m, m

    def pose(frames):
        return np.zeros_like(frames), [clip.poses[0]] + [None] * (len(frames) - 1)

    def face(frame):
        if frame[0, 0].mean() < 128:
            return None
        m = np.zeros(frame.shape[:2], bool)
        m[10:20, 20:40] = True
        return {"embedding": np.ones(512, np.float32) / np.sqrt(512), "bbox": np.array([20, 10, 40, 20]),
                "mask": m, "landmark_image": np.zeros_like(frame)}

    pre = prepare_data.Preprocessors(parse, pose, face)
    out = tmp_path / "cache"
    rep = prepare_data.prepare_videos(videos, out, pre, log=lambda s: None)
    reasons = {Path(f["video"]).name: f["reason"] for f in rep["failed"]}
    assert set(reasons) == {"broken.mp4", "empty.mp4", "faceless.mp4"}
    assert reasons["broken.mp4"].startswith("unreadable")
    assert reasons["empty.mp4"].startswith("no person")
    assert reasons["faceless.mp4"].startswith("no face")
    done = [d for d in out.iterdir() if (d / "meta.json").is_file()]
    assert len(done) == 1 and done[0].name.startswith("good-")
    split = json.loads((out / "split.json").read_text())
    assert split["train"] + split["test"] == [done[0].name]
    assert json.loads((out / "failed.json").read_text()) == rep["failed"]
    ds = ClipCacheDataset(out, None, num_frames=4, stride=2, height=64, width=32)
    item = ds[(0, 0)]
    assert item["frames"].shape == (4, 3, 64, 32) and item["face_masks"].sum() > 0
    assert item["identity_index"] not in item["frame_indices"].tolist()  # x_id is another frame
    assert torch.allclose(item["arcface"].norm(), torch.tensor(1.0))
    n = len(parsed)
    prepare_data.prepare_videos(videos, out, pre, log=lambda s: None)
    assert len(parsed) - n == 2  # only empty + faceless are parsed again; good is skipped, broken fails to read


def test_test_list_fixes_the_split_and_is_kept(tmp_path):
    """--test-list: exactly the listed videos are 'test' (matched by id or by the stem of the source file, so the
    dataset's URL lists work); the names are stored in split.json and reused when the cache grows."""
    from m2h_core.training.dataset import write_split

    root = tmp_path / "cache"
    for i, src in enumerate(["/data/ubc/train/91BjuE6irxS.mp4", "/data/ubc/x/A1b2.mp4", "/data/ubc/C3d4.mp4"]):
        (root / f"v{i}").mkdir(parents=True)
        (root / f"v{i}" / "meta.json").write_text(json.dumps({"source": src}))
    names = tmp_path / "fashion_test.txt"
    names.write_text("# official test list\nhttps://host/fashion/91BjuE6irxS.mp4\nC3d4.mp4\nmissing.mp4\n\n")
    rep = prepare_data.finish_split(root, 0, 0.1, names, log=lambda s: None)
    assert rep["test"] == ["v0", "v2"] and rep["train"] == ["v1"] and rep["unmatched"] == ["missing.mp4"]
    saved = json.loads((root / "split.json").read_text())
    assert saved["test"] == ["v0", "v2"] and saved["test_list"] == str(names)
    (root / "v3").mkdir()
    (root / "v3" / "meta.json").write_text(json.dumps({"source": "/data/ubc/missing.mp4"}))
    again = write_split(root, seed=0, test_fraction=0.1)  # no list given: the stored one still applies
    assert again["test"] == ["v0", "v2", "v3"] and again["train"] == ["v1"] and again["unmatched"] == []


def test_test_list_cli_on_a_synthetic_cache(tmp_path, capsys):
    out = tmp_path / "cache"
    assert prepare_data.main(["--synthetic", "4", "--out", str(out), "--frames", "4", "--size", "32x16"]) == 0
    seeded = json.loads((out / "split.json").read_text())
    assert len(seeded["test"]) == 1 and seeded["test_fraction"] == 0.1  # 10% of 4, at least one
    (tmp_path / "test.txt").write_text("synthetic-00001\nsynthetic-00003\n")
    assert prepare_data.main(["--synthetic", "4", "--out", str(out), "--frames", "4", "--size", "32x16",
                              "--test-list", str(tmp_path / "test.txt")]) == 0
    assert "2 of 2 listed videos" in capsys.readouterr().out
    split = json.loads((out / "split.json").read_text())
    assert split["test"] == ["synthetic-00001", "synthetic-00003"]
    assert split["train"] == ["synthetic-00000", "synthetic-00002"]
    try:
        prepare_data.main(["--synthetic", "4", "--out", str(out), "--test-list", str(tmp_path / "nope.txt")])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a missing --test-list file must stop the run")
    assert "nope.txt is not a file" in capsys.readouterr().err
