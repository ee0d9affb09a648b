"""train/prepare_data.py: resumable preprocessing into the clip cache, failures listed, the test split file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import prepare_data  # noqa: E402

def test_prepare_data_resumes_and_reports_failures(tmp_path):
    """Real-video path with simple deterministic analyses standing in for the ONNX models: a good video is cached;
    an unreadable file, a video without a person and one without a face are listed in failed.json with the
    reason; a second run skips the finished video and retries only the failed ones."""
    import numpy as np

    from m2h_core.training.dataset import ClipCacheDataset
    from m2h_core.demo.synthetic import generate_clip
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
