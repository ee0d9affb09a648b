"""Mirror loss (Eq. 5-6): exact one-step x0, ᾱ_t weighting, zero at the exact prediction, face-crop decoding."""

from __future__ import annotations

import pytest
import torch

from m2h_core.config import tiny
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.training.mirror_loss import MirrorLoss, face_crop_boxes, mirror_weight, one_step_x0
from m2h_core.training.components import make_train_scheduler
from m2h_core.vgg import VGGFeatures


@pytest.fixture(scope="module")
def parts():
    cfg = tiny()
    return cfg, FrozenEncoders.random(cfg, seed=0), VGGFeatures.random(0), make_train_scheduler()


def _noised(sched, z0, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(z0.shape, generator=g)
    return sched.add_noise(z0, eps, t), eps


def _face_masks(b, f, h, w, box=(20, 36, 8, 24)):
    m = torch.zeros(b, f, h, w)
    y0, y1, x0, x1 = box
    m[..., y0:y1, x0:x1] = 1
    return m


@pytest.mark.parametrize("t", [0, 1, 250, 500, 999])
def test_one_step_x0_recovers_z0_with_true_noise(parts, t):
    _, _, _, sched = parts
    g = torch.Generator().manual_seed(t)
    z0 = torch.randn(2, 3, 4, 8, 6, dtype=torch.float64, generator=g)
    eps = torch.randn(z0.shape, dtype=torch.float64, generator=g)
    tt = torch.tensor([t, max(0, t - 7)])
    a = sched.alphas_cumprod[tt].double().view(-1, 1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps  # Eq. 1 in float64
    assert torch.allclose(one_step_x0(z_t, eps, tt, sched), z0, atol=1e-12, rtol=0)
    # and consistent with the training scheduler's own forward process (float32)
    z_t32, eps32 = _noised(sched, z0.float(), tt)
    scale = 1 + 1 / sched.alphas_cumprod[t].sqrt().item()
    assert torch.allclose(one_step_x0(z_t32, eps32, tt, sched), z0.float(), atol=2e-6 * scale * 8)


def test_paper_eq5_is_not_the_ddim_estimate(parts):
    """Eq. 5 (EDM preconditioning) applied to an epsilon model's exact prediction does not give z0 back."""
    _, _, _, sched = parts
    z0 = torch.randn(1, 1, 4, 8, 6, dtype=torch.float64)
    eps = torch.randn(z0.shape, dtype=torch.float64)
    t = torch.tensor([500])
    a = sched.alphas_cumprod[500].double()
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
    sigma = ((1 - a) / a).sqrt()
    eq5 = z_t / (sigma**2 + 1) - sigma / (sigma**2 + 1).sqrt() * eps
    assert (eq5 - z0).abs().max() > 0.1
    assert torch.allclose(one_step_x0(z_t, eps, t, sched), z0, atol=1e-9)


def test_weight_is_alpha_bar_and_threshold(parts):
    _, _, _, sched = parts
    t = torch.tensor([0, 100, 500, 999])
    w = mirror_weight(t, sched)
    assert torch.allclose(w, sched.alphas_cumprod[t].float())
    assert (w[:-1] > w[1:]).all() and w[-1] < 0.01 and w[0] > 0.99
    w2 = mirror_weight(t, sched, t_max=400)
    assert w2[2] == 0 and w2[3] == 0 and w2[1] > 0
    assert torch.equal(mirror_weight(t, sched, "none"), torch.ones(4))
    with pytest.raises(ValueError):
        mirror_weight(t, sched, "bogus")


def test_zero_when_exact_positive_otherwise(parts):
    cfg, enc, vgg, sched = parts
    h, w = cfg.height, cfg.width
    z0 = torch.randn(2, 3, 4, h // 4, w // 4)
    t = torch.tensor([50, 400])
    z_t, eps = _noised(sched, z0, t)
    target = enc.decode(z0, grad=True).detach()  # what a perfect model's x0 decodes to
    masks = _face_masks(2, 3, h, w)
    loss_fn = MirrorLoss(vgg, alpha=0.05, beta=0.001, crop=False)
    exact = loss_fn(z_t, eps, t, target, masks, enc, sched)
    assert exact.loss.abs().item() < 1e-8 and exact.frames_decoded == 6
    wrong = (eps + 0.3 * torch.randn_like(eps)).requires_grad_()
    out = loss_fn(z_t, wrong, t, target, masks, enc, sched)
    assert out.loss.item() > 1e-5 and out.pixel.item() > 0 and out.perceptual.item() > 0
    out.loss.backward()  # gradient reaches the epsilon prediction through the VAE decoder
    assert wrong.grad is not None and wrong.grad.abs().sum() > 0
    # only the face counts: changing pixels outside the mask leaves the loss unchanged
    target2 = target.clone()
    target2[..., :10, :] = 0.5
    out2 = loss_fn(z_t, wrong.detach(), t, target2, masks, enc, sched)
    assert torch.allclose(out2.loss, out.loss.detach())


def test_weighting_bounds_large_t(parts):
    cfg, enc, vgg, sched = parts
    z0 = torch.randn(1, 2, 4, cfg.height // 4, cfg.width // 4)
    masks = _face_masks(1, 2, cfg.height, cfg.width)
    target = enc.decode(z0, grad=True).detach()
    losses = {}
    for weighting in ("alpha_bar", "none"):
        t = torch.tensor([990])
        z_t, eps = _noised(sched, z0, t)
        bad = eps + 0.1 * torch.randn_like(eps)
        losses[weighting] = MirrorLoss(vgg, crop=False, weighting=weighting)(z_t, bad, t, target, masks, enc,
                                                                              sched).loss.item()
    assert losses["alpha_bar"] < 0.05 * losses["none"]


def test_crop_boxes_cover_faces():
    m = torch.zeros(3, 64, 32, dtype=torch.bool)
    m[0, 10:20, 5:12] = True
    m[1, 50:63, 20:31] = True  # near the corner: the window is clamped inside
    boxes, (ch, cw) = face_crop_boxes(m, 4, (16, 8), margin=1)
    assert (ch, cw) == (6, 5)  # largest box: 13 px -> 4 cells (+2 margin); 11 px -> 3 cells (+2)
    for i in range(2):
        y, x = boxes[i].tolist()
        assert 0 <= y <= 16 - ch and 0 <= x <= 8 - cw
        ys, xs = m[i].nonzero(as_tuple=True)
        assert y * 4 <= ys.min() and ys.max() < (y + ch) * 4
        assert x * 4 <= xs.min() and xs.max() < (x + cw) * 4
    assert boxes[2].tolist() == [0, 0]  # no face


def test_crop_decodes_less_and_stays_close(parts):
    cfg, enc, vgg, sched = parts
    z0 = torch.randn(2, 2, 4, cfg.height // 4, cfg.width // 4)
    t = torch.tensor([30, 60])
    z_t, eps = _noised(sched, z0, t)
    bad = eps + 0.2 * torch.randn_like(eps)
    target = torch.rand(2, 2, 3, cfg.height, cfg.width)
    masks = _face_masks(2, 2, cfg.height, cfg.width, box=(8, 20, 10, 22))
    masks[1, 1] = 0  # a frame without a face is not decoded
    full = MirrorLoss(vgg, crop=False)(z_t, bad, t, target, masks, enc, sched)
    crop = MirrorLoss(vgg, crop=True)(z_t, bad, t, target, masks, enc, sched)
    assert crop.frames_decoded == full.frames_decoded == 3
    assert crop.decoded_pixels < 0.75 * full.decoded_pixels
    assert crop.loss.item() == pytest.approx(full.loss.item(), rel=0.5)
    # a face mask covering the whole frame makes the crop the whole frame: identical numbers
    ones = torch.ones(2, 2, cfg.height, cfg.width)
    a = MirrorLoss(vgg, crop=False)(z_t, bad, t, target, ones, enc, sched).loss
    b = MirrorLoss(vgg, crop=True)(z_t, bad, t, target, ones, enc, sched).loss
    assert torch.allclose(a, b, rtol=1e-5)


def test_no_face_and_bad_input(parts):
    cfg, enc, vgg, sched = parts
    z = torch.randn(1, 2, 4, 16, 8, requires_grad=True)
    none = torch.zeros(1, 2, cfg.height, cfg.width)
    out = MirrorLoss(vgg)(z, z, torch.tensor([5]), torch.rand(1, 2, 3, 64, 32), none, enc, sched)
    assert out.loss.item() == 0 and out.frames_decoded == 0
    out.loss.backward()  # still part of the graph
    with pytest.raises(ValueError, match="face masks"):
        MirrorLoss(vgg)(z, z, torch.tensor([5]), torch.rand(1, 2, 3, 64, 32), none[:, :1], enc, sched)
    with pytest.raises(ValueError, match="VGG"):
        MirrorLoss(None, beta=0.001)
    with pytest.raises(ValueError, match="timesteps"):
        one_step_x0(z, z, torch.tensor([1000]), sched)
