"""Training clips shorter than the training window (issue 32): refused by prepare_data (listed in failed.json with
the reason; `--min-frames`), and left out with a warning by the dataset when a cache holds them anyway (a cache
written here by hand), never looped (frames 0,1,2,0,1,2,...)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from m2h_core.training.dataset import CacheError, ClipCacheDataset, write_cached_video

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import prepare_data


def stand_ins() -> prepare_data.Preprocessors:
    """Every frame is a person in clothes with a face (the models are not what is tested here)."""

    def parse(frames):
        m = np.ones(frames.shape[:3], bool)
        return m, m

    def face(frame):
        m = np.zeros(frame.shape[:2], bool)
        m[2:6, 2:6] = True
        return {"embedding": np.ones(512, np.float32) / np.sqrt(512), "bbox": np.array([2, 2, 6, 6]), "mask": m,
                "landmark_image": np.zeros_like(frame)}

    from m2h_core.demo.synthetic import generate_clip

    pose = generate_clip(0, n_frames=1, height=64, width=32).poses[0]
    return prepare_data.Preprocessors(parse, lambda f: (np.zeros_like(f), [pose] * len(f)), face)


@pytest.fixture()
def videos(tmp_path):
    from m2h_core.video_io import write_video

    d = tmp_path / "videos"
    d.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (10, 64, 32, 3), dtype=np.uint8)
    write_video(d / "long.mp4", frames, 8)
    write_video(d / "short.mp4", frames[:3], 8)
    return d


def test_prepare_data_skips_clips_shorter_than_the_window_and_says_why(videos, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_data.Preprocessors, "from_models", classmethod(lambda cls, *a, **k: stand_ins()))
    out = tmp_path / "cache"
    assert prepare_data.main(["--videos", str(videos), "--out", str(out)]) == 0
    failed = json.loads((out / "failed.json").read_text())
    assert [Path(f["video"]).name for f in failed] == ["short.mp4"]
    assert failed[0]["reason"].startswith("too short: 3 frame(s), fewer than the 8-frame training window")
    # --min-frames reaches process_video: 3 lets the short clip in, 11 refuses the 10-frame one as well
    assert prepare_data.main(["--videos", str(videos), "--out", str(out), "--min-frames", "3"]) == 0
    assert json.loads((out / "failed.json").read_text()) == []
    out2 = tmp_path / "cache2"
    assert prepare_data.main(["--videos", str(videos), "--out", str(out2), "--min-frames", "11"]) == 0
    assert {Path(f["video"]).name for f in json.loads((out2 / "failed.json").read_text())} == {"long.mp4",
                                                                                               "short.mp4"}
    with pytest.raises(SystemExit):
        prepare_data.main(["--videos", str(videos), "--out", str(out2), "--max-frames", "4"])


def hand_made_cache(root: Path, lengths: dict[str, int]) -> None:
    for vid, n in lengths.items():
        z = np.zeros((n, 32, 16), bool)
        write_cached_video(root, vid, frames=np.full((n, 32, 16, 3), 100, np.uint8), clothing_masks=z, face_masks=z,
                           pose_images=np.zeros((n, 32, 16, 3), np.uint8), poses=[None] * n,
                           landmarks=np.zeros((n, 32, 16, 3), np.uint8), arcface=np.zeros((n, 512)),
                           face_boxes=np.zeros((n, 4)), has_face=np.ones(n, bool), fps=8.0, source="hand")


def test_the_dataset_leaves_short_clips_out_with_a_warning(tmp_path, caplog):
    hand_made_cache(tmp_path, {"three": 3, "eight": 8, "ten": 10})
    with caplog.at_level(logging.WARNING, logger="m2h"):
        ds = ClipCacheDataset(tmp_path, None, num_frames=8, stride=1, height=32, width=16)
    assert ds.short == ["three"] and [v.id for v in ds.videos] == ["eight", "ten"]
    assert "1 of 3 clips" in caplog.text and "three (3)" in caplog.text and "8-frame training window" in caplog.text
    for pos in range(6):  # every sampled window is 8 distinct, increasing frames
        ind = ds[(pos % 2, pos)]["frame_indices"].numpy()
        assert len(ind) == 8 and (np.diff(ind) > 0).all()
    with pytest.raises(CacheError, match="3 of 3 clips .* fewer frames than the 11-frame training window"):
        ClipCacheDataset(tmp_path, None, num_frames=11, height=32, width=16)
    every = ClipCacheDataset(tmp_path, None, num_frames=None, height=32, width=16)  # evaluation: windows only
    assert len(every.videos) == 3 and every.window(0, 3)["frames"].shape[0] == 3
