"""`m2h regen-mask` and `m2h composite` (m2h_core/inference/any_generator.py) on files: a synthetic mannequin video,
a "generated" video of another size and frame count, a tiny real SegFormer parsing model written to disk."""

from __future__ import annotations

import numpy as np
import pytest

from m2h_core.cli import main
from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import regen_mask as rm
from m2h_core.pose_render import save_openpose_json
from m2h_core.video_io import center_crop_resize, read_video, write_video

from .test_preprocess_builders import build_segformer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("anygen")
    c = generate_clip(3, n_frames=6, height=128, width=64, motion="sway")
    write_video(d / "mannequin.mp4", c.mannequin, 12)
    src = read_video(d / "mannequin.mp4").frames  # what every reader of the file gets
    small, _ = center_crop_resize(src.astype(np.float32) / 255, 64, 32)
    write_video(d / "gen.mp4", (small[:5] * 0.7 * 255).round().astype(np.uint8), 16)  # half size, 5 frames, 16 fps
    np.save(d / "cloth.npy", c.clothing_mask)
    np.save(d / "person.npy", c.mannequin_mask)
    save_openpose_json(c.poses, d / "poses.json")
    build_segformer(d / "models" / "segformer_b2_clothes", constant_label=4)  # labels everything upper clothes
    return d, c, src


def test_regen_mask_command_writes_the_masks_the_node_computes(files, capsys):
    d, c, _ = files
    assert main(["regen-mask", "--video", str(d / "mannequin.mp4"), "--out", str(d / "regen"), "--masks",
                 str(d / "cloth.npy"), "--person-masks", str(d / "person.npy"), "--keypoints", str(d / "poses.json"),
                 "--lock-out", str(d / "lock"), "--preview-out", str(d / "preview.mp4")]) == 0
    assert "6 frames, 64x128 (WxH), 12 fps" in capsys.readouterr().out
    want = rm.regenerate_mask(c.clothing_mask, c.mannequin_mask, c.poses, rm.RegenMaskSettings.for_height(128))
    regen, lock = (read_video(d / n, fps=12).frames[..., 0] > 127 for n in ("regen", "lock"))
    np.testing.assert_array_equal(regen, want.regen > 0.5)
    np.testing.assert_array_equal(lock, want.lock)
    prev = read_video(d / "preview.mp4")
    assert prev.num_frames == 6 and prev.fps == 12


def test_regen_mask_command_needs_a_parser_or_both_masks(files):
    d, _, _ = files
    with pytest.raises(Exception, match="segformer_b2_clothes"):
        main(["regen-mask", "--video", str(d / "mannequin.mp4"), "--out", str(d / "r2"), "--keypoints", "none",
              "--models-dir", str(d / "empty")])


def test_composite_command_locks_the_garment_at_the_generated_size(files, capsys):
    d, _, src = files
    if not (d / "lock").exists():
        pytest.skip("needs the regen-mask test's output")
    common = ["composite", "--generated", str(d / "gen.mp4"), "--source", str(d / "mannequin.mp4"), "--lock-masks",
              str(d / "lock"), "--garment-lock", "--models-dir", str(d / "models")]
    assert main(common + ["--out", str(d / "out")]) == 0
    err = capsys.readouterr().err
    assert "resized to the generated frames' 32x64" in err and "source video has 1 more frames" in err
    assert "source's 12 fps (the generated file says 16)" in err
    out = read_video(d / "out", fps=12).frames
    assert out.shape == (5, 64, 32, 3)
    lock = read_video(d / "lock", fps=12).frames[..., 0] > 127
    small_src, info = center_crop_resize(src.astype(np.float32) / 255, 64, 32)
    from m2h_core.video_io import crop_resize_masks

    region = crop_resize_masks(lock.astype(np.float32), info)[:5] > 0.5  # this parser sees no arms: all of it locked
    assert region.sum() > 300
    want = (np.clip(small_src[:5], 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(out[region], want[region])
    assert main(common + ["--out", str(d / "out.mp4")]) == 0  # a video keeps the source's fps
    v = read_video(d / "out.mp4")
    assert v.num_frames == 5 and v.fps == 12


def test_composite_command_says_what_is_missing(files):
    d, _, _ = files
    with pytest.raises(ValueError, match="nothing to do"):
        main(["composite", "--generated", str(d / "gen.mp4"), "--source", str(d / "mannequin.mp4"), "--out",
              str(d / "x.mp4")])


def test_composite_command_keeps_the_sources_sound_for_the_frames_composited(files, tmp_path, capsys):
    """A source with a tone from 0.5 s, 24 frames at 12 fps; a generated video of 12 frames: the composite is the
    first 12 frames (1 s) at 12 fps and carries the source's first second of sound, tone onset at 0.5 s."""
    from .test_audio import onset_of, sound, write_with_tone

    d, c, _ = files
    frames = np.concatenate([c.mannequin] * 4)[:24]
    write_with_tone(tmp_path / "src.mp4", frames)
    write_video(tmp_path / "gen.mp4", frames[:12], 12)
    assert main(["composite", "--generated", str(tmp_path / "gen.mp4"), "--source", str(tmp_path / "src.mp4"),
                 "--out", str(tmp_path / "out.mp4"), "--keep-background", "--models-dir", str(d / "models")]) == 0
    assert "audio kept" in capsys.readouterr().err
    samples, sr = sound(tmp_path / "out.mp4")
    assert abs(len(samples) / sr - 1.0) < 0.07 and abs(onset_of(samples, sr) - 0.5) < 0.03  # AAC: whole 1024s
    v = read_video(tmp_path / "out.mp4")  # longer than one 16-frame chunk: the fps is the source's, not a default
    assert v.num_frames == 12 and v.fps == 12


def test_a_missing_input_video_is_named_before_any_model_is_looked_for(tmp_path):
    """No parsing model anywhere: the missing video is what the user hears about, not the model."""
    with pytest.raises(FileNotFoundError, match="the generated video not found"):
        main(["composite", "--generated", str(tmp_path / "gen.mp4"), "--source", str(tmp_path / "src.mp4"),
              "--out", str(tmp_path / "o.mp4"), "--garment-lock", "--models-dir", str(tmp_path / "none")])
    with pytest.raises(FileNotFoundError, match="the mannequin video not found"):
        main(["regen-mask", "--video", str(tmp_path / "m.mp4"), "--out", str(tmp_path / "r.mp4"),
              "--models-dir", str(tmp_path / "none")])
