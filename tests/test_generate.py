"""`m2h generate` end to end on files: video in -> DWPose + parsing + face analysis + sampler -> video out.

The preprocessor model files are tiny graphs in the real formats (tests/test_preprocess_builders.py); the M2H
checkpoint is a tiny self-contained one. What is checked: the command runs the real code path and writes a
video with the source frame count and fps at the model's size, and every bad input fails with one clear line
BEFORE any model is built (counted on torch.nn.Module.__init__ and onnxruntime.InferenceSession themselves).
"""

import numpy as np
from PIL import Image
import pytest
import torch

from m2h_core.checkpoint import save_checkpoint
from m2h_core.cli import main
from m2h_core.config import tiny
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.models.m2h import M2HModel
from m2h_core.demo.synthetic import generate_clip
from m2h_core.video_io import read_video, write_video

from .fixtures import write_m2h_checkpoint
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


def args(files, *extra, out=None):
    return ["generate", "--video", str(files / "mannequin.mp4"), "--identity", str(files / "person.png"),
            "--out", str(out or files / "out.mp4"), "--checkpoint", str(files / "m2h_tiny.safetensors"), "--steps",
            "2", "--models-dir", str(files / "models"), "--device", "cpu", "--precision", "fp32", *extra]


def run(files, *extra):
    out = files / "out.mp4"
    assert main(args(files, *extra, out=out)) == 0
    return read_video(out)


def test_generate_with_all_preprocessors(files, capsys):
    out = run(files)
    assert out.num_frames == 10
    assert (out.height, out.width) == (64, 32)
    assert out.fps == pytest.approx(12, abs=1e-3)
    assert "10 frames, 32x64 (WxH), 12 fps" in capsys.readouterr().out  # one size convention: WxH


def test_generate_with_user_masks(files):
    out = run(files, "--masks", str(files / "masks.npy"), "--context", "4", "--overlap", "2")
    assert out.num_frames == 10


def test_half_precision_on_the_cpu_and_no_third_party_noise(files, caplog, capsys):
    """bf16/fp16 on a CPU: CLIP's bicubic resize has no half kernel there (it is done in float32); and the
    diffusers "kept in float32: []" warning and transformers' weight-loading bar are not printed."""
    for precision in ("bf16", "fp16"):
        out = files / f"half_{precision}.mp4"
        a = args(files, "--masks", str(files / "masks.npy"), out=out)
        a[a.index("--precision") + 1] = precision
        assert main(a) == 0
        assert read_video(out).num_frames == 10
    assert not [r for r in caplog.records if "kept in float32" in r.getMessage()]
    assert "Loading weights" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ fail fast


@pytest.fixture
def built(files, monkeypatch):
    """Counts every torch module and onnxruntime session constructed (the real constructors, counted)."""
    import onnxruntime as ort

    counts = {"torch modules": 0, "onnx sessions": 0}
    module_init, session_init = torch.nn.Module.__init__, ort.InferenceSession.__init__

    def count_module(self, *a, **k):
        counts["torch modules"] += 1
        module_init(self, *a, **k)

    def count_session(self, *a, **k):
        counts["onnx sessions"] += 1
        session_init(self, *a, **k)

    monkeypatch.setattr(torch.nn.Module, "__init__", count_module)
    monkeypatch.setattr(ort.InferenceSession, "__init__", count_session)
    return counts


def bad_files(d):
    """One broken input of each kind, in the test's folder."""
    (d / "broken.mp4").write_text("not a video at all")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(d / "tiny.png")
    np.save(d / "short.npy", np.ones((7, 128, 96), bool))
    np.save(d / "empty.npy", np.zeros((10, 128, 96), bool))
    poses = d / "poses4"
    poses.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(np.zeros((128, 96, 3), np.uint8)).save(poses / f"{i}.png")
    (d / "cut.safetensors").write_bytes((d / "m2h_tiny.safetensors").read_bytes()[:5000])
    write_m2h_checkpoint(d / "tiny_no_encoders.safetensors", tiny())
    from safetensors.torch import save_file  # the tell-tale first layers of SD-1.5 (320-wide UNet, 128-wide VAE)

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)}, str(d / "sd15_like.safetensors"))
    from .fixtures import write_clip_vision

    write_clip_vision(d / "clip_tiny.safetensors", tiny())


BAD = {  # name: (arguments to replace / add, exception, the message)
    "output in a read-only place": ({"--out": "/proc/m2h_out.mp4"}, ValueError, r"/proc/m2h_out.mp4: the folder "
                                    r"/proc is not writable.*choose another --out"),
    "output under a file": ({"--out": "{d}/person.png/out.mp4"}, ValueError, r"person.png is a file, not a folder"),
    "output format": ({"--out": "{d}/out.avi"}, ValueError, r"cannot write a .avi video; use .mp4"),
    "video": ({"--video": "{d}/broken.mp4"}, ValueError, r"broken.mp4: cannot read it as the mannequin video .a "
              r"video. .a text file of 18 bytes"),
    "missing video": ({"--video": "{d}/nope.mp4"}, FileNotFoundError, r"the mannequin video not found: .*nope.mp4"),
    "small photo": ({"--identity": "{d}/tiny.png"}, ValueError, r"tiny.png is 20x24 .WxH.: too small to hold a "
                    r"detectable face"),
    "photo": ({"--identity": "{d}/broken.png"}, ValueError, r"broken.png: cannot read it as the identity photo "
              r".an image. .a PNG image"),
    "mask count": ({"--masks": "{d}/short.npy"}, ValueError, r"the video has 10 frames but there are 7 clothing "
                   r"masks"),
    "empty masks": ({"--masks": "{d}/empty.npy"}, ValueError, r"empty.npy: the clothing mask is empty in every "
                    r"frame"),
    "pose count": ({"--poses": "{d}/poses4"}, ValueError, r"10 frames but there are 4 pose images"),
    "checkpoint": ({"--checkpoint": "{d}/cut.safetensors"}, ValueError, r"cut.safetensors is not a readable "
                   r".safetensors file"),
    "tiny checkpoint, SD-1.5 base": ({"--checkpoint": "{d}/tiny_no_encoders.safetensors",
                                      "--base": "{d}/sd15_like.safetensors",
                                      "--clip-vision": "{d}/clip_tiny.safetensors"},
                                     ValueError, r"the checkpoint tiny_no_encoders.safetensors is the tiny preset, but "
                                     r"the base sd15_like.safetensors is SD-1.5 .UNet width 320"),
    "checkpoint without encoders": ({"--checkpoint": "{d}/tiny_no_encoders.safetensors"}, ValueError,
                                    r"does not embed its VAE and CLIP image encoder: also give an SD-1.5 base"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_fails_before_any_model_is_built(files, built, case):
    bad_files(files)
    built.update({k: 0 for k in built})  # count from here on
    change, exc, message = BAD[case]
    a = args(files)
    for k, v in change.items():
        v = v.format(d=files)
        if k in a:
            a[a.index(k) + 1] = v
        else:
            a += [k, v]
    with pytest.raises(exc, match=message) as info:
        main(a)
    assert "\n" not in str(info.value)
    assert built == {"torch modules": 0, "onnx sessions": 0}, case


def test_an_empty_parse_stops_before_dwpose_and_the_face_models(files, built, tmp_path):
    models = tmp_path / "models"
    build_segformer(models / "human_parsing" / "segformer_b2_clothes", constant_label=0)  # all background
    built["torch modules"] = 0
    a = args(files)
    a[a.index("--models-dir") + 1] = str(models)
    with pytest.raises(ValueError, match="mannequin.mp4: the parsing model found no clothing in any frame"):
        main(a)
    assert built["onnx sessions"] == 0  # DWPose and the face analyser were never loaded


def test_a_corrupt_dwpose_file_is_one_line_naming_it(files, tmp_path):
    models = tmp_path / "models"
    (models / "dwpose").mkdir(parents=True)
    data = (files / "models" / "dwpose" / "yolox_l.onnx").read_bytes()
    (models / "dwpose" / "yolox_l.onnx").write_bytes(data[:1000])
    (models / "dwpose" / "dw-ll_ucoco_384.onnx").write_bytes((files / "models" / "dwpose" /
                                                              "dw-ll_ucoco_384.onnx").read_bytes())
    a = args(files, "--masks", str(files / "masks.npy"))
    a[a.index("--models-dir") + 1] = str(models)
    with pytest.raises(ValueError, match=r"yolox_l.onnx: not a loadable ONNX model .a binary file of 1,000 bytes.*"
                                         r"download it again from https://huggingface.co/yzd-v/DWPose") as info:
        main(a)
    assert "\n" not in str(info.value)


def test_cli_prints_the_error_on_its_own_line(files, monkeypatch, capsys):
    from m2h_core.cli import _ProgressBar, entry

    with pytest.raises(RuntimeError):
        with _ProgressBar("sampling") as bar:
            bar.update(1, 2)
            raise RuntimeError("boom")
    assert capsys.readouterr().err.endswith("\n")  # the bar is closed (its line ended) before anything else prints
    monkeypatch.setattr("sys.argv", ["m2h"] + args(files, out=files / "out.avi"))
    assert entry() == 2
    err = capsys.readouterr().err
    assert err.startswith("m2h: error: ") and err.count("\n") == 1 and "out.avi" in err


# ------------------------------------------------------------------------------------------ streamed output


def test_output_is_decoded_composited_and_written_in_chunks(files, tmp_path):
    """`write_output` decodes, composites and writes a few frames at a time; the frames written (PNG: lossless)
    are exactly those of decoding, compositing and converting the whole video at once."""
    from m2h_core.inference import inputs
    from m2h_core.inference.generate import GenerateRequest, Preprocessors, composite_output, write_output

    cfg = tiny()
    enc = FrozenEncoders.random(cfg)
    g = torch.Generator().manual_seed(0)
    n = 7
    latents = torch.randn(n, cfg.unet.latent_channels, *cfg.latent_size, generator=g)
    masks = torch.zeros(n, cfg.height, cfg.width)
    masks[:, 16:48, 8:24] = 1
    video = inputs.VideoInputs(torch.rand(n, 3, cfg.height, cfg.width, generator=g), masks,
                               torch.rand(n, 3, cfg.height, cfg.width, generator=g))
    models = Preprocessors([str(files / "models")])
    for lock in (False, True):
        req = GenerateRequest(video="-", identity="-", out=str(tmp_path / f"frames_{lock}"), garment_lock=lock,
                              keep_background=lock)
        notes: list[str] = []
        assert write_output(latents, enc, video, req, models, 12, notes, chunk=4) == n  # 4 + 3 frames
        whole = enc.decode(latents).permute(0, 2, 3, 1).numpy()
        if lock:
            whole = composite_output(whole, video, req, models, [])
            assert len(notes) == 1 and "garment lock" in notes[0]
        got = read_video(tmp_path / f"frames_{lock}").frames
        assert got.shape == (n, cfg.height, cfg.width, 3)
        np.testing.assert_array_equal(got, inputs.to_uint8(whole))
