"""Colour order, value range and dtype at every model boundary (issue 32), each against a reference convention
written here from the models' own training code, on images whose three channels differ (a swap gives other
numbers):

- insightface SCRFD detector and ArcFace: the networks see RGB (insightface swaps the BGR it is given),
  ArcFace normalised (x - 127.5) / 127.5;
- DWPose: the YOLOX detector sees BGR 0..255 letterboxed on 114 grey, the pose model RGB with mmpose's RGB mean/std;
- CLIP: what transformers' CLIPImageProcessor makes (RGB, CLIP mean/std), in the model's dtype;
- VAE: what diffusers' VaeImageProcessor makes (RGB in [-1, 1]) and takes back.
The models are tiny files in the real formats; their inputs are read as they are handed over.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from m2h_core.config import tiny
from m2h_core.inference.encoders import DiffusersVAE, FrozenEncoders, HFImageEmbedder
from m2h_core.preprocess import face as fc

from .test_preprocess_builders import _const, _model, _save, build_dwpose_pair, build_face_pack

RGB = (200, 100, 30)


def uniform(h: int, w: int, rgb=RGB) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def channel_mean_arcface(path) -> None:
    """ArcFace's signature ((N, 3, 112, 112) -> (N, 512)) whose first three outputs are the mean of each input
    channel as the network receives it."""
    sel = np.zeros((3, 512), np.float32)
    sel[[0, 1, 2], [0, 1, 2]] = 1.0
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "sel"], ["683"])]
    _save(_model(nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
                 [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])], [_const("sel", sel)],
                 "arc_channels"), path)


def red_reading_scrfd(path) -> None:
    """The tiny SCRFD with its score heads reading input channel 0 only: a face where that channel is bright."""
    m = onnx.load(str(path))
    for init in m.graph.initializer:
        if init.name.startswith("w_score"):
            w = numpy_helper.to_array(init).copy()
            s = w.shape[-1]
            w[:, 0] = 6.0 / (s * s)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
        elif init.name.startswith("b_score"):
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(m, str(path))


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    pack = build_face_pack(d / "insightface" / "models" / "antelopev2")
    channel_mean_arcface(pack / "glintr100.onnx")
    red_reading_scrfd(pack / "scrfd_10g_bnkps.onnx")
    return fc.FaceAnalyzer("antelopev2", search_dirs=[d], providers=["CPUExecutionProvider"], det_size=(160, 160))


def test_arcface_sees_rgb_normalised_as_in_its_training(analyzer):
    got = analyzer.embed(uniform(112, 112))[:3]
    np.testing.assert_allclose(got, (np.array(RGB) - 127.5) / 127.5, atol=1e-4)


def test_the_face_detector_sees_rgb(analyzer):
    """Channel 0 of the network's input is red: a red image has faces everywhere, a blue one none."""
    boxes, _ = analyzer.detect(uniform(160, 160, (250, 10, 10)))
    assert len(boxes) > 0
    boxes, _ = analyzer.detect(uniform(160, 160, (10, 10, 250)))
    assert len(boxes) == 0


def test_dwpose_detector_sees_bgr_and_the_pose_model_rgb(tmp_path, monkeypatch):
    from m2h_core.preprocess.dwpose import DWPoseDetector

    build_dwpose_pair(tmp_path)
    det = DWPoseDetector(search_dirs=[tmp_path], providers=["CPUExecutionProvider"])
    seen = []
    run = det._run_batched

    def record(session, name, batch, *a, **k):
        seen.append(batch.copy())
        return run(session, name, batch, *a, **k)

    monkeypatch.setattr(det, "_run_batched", record)
    frame = uniform(240, 120)
    det.detect_boxes([frame])
    blob = seen[-1][0]  # (3, 640, 640): the frame letterboxed top-left at x 640/240, the rest 114
    assert blob.dtype == np.float32
    np.testing.assert_array_equal(blob[:, 10, 10], [30, 100, 200])  # B, G, R, 0..255
    np.testing.assert_array_equal(blob[:, 600, 600], [114, 114, 114])
    det.estimate(frame, np.array([[20, 20, 100, 220]], np.float32))
    crop = seen[-1][0]
    mmpose_rgb_mean, mmpose_rgb_std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    centre = crop[:, crop.shape[1] // 2, crop.shape[2] // 2]
    np.testing.assert_allclose(centre, (np.array(RGB) - mmpose_rgb_mean) / mmpose_rgb_std, atol=1e-4)


@pytest.fixture(scope="module")
def encoders():
    return FrozenEncoders.random(tiny())


def test_clip_gets_what_transformers_processor_makes_in_the_models_dtype(encoders, monkeypatch):
    from PIL import Image
    from transformers import CLIPImageProcessor

    clip = encoders.clip
    size = clip.config.image_size
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, size, size, generator=g) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    seen = []
    fwd = type(clip).forward.__get__(clip)
    monkeypatch.setattr(clip, "forward", lambda pixel_values=None, **k: seen.append(pixel_values) or fwd(
        pixel_values=pixel_values, **k))
    HFImageEmbedder(clip).embed(img)
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pil = Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    want = proc(images=pil, return_tensors="pt").pixel_values
    torch.testing.assert_close(seen[-1], want, atol=0.02, rtol=0)  # 8-bit rounding of the reference's input
    clip16 = FrozenEncoders.random(tiny()).to(dtype=torch.bfloat16).clip
    fwd16 = type(clip16).forward.__get__(clip16)
    monkeypatch.setattr(clip16, "forward", lambda pixel_values=None, **k: seen.append(pixel_values) or fwd16(
        pixel_values=pixel_values, **k))
    HFImageEmbedder(clip16).embed(img)
    assert seen[-1].dtype == torch.bfloat16


def test_vae_gets_and_gives_what_diffusers_image_processor_does(encoders, monkeypatch):
    from diffusers.image_processor import VaeImageProcessor

    vae = encoders.vae
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 32, 16, generator=g) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    seen = []
    enc = type(vae).encode.__get__(vae)
    monkeypatch.setattr(vae, "encode", lambda x, *a, **k: seen.append(x) or enc(x, *a, **k))
    codec = DiffusersVAE(vae)
    z = codec.encode_pixels(img)
    proc = VaeImageProcessor(do_resize=False)
    torch.testing.assert_close(seen[-1], proc.preprocess(img), atol=1e-6, rtol=0)
    raw = vae.decode(z).sample
    torch.testing.assert_close(codec.decode_latents(z).clamp(0, 1), proc.postprocess(raw, output_type="pt"),
                               atol=1e-6, rtol=0)
    vae16 = FrozenEncoders.random(tiny()).to(dtype=torch.bfloat16).vae
    enc16 = type(vae16).encode.__get__(vae16)
    monkeypatch.setattr(vae16, "encode", lambda x, *a, **k: seen.append(x) or enc16(x, *a, **k))
    out = DiffusersVAE(vae16).decode_latents(DiffusersVAE(vae16).encode_pixels(img))
    assert seen[-1].dtype == torch.bfloat16 and out.dtype == torch.float32  # the model's dtype in, float32 out
