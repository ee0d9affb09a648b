"""VGG16 features: torchvision key layout, layer indices, normalisation, weight files and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from m2h_core.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_FILENAME,
    VGG16_LAYERS,
    MissingWeightsError,
    VGGFeatures,
    load_vgg16,
)

# torchvision.models.vgg16().features: conv layers sit at these indices (ReLU right after, pools at 4/9/16/23/30).
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _torchvision_like_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's vgg16 key names/shapes (classifier shrunk: it is ignored anyway)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    in_ch = 3
    for idx, out_ch in zip(TORCHVISION_CONV_INDICES, CONV_CHANNELS):
        sd[f"features.{idx}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) * (2.0 / (in_ch * 9)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(out_ch, generator=g) * 0.01
        in_ch = out_ch
    for idx in (0, 3, 6):
        sd[f"classifier.{idx}.weight"] = torch.zeros(2, 2)
        sd[f"classifier.{idx}.bias"] = torch.zeros(2)
    return sd


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = _torchvision_like_state_dict()
    path = tmp_path_factory.mktemp("vgg") / VGG16_FILENAME
    torch.save(sd, path)
    return path, sd


def test_layer_indices_match_reference_facts() -> None:
    assert VGG16_LAYERS["relu1_2"] == 3
    assert VGG16_LAYERS["relu2_2"] == 8
    assert VGG16_LAYERS["relu3_3"] == 15
    assert VGG16_LAYERS["relu4_3"] == 22
    assert VGG16_LAYERS["relu5_3"] == 29
    assert "relu3_4" not in VGG16_LAYERS  # VGG19 only
    assert [VGG16_LAYERS[f"pool{i}"] for i in range(1, 6)] == [4, 9, 16, 23, 30]


def test_torchvision_state_dict_loads_and_is_used(weights_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, sd = weights_file
    features = load_vgg16(path)
    assert len(features) == 31
    torch.testing.assert_close(features[28].weight, sd["features.28.weight"])
    assert not any(p.requires_grad for p in features.parameters())

    model = VGGFeatures(("relu1_2", "relu2_2", "relu3_3"), weights=path)
    keys = set(model.state_dict())
    assert keys == {f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14) for p in ("weight", "bias")}
    assert len(model.features) == 16  # stops after relu3_3

    x = torch.rand(2, 3, 32, 24)
    out = model(x)
    assert out["relu1_2"].shape == (2, 64, 32, 24)
    assert out["relu2_2"].shape == (2, 128, 16, 12)
    assert out["relu3_3"].shape == (2, 256, 8, 6)

    # known answer for relu1_2: ImageNet-normalise, conv, relu, conv, relu with the file's weights
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    h = F.relu(F.conv2d((x - mean) / std, sd["features.0.weight"], sd["features.0.bias"], padding=1))
    h = F.relu(F.conv2d(h, sd["features.2.weight"], sd["features.2.bias"], padding=1))
    torch.testing.assert_close(out["relu1_2"], h, rtol=1e-4, atol=1e-5)


def test_safetensors_with_same_keys(tmp_path: Path, weights_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    _, sd = weights_file
    st = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("features.")}, str(st))
    model = VGGFeatures.from_file(st, layers=("relu5_3",))
    torch.testing.assert_close(model.features[28].bias, sd["features.28.bias"])
    assert model(torch.rand(1, 3, 64, 64))["relu5_3"].shape == (1, 512, 4, 4)


def test_default_folder_via_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "vgg"
    folder.mkdir()
    torch.save(_torchvision_like_state_dict(1), folder / VGG16_FILENAME)
    monkeypatch.setenv("M2H_MODELS", str(tmp_path))
    model = VGGFeatures()
    assert model.layers == ("relu1_2", "relu2_2", "relu3_3")


def test_missing_file_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M2H_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError) as info:
        load_vgg16()
    msg = str(info.value)
    assert VGG16_FILENAME in msg
    assert "download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert str(tmp_path / "nowhere" / "vgg") in msg
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(MissingWeightsError, match="missing.pth"):
        load_vgg16(tmp_path / "missing.pth")


def test_wrong_layout_rejected(tmp_path: Path) -> None:
    sd = _torchvision_like_state_dict()
    del sd["features.17.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match="features.17.weight"):
        load_vgg16(bad)
    with pytest.raises(ValueError, match="relu3_4"):
        VGGFeatures.random(0, layers=("relu3_4",))


def test_files_that_are_not_weights_files(tmp_path: Path) -> None:
    """A pickle holding objects (refused by weights_only, never executed), a pickle of no tensors, a truncated
    .safetensors and a text file: one WeightsFileError each, naming the file, "not a weights file" / "not a
    readable .safetensors file", and the file to use instead."""
    import argparse

    from m2h_core.vgg import WeightsFileError

    objects = tmp_path / "objects.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(2)}, objects)
    no_tensors = tmp_path / "numbers.pth"
    torch.save([1, 2, 3], no_tensors)
    text = tmp_path / "page.pth"
    text.write_text("<html>not found</html>")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    for path, what in ((objects, "not a weights file"), (no_tensors, "not a weights file"),
                       (text, "not a weights file"), (truncated, "not a readable .safetensors file")):
        with pytest.raises(WeightsFileError, match=what) as info:
            load_vgg16(path)
        msg = str(info.value)
        assert str(path) in msg and VGG16_FILENAME in msg and "\n" not in msg, msg
        assert isinstance(info.value, ValueError)


def test_random_stand_in_is_frozen_but_passes_input_gradients() -> None:
    a, b = VGGFeatures.random(3), VGGFeatures.random(3)
    torch.testing.assert_close(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, VGGFeatures.random(4).features[0].weight)
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    a(x)["relu3_3"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in a.parameters())
    a.train()
    assert not a.training
