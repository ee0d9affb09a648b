"""One preprocessing pipeline (issue 11): `m2h generate` and the nodes build the SAME sampler inputs, and the
sampler's output depends on every input in the right slot (issue 17: swapped frames / pose images would pass a
model whose output ignores them, so these tests use a model with every weight perturbed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2h_core import cli
from m2h_core.checkpoint import save_checkpoint
from m2h_core.config import tiny
from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import generate as generate_module
from m2h_core.inference import inputs
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.inference.inputs import IdentityInputs, InputError, VideoInputs
from m2h_core.inference.pipeline import M2HPipeline
from m2h_core.inference.sampler import SamplerSettings, sample_video
from m2h_core.video_io import compute_center_crop, crop_resize_masks, read_video, write_video
from nodes import logic

from .fixtures import build_m2h_model, randomize_


def trained_like(cfg, seed):
    """A model whose output depends on every input: all weights perturbed, and E_pose's zero-initialised input
    projection given weights of a trained model's size (with 0.02 noise the pose barely moves the output)."""
    model = build_m2h_model(cfg, seed=seed, perturb=True)
    randomize_(model.pose_encoder.to_input, seed + 1, scale=0.3)
    return model
from .test_preprocess_builders import build_face_pack  # noqa: E402

SRC_H, SRC_W = 128, 96  # 3:4, not the model's 2:1: the centre crop removes 32 columns


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A non-2:1 mannequin video, masks and pose images at the source size, a photo, a perturbed tiny model."""
    d = tmp_path_factory.mktemp("inputs")
    cfg = tiny()
    save_checkpoint(trained_like(cfg, 3), d / "m2h.safetensors",
                    encoders=FrozenEncoders.random(cfg, seed=4))
    clip = generate_clip(5, n_frames=6, height=SRC_H, width=SRC_W, motion="sway")
    write_video(d / "mannequin.mp4", clip.mannequin, fps=12)
    masks = np.zeros((6, SRC_H, SRC_W), bool)
    masks[:, 40:100, 20:60] = True  # off-centre: a stretch instead of the crop puts it on other columns
    np.save(d / "masks.npy", masks)
    poses = d / "poses"
    poses.mkdir()
    for i in range(6):  # lossless pose frames: a bar that moves
        img = np.zeros((SRC_H, SRC_W, 3), np.uint8)
        img[30 + 4 * i: 40 + 4 * i, 10:80] = (255, 0, 0)
        Image.fromarray(img).save(poses / f"{i:03d}.png")
    Image.fromarray(generate_clip(6, n_frames=1, height=160, width=120).identity_image).save(d / "person.png")
    build_face_pack(d / "models" / "insightface" / "models" / "antelopev2")
    return d


def cli_args(d: Path, out: Path, **over) -> list[str]:
    f = {"video": d / "mannequin.mp4", "identity": d / "person.png", "masks": d / "masks.npy", "poses": d / "poses"}
    f.update(over)
    return ["generate", "--video", str(f["video"]), "--identity", str(f["identity"]), "--out", str(out),
            "--checkpoint", str(d / "m2h.safetensors"), "--masks", str(f["masks"]), "--poses", str(f["poses"]),
            "--models-dir", str(d / "models"), "--steps", "2", "--cfg", "2.0", "--seed", "5", "--device", "cpu",
            "--precision", "fp32"]


def node_inputs(d: Path, cfg) -> tuple[VideoInputs, IdentityInputs]:
    """What the nodes get from ComfyUI for the same files (IMAGE = uint8 / 255, MASK = the mask) and make of it."""
    from m2h_core.preprocess.face import FaceAnalyzer

    frames = torch.from_numpy(read_video(d / "mannequin.mp4").frames).float() / 255
    poses = torch.from_numpy(read_video(d / "poses").frames).float() / 255
    masks = torch.from_numpy(np.load(d / "masks.npy")).float()
    photo = torch.from_numpy(np.array(Image.open(d / "person.png").convert("RGB"))).float()[None] / 255
    video = logic.prepare_sampler_inputs(frames, masks, poses, cfg.height, cfg.width)
    head, _ = logic.encode_identity(photo, FaceAnalyzer("antelopev2", [d / "models"]), cfg.height, cfg.width,
                                    placement="fit_photo", identity_input=cfg.identity_input)
    return video, head


@pytest.fixture
def recorded(monkeypatch):
    """The real sample_video, recording what `m2h generate` hands it (a spy, not a replacement)."""
    calls = []
    real = generate_module.sample_video

    def spy(model, encoders, video, identity, *rest, **kw):
        calls.append((video, identity, rest[0] if rest else kw.get("settings")))
        return real(model, encoders, video, identity, *rest, **kw)

    monkeypatch.setattr(generate_module, "sample_video", spy)
    return calls


def test_cli_and_nodes_give_identical_sampler_inputs_for_a_non_2_to_1_video_with_user_masks(files, recorded):
    cfg = tiny()
    assert cli.main(cli_args(files, files / "out_a.mp4")) == 0
    (cli_video, cli_ident, _), = recorded
    node_video, node_ident = node_inputs(files, cfg)
    for name in ("frames", "clothing_masks", "pose_images"):
        assert torch.equal(getattr(cli_video, name), getattr(node_video, name)), name
    for name in ("image", "landmarks", "arcface"):
        assert torch.equal(getattr(cli_ident, name), getattr(node_ident, name)), name
    # the masks went through the frames' centre crop (columns 16..80 of the source), not a stretch of 96 -> 32
    src = np.load(files / "masks.npy").astype(np.float32)
    cropped = crop_resize_masks(src, compute_center_crop(SRC_H, SRC_W, cfg.height, cfg.width))
    assert np.array_equal(cli_video.clothing_masks.numpy(), np.clip(cropped, 0, 1))
    stretched = torch.nn.functional.interpolate(torch.from_numpy(src)[:, None], size=(cfg.height, cfg.width))[:, 0]
    a, b = cli_video.clothing_masks > 0.5, stretched > 0.5
    assert (a & b).sum() / (a | b).sum() < 0.8  # the old behaviour would not pass the equality above


def test_cli_output_equals_the_node_path_and_depends_on_every_input_file(files):
    cfg = tiny()

    def run(name, **over):
        out = files / name  # a folder: lossless PNG frames
        assert cli.main(cli_args(files, out, **over)) == 0
        return np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])

    base = run("png_base")
    video, head = node_inputs(files, cfg)
    pipe = M2HPipeline(*_load(files))
    settings = logic.sampler_settings(seed=5, steps=2, cfg=2.0, scheduler="ddim", context_frames=0,
                                      context_overlap=4)
    images, _ = logic.run_sampler(pipe, video, head, settings)
    assert np.array_equal(base, inputs.to_uint8(images))
    # each input file changes the video
    masks = np.load(files / "masks.npy")
    np.save(files / "masks2.npy", np.roll(masks, 24, axis=1))
    other = files / "poses2"
    other.mkdir(exist_ok=True)
    for i, p in enumerate(sorted((files / "poses").glob("*.png"))):
        Image.fromarray(np.roll(np.asarray(Image.open(p)), 30, axis=0)).save(other / p.name)
    Image.fromarray(generate_clip(9, n_frames=1, height=160, width=120).identity_image).save(files / "person2.png")
    write_video(files / "mannequin2.mp4", generate_clip(8, n_frames=6, height=SRC_H, width=SRC_W).mannequin, fps=12)
    for key, value in (("masks", files / "masks2.npy"), ("poses", other), ("identity", files / "person2.png"),
                       ("video", files / "mannequin2.mp4")):
        changed = run(f"png_{key}", **{key: value})
        assert np.abs(changed.astype(int) - base.astype(int)).mean() > 0.05, key  # measured: poses 0.07


def _load(d: Path):
    from m2h_core.inference.pipeline import load_pipeline

    p = load_pipeline(d / "m2h.safetensors")
    return p.model, p.encoders


# ------------------------------------------------------------------------------------------ the node path


@pytest.fixture(scope="module")
def perturbed():
    cfg = tiny()
    return M2HPipeline(trained_like(cfg, 11), FrozenEncoders.random(cfg, seed=12))


def _model_size_inputs(cfg, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.height, cfg.width
    frames = torch.rand(n, h, w, 3, generator=g)
    masks = torch.zeros(n, h, w)
    masks[:, 16:48, 4:28] = 1
    poses = (torch.rand(n, h, w, 3, generator=g) > 0.8).float()
    ident = IdentityInputs(torch.rand(3, h, w, generator=g), (torch.rand(3, h, w, generator=g) > 0.9).float(),
                           torch.randn(512, generator=g))
    return frames, masks, poses, ident


def test_sampler_node_equals_a_direct_sampler_call_and_uses_every_input(perturbed):
    cfg = perturbed.cfg
    frames, masks, poses, ident = _model_size_inputs(cfg)
    settings = SamplerSettings(steps=2, guidance_scale=2.0, seed=1)
    node = lambda f, m, p, i: logic.run_sampler(perturbed, logic.prepare_sampler_inputs(  # noqa: E731
        f, m, p, cfg.height, cfg.width), i, settings)[0]
    out = node(frames, masks, poses, ident)
    nchw = lambda x: x.permute(0, 3, 1, 2).contiguous()  # noqa: E731
    direct = sample_video(perturbed.model, perturbed.encoders, VideoInputs(nchw(frames), masks, nchw(poses)), ident,
                          settings).frames
    assert torch.equal(out, direct.permute(0, 2, 3, 1))
    swapped = sample_video(perturbed.model, perturbed.encoders, VideoInputs(nchw(poses), masks, nchw(frames)), ident,
                           settings).frames
    assert (swapped.permute(0, 2, 3, 1) - out).abs().mean() > 1e-3  # frames and poses are not interchangeable
    g = torch.Generator().manual_seed(9)
    changes = {
        "frames": (frames.roll(8, dims=2), masks, poses, ident),
        "masks": (frames, masks.roll(6, dims=2), poses, ident),
        "poses": (frames, masks, poses.flip(1), ident),
        "identity": (frames, masks, poses, IdentityInputs(ident.image.flip(-1), ident.landmarks.flip(-1),
                                                          torch.randn(512, generator=g))),
    }
    for name, args in changes.items():
        # measured mean |change|: frames 4e-3, masks 6e-3, poses 3e-4, identity 1e-3; float noise ~1e-7
        assert (node(*args) - out).abs().mean() > 1e-4, name


def test_cfg_is_decided_once(perturbed):
    from m2h_core.inference.sampler import guided_epsilon

    cfg = perturbed.cfg
    frames, masks, poses, ident = _model_size_inputs(cfg)
    enc = perturbed.encoders
    with torch.no_grad():
        m2h_in = enc.make_inputs(frames.permute(0, 3, 1, 2)[None], masks[None], poses.permute(0, 3, 1, 2)[None],
                                 ident.image[None], ident.landmarks[None], ident.arcface[None])
        plain = perturbed.model.encode_conditions(m2h_in, classifier_free=SamplerSettings(guidance_scale=1.0)
                                                  .classifier_free)
        z = torch.randn(1, 4, 4, *cfg.latent_size)
        with pytest.raises(ValueError, match="without the unconditional branch"):
            guided_epsilon(perturbed.model, z, torch.tensor(500), plain, None, 7.5)
        assert guided_epsilon(perturbed.model, z, torch.tensor(500), plain, None, 1.0).shape == z.shape


# ------------------------------------------------------------------------------------------ checks


def test_video_inputs_check_counts_sizes_and_empty_masks():
    f, m, p = torch.rand(3, 3, 16, 8), torch.ones(3, 16, 8), torch.rand(3, 3, 16, 8)
    with pytest.raises(InputError, match="3 clothing frames, 2 clothing masks and 3 pose images"):
        VideoInputs(f, m[:2], p)
    with pytest.raises(InputError, match="pose images are 4x16 .WxH. but the frames are 8x16"):
        VideoInputs(f, m, p[..., :4])
    with pytest.raises(InputError, match="empty in every frame"):
        VideoInputs(f, m * 0, p)
    with pytest.raises(InputError, match=r"3 clothing frames, 4 clothing masks.*one pose image per frame"):
        inputs.prepare_video(f.permute(0, 2, 3, 1), torch.ones(4, 16, 8), p.permute(0, 2, 3, 1), 16, 8)
    one = inputs.prepare_video(f.permute(0, 2, 3, 1), torch.ones(1, 32, 16), p.permute(0, 2, 3, 1), 16, 8)
    assert one.clothing_masks.shape == (3, 16, 8)  # one mask stands for every frame


def test_uint8_and_float_frames_fit_identically():
    """The CLI reads uint8 frames, ComfyUI hands uint8 / 255: both must give the same fitted tensors."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    a, _ = inputs.fit_frames(rgb, 32, 16)
    b, _ = inputs.fit_frames(torch.from_numpy(rgb).float() / 255, 32, 16)
    assert np.array_equal(a, b)


def test_no_face_message_names_the_file():
    from m2h_core.preprocess.face import NoFaceError

    class NoFace:
        def analyze(self, rgb):
            raise NoFaceError("no face found in the identity image")

    with pytest.raises(NoFaceError, match=r"^me\.jpg: no face found"):
        inputs.analyze_face(np.zeros((64, 64, 3), np.uint8), NoFace(), "me.jpg")
