"""LPIPS-Alex (m2h_core.metrics.LPIPSAlex): the distance map written out by hand, loading torchvision/lpips files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m2h_core import metrics


def _hand_lpips_alex(net: metrics.LPIPSAlex, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zhang et al.'s LPIPS with AlexNet written from the paper/lpips layout: ImageNet-normalise, conv1(11/4, pad 2)
    relu | pool3/2 conv2(5, pad 2) relu | pool3/2 conv3 relu | conv4 relu | conv5 relu; per tap: unit-normalise over
    channels, squared difference, weighted channel sum (lin), bilinear upsampling to the input, sum of the taps."""
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def taps(img):
        h = (img - mean) / std
        out = []
        for k, conv in enumerate(convs):
            if k in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(F.conv2d(h, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0], 1, *x.shape[-2:])
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = getattr(net, f"lin{k}").view(1, -1, 1, 1)
        d = ((a - b) ** 2 * w).sum(1, keepdim=True)
        total += F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return total


def test_lpips_alex_map_equals_hand_written_formula():
    net = metrics.LPIPSAlex.random(3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 96, 64, generator=g), torch.rand(2, 3, 96, 64, generator=g)
    dmap = net(x, y)
    assert dmap.shape == (2, 1, 96, 64)
    torch.testing.assert_close(dmap, _hand_lpips_alex(net, x, y), rtol=1e-5, atol=1e-7)
    assert net(x, x).abs().max() == 0
    # every tap counts: dropping the deepest one's weights changes the distance
    net.lin4.zero_()
    assert not torch.allclose(net(x, y), dmap)


def test_masked_lpips_with_alex_averages_inside_the_mask():
    net = metrics.LPIPSAlex.random(0)
    rng = np.random.default_rng(0)
    a, b = rng.random((1, 80, 64, 3)), rng.random((1, 80, 64, 3))
    mask = np.zeros((1, 80, 64), bool)
    mask[0, 10:50, 20:40] = True
    full = net(torch.from_numpy(a).permute(0, 3, 1, 2).float(), torch.from_numpy(b).permute(0, 3, 1, 2).float())
    expect = full[0, 0].double().numpy()[mask[0]].mean()
    assert metrics.masked_lpips(a, b, mask, model=net, device="cpu") == pytest.approx(expect, rel=1e-6)


def test_lpips_alex_loads_torchvision_and_lpips_files(tmp_path):
    ref = metrics.LPIPSAlex.random(1)
    # torchvision's alexnet state dict: features.N.* (+ classifier.*, ignored); lpips' alex.pth: linK.model.1.weight
    tv = {f"features.{k}": v.clone() for k, v in ref.features.state_dict().items()}
    tv["classifier.1.weight"] = torch.zeros(4, 9216)
    torch.save(tv, tmp_path / metrics.ALEXNET_FILENAME)
    torch.save({f"lin{k}.model.1.weight": getattr(ref, f"lin{k}").clone() for k in range(5)},
               tmp_path / metrics.LPIPS_ALEX_FILENAME)
    net = metrics.LPIPSAlex.from_files(tmp_path / metrics.ALEXNET_FILENAME, tmp_path / metrics.LPIPS_ALEX_FILENAME)
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(net(x, y), ref(x, y))
    # a folder works too (the default file names inside it)
    metrics.LPIPSAlex.from_files(tmp_path, tmp_path)


def test_lpips_alex_bad_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("M2H_MODELS", str(tmp_path / "models"))
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        metrics.load_alexnet_features()
    with pytest.raises(FileNotFoundError, match="alex.pth"):
        metrics.load_lpips_alex_lin_weights()
    vgg_like = tmp_path / "vgg_lin.pth"
    torch.save({f"lin{k}.model.1.weight": torch.zeros(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))},
               vgg_like)
    with pytest.raises(ValueError, match="not an LPIPS-Alex lin-layer file"):
        metrics.load_lpips_alex_lin_weights(vgg_like)
    wrong = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}, wrong)
    with pytest.raises(ValueError, match="AlexNet"):
        metrics.load_alexnet_features(wrong)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": object}))
    with pytest.raises(ValueError, match="not a weights file") as exc:
        metrics.load_alexnet_features(evil)
    assert str(evil) in str(exc.value)
