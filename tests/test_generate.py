"""`m2h generate` end to end on files: video in -> DWPose + parsing + face analysis + sampler -> video out.

The preprocessor model files are tiny graphs in the real formats (tests/test_preprocess_builders.py); the M2H
checkpoint is a tiny self-contained one. What is checked: the command runs the real code path and writes a
video with the source frame count and fps at the model's size, and bad inputs fail with clear messages.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from m2h_core.checkpoint import save_checkpoint
from m2h_core.cli import main
from m2h_core.config import tiny
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.models.m2h import M2HModel
from m2h_core.demo.synthetic import generate_clip
from m2h_core.video_io import read_video, write_video

from .test_preprocess_builders import build_dwpose_pair, build_face_pack, build_segformer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    cfg = tiny()
    torch.manual_seed(0)
    save_checkpoint(M2HModel(cfg), d / "m2h_tiny.safetensors", encoders=FrozenEncoders.random(cfg))
    clip = generate_clip(3, n_frames=10, height=128, width=96, motion="sway")
    write_video(d / "mannequin.mp4", clip.mannequin, fps=12)
    np.save(d / "masks.npy", clip.clothing_mask)
    from PIL import Image
    Image.fromarray(generate_clip(4, n_frames=1, height=256, width=192).identity_image).save(d / "person.png")
    models = d / "models"
    build_dwpose_pair(models / "dwpose")
    build_face_pack(models / "insightface" / "models" / "antelopev2")
    build_segformer(models / "human_parsing" / "segformer_b2_clothes")
    return d


def run(files, *extra):
    out = files / "out.mp4"
    args = ["generate", "--video", str(files / "mannequin.mp4"), "--identity", str(files / "person.png"),
            "--out", str(out), "--checkpoint", str(files / "m2h_tiny.safetensors"), "--steps", "2",
            "--models-dir", str(files / "models"), "--device", "cpu", "--precision", "fp32", *extra]
    assert main(args) == 0
    return read_video(out)


def test_generate_with_all_preprocessors(files):
    out = run(files)
    assert out.num_frames == 10
    assert (out.height, out.width) == (64, 32)
    assert out.fps == pytest.approx(12, abs=1e-3)


def test_generate_with_user_masks(files):
    out = run(files, "--masks", str(files / "masks.npy"), "--context", "4", "--overlap", "2")
    assert out.num_frames == 10


def test_generate_bad_inputs(files):
    with pytest.raises(ValueError, match="10"):
        np.save(files / "short.npy", np.ones((7, 128, 96), bool))
        run(files, "--masks", str(files / "short.npy"))
    with pytest.raises(Exception, match="(?i)cannot open"):
        (files / "broken.mp4").write_bytes(b"not a video at all")
        main(["generate", "--video", str(files / "broken.mp4"), "--identity", str(files / "person.png"),
              "--out", str(files / "x.mp4"), "--checkpoint", str(files / "m2h_tiny.safetensors")])
