"""The paper's evaluation metrics (Sec. IV, Table I).

Clothing consistency: masked PSNR / SSIM / LPIPS between generated and ground-truth frames inside the clothing
mask. Identity: CSIM, the cosine similarity of face embeddings. Visual-temporal fidelity: FVD, the Fréchet
distance between I3D features of real and generated video sets (the styleganv I3D of
``common_metrics_on_video_quality``, fed the whole frame by default: `I3D_FITS`).

Images are channels-last RGB: ``(H,W,3)`` or ``(N,H,W,3)``, ``uint8`` (0..255) or float in [0, 1] (ComfyUI's IMAGE
layout). Masks are ``(H,W)`` or ``(N,H,W)``: bool, integer (non-zero = inside) or float (> 0.5 = inside); one
``(H,W)`` mask applies to every frame. A frame whose mask is empty scores NaN and is skipped in averages.
Nothing here downloads: LPIPS and I3D weights are read from local files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .frames import to_float, to_nchw, to_uint8
from .vgg import (
    VGG16_FILENAME,
    VGG16_URL,
    VGGFeatures,
    load_vgg16,
    read_state_dict,
    resolve_weights_file,
)

LPIPS_FILENAME = "vgg.pth"
LPIPS_SOURCE = (
    "the lpips package (pip install lpips; file lpips/weights/v0.1/vgg.pth) or "
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
)
I3D_FILENAME = "i3d_torchscript.pt"
I3D_SOURCE = (
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (the StyleGAN-V / common_metrics_on_video_quality "
    "I3D TorchScript export)"
)
I3D_MIN_FRAMES = 10
#: How a frame reaches I3D's square 224x224 input (`i3d_preprocess`). "resize": the whole frame resized to the square
#: (aspect not kept), as the reference FVD code of Unterthiner et al. does; "pad": the long side resized to 224 and
#: the short side padded with black (aspect kept); "center_crop": the short side resized to 224 and the middle cut
#: out, as StyleGAN-V does - on a 2:1 portrait frame (512x256) that keeps rows 128-383 and drops the head and feet.
I3D_FITS = ("resize", "pad", "center_crop")
#: The default fit: the whole person (the paper's Table III reads FVD as a measure of the head, too).
I3D_DEFAULT_FIT = "resize"
#: Keyword arguments the styleganv I3D TorchScript takes to return 400-d pre-softmax features.
I3D_FEATURE_KWARGS: Mapping[str, bool] = {"rescale": False, "resize": False, "return_features": True}

# ------------------------------------------------------------------------------------------ input handling


def _rgb_frames(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Check (H,W,3)/(N,H,W,3) RGB, uint8 or float [0,1] -> (N,H,W,3) float64 in [0,1] (the sums need float64)."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (H,W,3) or (N,H,W,3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8 and np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"integer images must be uint8, got {arr.dtype}")
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


def _to_masks(mask: np.ndarray | torch.Tensor | None, n: int, h: int, w: int) -> np.ndarray:
    """Mask -> (N,H,W) bool; None means the whole frame."""
    if mask is None:
        return np.ones((n, h, w), bool)
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = np.broadcast_to(m, (n, h, w))
    if m.shape != (n, h, w):
        raise ValueError(f"mask shape {m.shape} does not match frames ({n}, {h}, {w})")
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.integer):
        return m != 0
    return m > 0.5


def _pair(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, t = _rgb_frames(pred), _rgb_frames(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} differ in shape")
    return p, t, _to_masks(mask, *p.shape[:3])


def _reduce(values: np.ndarray, per_frame: bool) -> float | np.ndarray:
    if per_frame:
        return values
    finite_or_inf = values[~np.isnan(values)]
    return float(finite_or_inf.mean()) if finite_or_inf.size else float("nan")


# ------------------------------------------------------------------------------------------ PSNR / SSIM


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """10·log10(range² / MSE); 0 MSE -> inf."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def masked_psnr(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    per_frame: bool = False,
    pooled: bool = False,
) -> float | np.ndarray:
    """The pack's one PSNR (dB): from the MSE over mask pixels (all 3 channels), per frame, then the mean over
    frames; `pooled` instead takes one MSE over the mask pixels of all frames (a whole-set figure).

    Identical frames give inf. The data range is 255 for uint8 input, 1 for float input (same number).
    """
    p, t, m = _pair(pred, target, mask)
    if pooled:
        return psnr_from_mse(_masked_mse(p, t, m))
    return _reduce(np.array([psnr_from_mse(_masked_mse(p[i], t[i], m[i])) for i in range(len(p))]), per_frame)


def _masked_mse(p: np.ndarray, t: np.ndarray, m: np.ndarray) -> float:
    """Mean squared error over the mask's pixels, all 3 channels; nan for an empty mask."""
    count = int(m.sum())
    return float(((p - t) ** 2)[m].sum() / (3 * count)) if count else float("nan")


def ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two (H,W,3) float [0,1] images, averaged over channels -> (H,W).

    Wang et al. settings: Gaussian window sigma 1.5 (11x11), K1 0.01, K2 0.03, population covariance
    (skimage ``structural_similarity(..., full=True)``). Both sides must be at least 11 px.
    """
    from skimage.metrics import structural_similarity

    if min(pred.shape[:2]) < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 px, got {pred.shape[:2]}")
    _, full = structural_similarity(
        pred,
        target,
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    return full.mean(axis=-1)


def masked_ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    per_frame: bool = False,
) -> float | np.ndarray:
    """The SSIM map (`ssim_map`) averaged over mask pixels, per frame; returns the mean over frames.

    Identical frames give 1. Pixels more than 5 px outside the mask do not influence the score.
    """
    p, t, m = _pair(pred, target, mask)
    out = np.empty(len(p))
    for i in range(len(p)):
        out[i] = ssim_map(p[i], t[i])[m[i]].mean() if m[i].any() else np.nan
    return _reduce(out, per_frame)


# ------------------------------------------------------------------------------------------ LPIPS

LPIPS_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


def load_lpips_lin_weights(path: str | os.PathLike[str] | None = None) -> list[torch.Tensor]:
    """The five 1x1 'lin' weights (shape (1,C,1,1)) from the lpips package's ``weights/v0.1/vgg.pth``.

    Keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight`` (``.model.0.`` without dropout is accepted too; a
    full LPIPS state dict also works, its other keys are ignored). ``.safetensors`` with the same keys works.
    """
    file = resolve_weights_file(path, LPIPS_FILENAME, "lpips", LPIPS_SOURCE)
    state = read_state_dict(file)
    weights: list[torch.Tensor] = []
    for k, ch in enumerate(LPIPS_CHANNELS):
        cands = [v for key, v in state.items() if key.split(".")[-1] == "weight" and f"lin{k}.model." in key]
        if len(cands) != 1:
            raise ValueError(
                f"{file} is not an LPIPS-VGG lin-layer file: expected one 'lin{k}.model.1.weight', found {len(cands)}"
            )
        w = cands[0].float()
        if tuple(w.shape) != (1, ch, 1, 1):
            raise ValueError(f"{file}: lin{k} has shape {tuple(w.shape)}, LPIPS-VGG needs (1, {ch}, 1, 1)")
        weights.append(w)
    return weights


def _unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG (v0.1): unit-normalised VGG16 activations at 5 ReLUs, squared differences weighted by learned
    1x1 'lin' layers, each upsampled to the input size and summed into a (B,1,H,W) distance map.

    Inputs are (B,3,H,W) in [0,1]; the ImageNet normalisation inside `VGGFeatures` equals LPIPS's scaling layer
    applied to [-1,1] input. The map's mean equals lpips' ``spatial=True`` output averaged.
    """

    def __init__(self, vgg: VGGFeatures, lin_weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if tuple(vgg.layers) != LPIPS_LAYERS:
            raise ValueError(f"LPIPS needs VGGFeatures with layers {LPIPS_LAYERS}, got {vgg.layers}")
        if len(lin_weights) != len(LPIPS_CHANNELS):
            raise ValueError(f"expected {len(LPIPS_CHANNELS)} lin weights, got {len(lin_weights)}")
        self.vgg = vgg
        for k, w in enumerate(lin_weights):
            self.register_buffer(f"lin{k}", w.detach().float().reshape(1, LPIPS_CHANNELS[k], 1, 1).clone())
        self.eval()

    @classmethod
    def from_files(
        cls, vgg_path: str | os.PathLike[str] | None = None, lpips_path: str | os.PathLike[str] | None = None
    ) -> LPIPS:
        """Load ``vgg16-397923af.pth`` (models/vgg/) and the lpips ``vgg.pth`` (models/lpips/) from disk."""
        lin = load_lpips_lin_weights(lpips_path)
        return cls(VGGFeatures(LPIPS_LAYERS, features=load_vgg16(vgg_path)), lin)

    @classmethod
    def random(cls, seed: int = 0) -> LPIPS:
        """Random VGG and positive random lin weights: a stand-in for tests, not a perceptual metric."""
        gen = torch.Generator().manual_seed(seed)
        lin = [torch.rand(1, c, 1, 1, generator=gen) / c for c in LPIPS_CHANNELS]
        return cls(VGGFeatures.random(seed, LPIPS_LAYERS), lin)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance map (B,1,H,W) between two (B,3,H,W) batches in [0,1]."""
        if x.shape != y.shape:
            raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        fx, fy = self.vgg(x), self.vgg(y)
        size = x.shape[-2:]
        total = torch.zeros(x.shape[0], 1, *size, device=x.device, dtype=torch.float32)
        for k, name in enumerate(LPIPS_LAYERS):
            diff = (_unit_normalize(fx[name].float()) - _unit_normalize(fy[name].float())).pow(2)
            layer = (diff * getattr(self, f"lin{k}")).sum(dim=1, keepdim=True)
            total = total + F.interpolate(layer, size=size, mode="bilinear", align_corners=False)
        return total


def masked_lpips(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    model: LPIPS | None = None,
    per_frame: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> float | np.ndarray:
    """The LPIPS distance map averaged over mask pixels, per frame; returns the mean over frames.

    Identical frames give 0. `model` defaults to `LPIPS.from_files()` (errors name the missing file). The network
    sees the whole frame, so content just outside the mask still influences deep features (receptive field).
    """
    p, t, m = _pair(pred, target, mask)
    net = model if model is not None else LPIPS.from_files()
    dev = torch.device(device) if device is not None else next(net.vgg.parameters()).device
    net = net.to(dev)
    out = np.empty(len(p))
    with torch.no_grad():
        for s in range(0, len(p), batch_size):
            xb = to_nchw(p[s : s + batch_size]).float().to(dev)
            yb = to_nchw(t[s : s + batch_size]).float().to(dev)
            dmap = net(xb, yb)[:, 0].double().cpu().numpy()
            for j, d in enumerate(dmap):
                mj = m[s + j]
                out[s + j] = d[mj].mean() if mj.any() else np.nan
    return _reduce(out, per_frame)


def clothing_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    lpips_model: LPIPS | None = None,
) -> dict[str, float]:
    """Masked PSNR, SSIM and (when `lpips_model` is given) LPIPS of one generated/ground-truth frame sequence."""
    out = {"psnr": float(masked_psnr(pred, target, mask)), "ssim": float(masked_ssim(pred, target, mask))}
    if lpips_model is not None:
        out["lpips"] = float(masked_lpips(pred, target, mask, model=lpips_model))
    return out


# ------------------------------------------------------------------------------------------ LPIPS (AlexNet)

ALEXNET_FILENAME = "alexnet-owt-7be5be79.pth"
ALEXNET_SOURCE = "torchvision's ImageNet AlexNet weights, https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_ALEX_FILENAME = "alex.pth"
LPIPS_ALEX_SOURCE = (
    "the lpips package (pip install lpips; file lpips/weights/v0.1/alex.pth) or "
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"
)
#: torchvision ``alexnet().features``: (in, out, kernel, stride, padding) of the convs; ReLU after each conv,
#: 3x3/2 max-pools after conv1, conv2 and conv5 -> module indices conv 0, 3, 6, 8, 10; ReLUs 1, 4, 7, 9, 11.
_ALEX_CONVS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)
)  # fmt: skip
#: The five ReLUs LPIPS-Alex taps (lpips' alexnet slices [0:2], [2:5], [5:8], [8:10], [10:12]) and their widths.
LPIPS_ALEX_RELUS: tuple[int, ...] = (1, 4, 7, 9, 11)
LPIPS_ALEX_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)


def _read_weights(file: os.PathLike[str] | str) -> dict[str, torch.Tensor]:
    """`read_state_dict`, with a file that is not plain weights (a pickle of objects, not a zip/pickle of tensors)
    reported as a ValueError naming it; such files are never unpickled in full."""
    import pickle

    try:
        return read_state_dict(file)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{file} is not a weights file (torch.load(weights_only=True) refused it: "
                         f"{str(exc).splitlines()[0][:120]}); use the file named in the docs") from None


def build_alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` up to relu5 (12 modules, same indices, so ``features.N.*`` keys load)."""
    layers: list[nn.Module] = []
    for k, (cin, cout, ks, st, pad) in enumerate(_ALEX_CONVS):
        layers += [nn.Conv2d(cin, cout, ks, stride=st, padding=pad), nn.ReLU(inplace=False)]
        if k < 2:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*layers)


def load_alexnet_features(path: str | os.PathLike[str] | None = None) -> nn.Sequential:
    """torchvision's ImageNet AlexNet ``features`` (``alexnet-owt-7be5be79.pth``, folder models/lpips/), frozen."""
    file = resolve_weights_file(path, ALEXNET_FILENAME, "lpips", ALEXNET_SOURCE)
    state = _read_weights(file)
    net = build_alexnet_features()
    template = net.state_dict()
    got = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    missing = [k for k in template if k not in got]
    if missing:
        raise ValueError(f"{file} is not a torchvision AlexNet state dict: no 'features.{missing[0]}'")
    for k, t in template.items():
        if tuple(got[k].shape) != tuple(t.shape):
            raise ValueError(f"{file}: features.{k} has shape {tuple(got[k].shape)}, AlexNet needs {tuple(t.shape)}")
    net.load_state_dict({k: got[k].float() for k in template})
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def load_lpips_alex_lin_weights(path: str | os.PathLike[str] | None = None) -> list[torch.Tensor]:
    """The five 1x1 'lin' weights of LPIPS-Alex (lpips ``weights/v0.1/alex.pth``; same key layout as the VGG file)."""
    file = resolve_weights_file(path, LPIPS_ALEX_FILENAME, "lpips", LPIPS_ALEX_SOURCE)
    state = _read_weights(file)
    weights: list[torch.Tensor] = []
    for k, ch in enumerate(LPIPS_ALEX_CHANNELS):
        cands = [v for key, v in state.items() if key.split(".")[-1] == "weight" and f"lin{k}.model." in key]
        if len(cands) != 1 or tuple(cands[0].shape) != (1, ch, 1, 1):
            raise ValueError(f"{file} is not an LPIPS-Alex lin-layer file: expected one 'lin{k}.model.1.weight' "
                             f"of shape (1, {ch}, 1, 1)")
        weights.append(cands[0].float())
    return weights


class LPIPSAlex(nn.Module):
    """LPIPS-Alex (v0.1, the lpips package's default network): the `LPIPS` distance map with AlexNet's five ReLUs.

    Inputs (B,3,H,W) in [0,1]; ImageNet normalisation (= lpips' scaling layer on [-1,1] input). Returns (B,1,H,W).
    Use with `masked_lpips(..., model=LPIPSAlex(...), device=...)`.
    """

    def __init__(self, features: nn.Sequential, lin_weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if len(features) < LPIPS_ALEX_RELUS[-1] + 1:
            raise ValueError(f"AlexNet features need {LPIPS_ALEX_RELUS[-1] + 1} modules, got {len(features)}")
        if len(lin_weights) != len(LPIPS_ALEX_CHANNELS):
            raise ValueError(f"expected {len(LPIPS_ALEX_CHANNELS)} lin weights, got {len(lin_weights)}")
        self.features = features[: LPIPS_ALEX_RELUS[-1] + 1]
        for k, w in enumerate(lin_weights):
            self.register_buffer(f"lin{k}", w.detach().float().reshape(1, LPIPS_ALEX_CHANNELS[k], 1, 1).clone())
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @classmethod
    def from_files(
        cls, alexnet_path: str | os.PathLike[str] | None = None, lpips_path: str | os.PathLike[str] | None = None
    ) -> LPIPSAlex:
        """Load ``alexnet-owt-7be5be79.pth`` and the lpips ``alex.pth`` (both in models/lpips/ by default)."""
        lin = load_lpips_alex_lin_weights(lpips_path)
        return cls(load_alexnet_features(alexnet_path), lin)

    @classmethod
    def random(cls, seed: int = 0) -> LPIPSAlex:
        """Random AlexNet and positive random lin weights: a stand-in for tests, not a perceptual metric."""
        gen = torch.Generator().manual_seed(seed)
        net = build_alexnet_features()
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Conv2d):
                    bound = (6.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5
                    m.weight.uniform_(-bound, bound, generator=gen)
                    m.bias.zero_()
        lin = [torch.rand(1, c, 1, 1, generator=gen) / c for c in LPIPS_ALEX_CHANNELS]
        return cls(net.requires_grad_(False), lin)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU activations of AlexNet for (B,3,H,W) input in [0,1]."""
        h = (x - self.mean.to(x)) / self.std.to(x)
        out: list[torch.Tensor] = []
        for i, module in enumerate(self.features):
            h = module(h)
            if i in LPIPS_ALEX_RELUS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance map (B,1,H,W) between two (B,3,H,W) batches in [0,1] (frames need >= 63 px a side)."""
        if x.shape != y.shape:
            raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        param = next(self.features.parameters())
        x, y = x.to(param), y.to(param)
        size = x.shape[-2:]
        total = torch.zeros(x.shape[0], 1, *size, device=x.device, dtype=torch.float32)
        for k, (fx, fy) in enumerate(zip(self.taps(x), self.taps(y))):
            diff = (_unit_normalize(fx.float()) - _unit_normalize(fy.float())).pow(2)
            layer = (diff * getattr(self, f"lin{k}")).sum(dim=1, keepdim=True)
            total = total + F.interpolate(layer, size=size, mode="bilinear", align_corners=False)
        return total


# ------------------------------------------------------------------------------------------ CSIM


def cosine_similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Cosine of two 1-D embeddings."""
    va = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel()
    vb = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).ravel()
    if va.shape != vb.shape:
        raise ValueError(f"embedding sizes differ: {va.shape} vs {vb.shape}")
    denom = np.linalg.norm(va) * np.linalg.norm(vb)
    if denom == 0:
        raise ValueError("zero-length embedding")
    return float(va @ vb / denom)


def csim(
    generated: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    embedder: Callable[[np.ndarray], np.ndarray | torch.Tensor | None],
    per_frame: bool = False,
) -> float | np.ndarray:
    """Identity similarity: cosine of face embeddings of generated frames and the reference.

    `reference` is one identity image (H,W,3) compared with every frame, or frames (N,H,W,3) compared pairwise
    (e.g. ground truth). `embedder` maps one (H,W,3) uint8 RGB image to a face embedding, or None when it finds no
    face; such frames score NaN and are left out of the mean (NaN if no frame has a face).
    """

    gen = to_uint8(_rgb_frames(generated))
    ref_arr = reference.detach().cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    refs = to_uint8(_rgb_frames(ref_arr))
    if ref_arr.ndim == 3:
        ref_emb = embedder(refs[0])
        if ref_emb is None:
            raise ValueError("the embedder found no face in the reference image")
        ref_embs: list[np.ndarray | torch.Tensor | None] = [ref_emb] * len(gen)
    else:
        if len(refs) != len(gen):
            raise ValueError(f"{len(gen)} generated frames but {len(refs)} reference frames")
        ref_embs = [embedder(r) for r in refs]
    out = np.full(len(gen), np.nan)
    for i, (g, r) in enumerate(zip(gen, ref_embs)):
        if r is None:
            continue
        e = embedder(g)
        if e is not None:
            out[i] = cosine_similarity(e, r)
    return _reduce(out, per_frame)


# ------------------------------------------------------------------------------------------ FVD


def load_i3d(path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the I3D TorchScript (``i3d_torchscript.pt``, folder models/fvd/) used for FVD; never downloads."""
    file = resolve_weights_file(path, I3D_FILENAME, "fvd", I3D_SOURCE)
    try:
        model = torch.jit.load(str(file), map_location=device)
    except RuntimeError as exc:
        raise ValueError(f"{file} is not a TorchScript archive ({exc.__class__.__name__}: {exc})") from exc
    return model.eval()


def i3d_preprocess(video: np.ndarray | torch.Tensor, resolution: int = 224, fit: str = I3D_DEFAULT_FIT
                   ) -> torch.Tensor:
    """One video (T,H,W,3), uint8 or float [0,1] -> (3,T,R,R) float in [-1,1] for I3D.

    `fit` (`I3D_FITS`) says how a non-square frame becomes R x R; every fit resizes bilinearly (align_corners=False,
    no antialiasing, as the styleganv and TF FVD code do) and ends with x·2 − 1. The default, "resize", shows I3D the
    whole frame: a portrait person's head and feet count, which a centre crop would cut away.
    """
    if fit not in I3D_FITS:
        raise ValueError(f"I3D fit must be one of {I3D_FITS}, got {fit!r}")
    arr = to_float(video)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected one video (T,H,W,3), got shape {tuple(arr.shape)}")
    v = to_nchw(arr)  # T,3,H,W
    h, w = v.shape[-2:]
    r = resolution
    if fit == "resize":
        v = F.interpolate(v, size=(r, r), mode="bilinear", align_corners=False)
    elif fit == "pad":
        scale = r / max(h, w)
        size = (r, max(1, round(w * scale))) if h >= w else (max(1, round(h * scale)), r)
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False)
        dh, dw = r - size[0], r - size[1]
        v = F.pad(v, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=0.0)
    else:
        scale = r / min(h, w)
        size = (r, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), r)
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False)
        top, left = (size[0] - r) // 2, (size[1] - r) // 2
        v = v[:, :, top : top + r, left : left + r]
    return ((v - 0.5) * 2.0).permute(1, 0, 2, 3).contiguous()


def i3d_features(
    videos: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    model: torch.jit.ScriptModule | nn.Module,
    batch_size: int = 10,
    device: str | torch.device | None = None,
    call_kwargs: Mapping[str, bool] = I3D_FEATURE_KWARGS,
    fit: str = I3D_DEFAULT_FIT,
) -> np.ndarray:
    """I3D features (num_videos, D) of videos (each (T,H,W,3), T >= 10, same T within a batch); `fit`: see
    `i3d_preprocess`."""
    vids = list(videos)
    if not vids:
        raise ValueError("no videos given")
    for i, v in enumerate(vids):
        if v.shape[0] < I3D_MIN_FRAMES:
            raise ValueError(f"video {i} has {v.shape[0]} frames; FVD (I3D) needs at least {I3D_MIN_FRAMES}")
    if device is None:
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
    feats: list[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, len(vids), batch_size):
            batch = torch.stack([i3d_preprocess(v, fit=fit) for v in vids[s : s + batch_size]]).to(device)
            out = model(batch, **dict(call_kwargs))
            feats.append(out.reshape(out.shape[0], -1).double().cpu().numpy())
    return np.concatenate(feats, axis=0)


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features; needs N >= 2."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2 to estimate a covariance, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1-mu2||² + tr(S1 + S2 − 2·(S1·S2)^½) for Gaussians N(mu1,S1), N(mu2,S2).

    Uses scipy's sqrtm; if it is not finite, retries with eps·I added to both covariances; a tiny imaginary part
    from round-off is dropped, a large one raises ValueError.
    """
    from scipy.linalg import sqrtm

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean = sqrtm(s1 @ s2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(s1.shape[0]) * eps
        covmean = sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag)) if covmean.size else 0.0
        scale = max(1.0, float(np.max(np.abs(covmean.real))))
        if imag > 1e-3 * scale:
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    mu1, s1 = gaussian_stats(feats1)
    mu2, s2 = gaussian_stats(feats2)
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


def fvd(
    real_videos: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    generated_videos: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    model: torch.jit.ScriptModule | nn.Module | None = None,
    batch_size: int = 10,
    device: str | torch.device | None = None,
    fit: str = I3D_DEFAULT_FIT,
) -> float:
    """FVD between two sets of videos (each (T,H,W,3), T >= 10, at least 2 per set).

    `model` defaults to `load_i3d()` (``models/fvd/i3d_torchscript.pt``); `fit`: how frames reach I3D's square input
    (`i3d_preprocess`; the default sees the whole frame). Lower is better.
    """
    net = model if model is not None else load_i3d(device=device or "cpu")
    real = i3d_features(real_videos, net, batch_size, device, fit=fit)
    gen = i3d_features(generated_videos, net, batch_size, device, fit=fit)
    return frechet_distance(real, gen)


def split_clips(frames: np.ndarray, length: int = 16, stride: int | None = None) -> list[np.ndarray]:
    """Cut one video (T,H,W,3) into clips of `length` frames every `stride` (default: non-overlapping)."""
    step = stride or length
    if length < 1 or step < 1:
        raise ValueError("length and stride must be >= 1")
    return [frames[s : s + length] for s in range(0, len(frames) - length + 1, step)]


# ------------------------------------------------------------------------------------------ Table I

TABLE_METRICS: tuple[tuple[str, str, int, bool], ...] = (
    # key, header, decimals, higher is better
    ("psnr", "PSNR↑", 2, True),
    ("ssim", "SSIM↑", 3, True),
    ("lpips", "LPIPS↓", 3, False),
    ("csim", "CSIM↑", 3, True),
    ("fvd", "FVD↓", 2, False),
)


def format_table(rows: Sequence[Mapping[str, object]], markdown: bool = False) -> str:
    """Render results in the layout of the paper's Table I: one row per method, PSNR↑ SSIM↑ LPIPS↓ CSIM↑ FVD↓ per
    dataset (datasets side by side, in order of first appearance).

    Each row is a mapping with ``method``, ``dataset`` and any of ``psnr, ssim, lpips, csim, fvd``; missing or
    None values print as ``-``. With ``markdown=True`` the best value of each column (of two or more) is bold.
    """
    methods: list[str] = []
    datasets: list[str] = []
    cells: dict[tuple[str, str], Mapping[str, object]] = {}
    for row in rows:
        method, dataset = str(row.get("method", "?")), str(row.get("dataset", ""))
        if method not in methods:
            methods.append(method)
        if dataset not in datasets:
            datasets.append(dataset)
        cells[(method, dataset)] = row

    def value(method: str, dataset: str, key: str) -> float | None:
        v = cells.get((method, dataset), {}).get(key)
        return None if v is None else float(v)  # type: ignore[arg-type]

    best: dict[tuple[str, str], float] = {}
    for d in datasets:
        for key, _, _, higher in TABLE_METRICS:
            vals = [v for m in methods if (v := value(m, d, key)) is not None and not math.isnan(v)]
            if len(vals) > 1:
                best[(d, key)] = max(vals) if higher else min(vals)

    def fmt(method: str, dataset: str, key: str, decimals: int) -> str:
        v = value(method, dataset, key)
        if v is None or math.isnan(v):
            return "-"
        text = "inf" if math.isinf(v) else f"{v:.{decimals}f}"
        if markdown and best.get((dataset, key)) == v:
            text = f"**{text}**"
        return text

    headers = [h for _ in datasets for _, h, _, _ in TABLE_METRICS]
    body = [[m] + [fmt(m, d, k, dec) for d in datasets for k, _, dec, _ in TABLE_METRICS] for m in methods]
    if markdown:
        top = ["Method"] + [f"{d} {h}".strip() for d in datasets for _, h, _, _ in TABLE_METRICS]
        lines = ["| " + " | ".join(top) + " |", "|" + "---|" * len(top)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    method_w = max([len("Method")] + [len(m) for m in methods])
    col_w = max([len(h) for h in headers] + [len(c) for r in body for c in r[1:]] + [6])
    group_w = len(TABLE_METRICS) * (col_w + 1) - 1
    line1 = "Method".ljust(method_w) + " | " + " | ".join(d.center(group_w) for d in datasets)
    line2 = " " * method_w + " | " + " | ".join(
        " ".join(h.rjust(col_w) for _, h, _, _ in TABLE_METRICS) for _ in datasets
    )
    sep = "-" * len(line1)
    out = [line1, line2, sep]
    n = len(TABLE_METRICS)
    for r in body:
        groups = [" ".join(c.rjust(col_w) for c in r[1 + i * n : 1 + (i + 1) * n]) for i in range(len(datasets))]
        out.append(r[0].ljust(method_w) + " | " + " | ".join(groups))
    return "\n".join(out)


__all__ = [
    "ALEXNET_FILENAME",
    "I3D_DEFAULT_FIT",
    "I3D_FEATURE_KWARGS",
    "I3D_FILENAME",
    "I3D_FITS",
    "I3D_MIN_FRAMES",
    "LPIPS",
    "LPIPS_ALEX_CHANNELS",
    "LPIPS_ALEX_FILENAME",
    "LPIPS_CHANNELS",
    "LPIPS_FILENAME",
    "LPIPS_LAYERS",
    "TABLE_METRICS",
    "VGG16_FILENAME",
    "VGG16_URL",
    "LPIPSAlex",
    "build_alexnet_features",
    "clothing_metrics",
    "cosine_similarity",
    "csim",
    "format_table",
    "frechet_distance",
    "frechet_distance_from_stats",
    "fvd",
    "gaussian_stats",
    "i3d_features",
    "i3d_preprocess",
    "load_alexnet_features",
    "load_i3d",
    "load_lpips_alex_lin_weights",
    "load_lpips_lin_weights",
    "masked_lpips",
    "masked_psnr",
    "masked_ssim",
    "psnr_from_mse",
    "split_clips",
    "ssim_map",
]
