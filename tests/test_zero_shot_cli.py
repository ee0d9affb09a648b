"""`m2h generate --zero-shot` end to end on files: tiny public files + tiny preprocessors -> a video."""

from __future__ import annotations

import pytest
from PIL import Image

from m2h_core.cli import main
from m2h_core.demo.synthetic import generate_clip
from m2h_core.video_io import read_video, write_video
from tests.test_preprocess_builders import build_dwpose_pair, build_face_pack, build_segformer
from tests.zero_shot_fixtures import write_tiny_public_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("zs")
    pub = write_tiny_public_files(d / "public")
    clip = generate_clip(3, n_frames=6, height=128, width=96, motion="sway")
    write_video(d / "mannequin.mp4", clip.mannequin, fps=12)
    Image.fromarray(generate_clip(4, n_frames=1, height=256, width=192).identity_image).save(d / "person.png")
    models = d / "models"
    build_dwpose_pair(models / "dwpose")
    build_face_pack(models / "insightface" / "models" / "antelopev2")
    build_segformer(models / "human_parsing" / "segformer_b2_clothes")
    return d, pub


def test_generate_zero_shot(files, capsys):
    d, pub = files
    out = d / "out.mp4"
    code = main(["generate", "--zero-shot", "--video", str(d / "mannequin.mp4"), "--identity", str(d / "person.png"),
                 "--out", str(out), "--base", pub.base, "--ip-adapter", pub.ip_adapter, "--motion", pub.motion,
                 "--controlnet", pub.controlnet, "--steps", "2", "--cfg", "2", "--models-dir", str(d / "models"),
                 "--device", "cpu", "--precision", "fp32"])
    assert code == 0
    video = read_video(out)
    assert video.num_frames == 6 and (video.height, video.width) == (64, 32)
    assert "zero-shot" in capsys.readouterr().out


def test_zero_shot_needs_its_files_and_generate_its_checkpoint(files):
    d, pub = files
    common = ["generate", "--video", str(d / "mannequin.mp4"), "--identity", str(d / "person.png"), "--out",
              str(d / "x.mp4")]
    with pytest.raises(SystemExit):
        main(common)  # neither --checkpoint nor --zero-shot
    with pytest.raises(ValueError, match="--ip-adapter"):
        main([*common, "--zero-shot", "--base", pub.base])
