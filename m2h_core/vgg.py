"""VGG16 ``features`` in plain PyTorch (no torchvision), laid out exactly like ``torchvision.models.vgg16().features``.

torchvision's ImageNet file ``vgg16-397923af.pth`` (keys ``features.N.weight/bias`` plus ``classifier.*``, which
are ignored) loads as is; a ``.safetensors`` file with the same keys works too. Used by the mirror loss (paper
Eq. 6) and by LPIPS in `m2h_core.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

# torchvision's "D" configuration: conv widths, "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)  # fmt: skip


def _layer_names() -> dict[str, int]:
    names: dict[str, int] = {}
    idx, block, conv = 0, 1, 1
    for item in _VGG16_CFG:
        if item == "M":
            names[f"pool{block}"] = idx
            idx, block, conv = idx + 1, block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = idx
            names[f"relu{block}_{conv}"] = idx + 1
            idx, conv = idx + 2, conv + 1
    return names


#: name -> index in ``features``: relu1_2 = 3, relu2_2 = 8, relu3_3 = 15, relu4_3 = 22, relu5_3 = 29.
VGG16_LAYERS: Mapping[str, int] = _layer_names()
#: The mirror loss layers. The paper names relu3_4, which only VGG19 has; VGG16's last block-3 ReLU is relu3_3.
MIRROR_LOSS_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(FileNotFoundError):
    """A weight file the caller needs is not on disk; the message says where to put it and where to get it."""


class WeightsFileError(ValueError):
    """A weight file that exists but is not a weights file we can read (corrupt, or a pickle holding more than
    tensors); the message names the file, what it seems to be and what to use instead."""


def model_search_dirs(subfolder: str) -> list[Path]:
    """Folders searched for a weight file, in order.

    ``$M2H_MODELS/<subfolder>``, ``$M2H_MODELS`` (when the variable is set), then ``<repo>/models/<subfolder>``.
    """
    dirs: list[Path] = []
    env = os.environ.get("M2H_MODELS")
    if env:
        dirs += [Path(env) / subfolder, Path(env)]
    dirs.append(Path(__file__).resolve().parents[1] / "models" / subfolder)
    return dirs


def resolve_weights_file(
    path: str | os.PathLike[str] | None, filename: str, subfolder: str, source: str
) -> Path:
    """Return an existing weight file: `path` itself if given, else `filename` in `model_search_dirs(subfolder)`.

    Raises `MissingWeightsError` naming the file, the folders searched and `source` (where users get it).
    Nothing is ever downloaded.
    """
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if p.is_dir() and (p / filename).is_file():
            return p / filename
        searched = [p] if not p.is_dir() else [p / filename]
    else:
        searched = [d / filename for d in model_search_dirs(subfolder)]
        for cand in searched:
            if cand.is_file():
                return cand
    default_dir = model_search_dirs(subfolder)[-1 if not os.environ.get("M2H_MODELS") else 0]
    raise MissingWeightsError(
        f"weight file '{filename}' not found (looked at: {', '.join(str(s) for s in searched)}). "
        f"Put it in {default_dir} (or set M2H_MODELS to a folder containing {subfolder}/{filename}). "
        f"Get it from: {source}. Nothing is downloaded automatically."
    )


def build_vgg16_features(device: str | torch.device | None = None) -> nn.Sequential:
    """The 31-module VGG16 ``features`` stack (conv3x3+ReLU, 2x2 max-pools), randomly initialised.

    ``device="meta"`` builds it without allocating or initialising weights (shapes only).
    """
    with torch.device(device) if device is not None else nullcontext():
        return _build_layers()


def _build_layers() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            in_ch = int(item)
    return nn.Sequential(*layers)


def read_state_dict(path: str | os.PathLike[str], expected: str = "") -> dict[str, torch.Tensor]:
    """A flat tensor state dict from .safetensors or a .pth/.pt (``torch.load(weights_only=True)``: a pickle that
    holds anything but tensors is refused, never executed). Raises `WeightsFileError` naming the file, what it
    seems to be and `expected` (what to use instead)."""
    from .preprocess.model_files import describe_file

    path = Path(path)
    hint = f" {expected}" if expected else ""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsFileError(f"{path}: not a readable .safetensors file ({describe_file(path)}: "
                                   f"{_first_line(e)}); download or convert it again.{hint}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: not a plain weights file
        raise WeightsFileError(f"{path}: not a weights file ({describe_file(path)} that torch.load(weights_only=True) "
                               f"refuses: {_first_line(e)[:160]}). Only tensors are read from .pth files; use the "
                               f"original weights or a .safetensors copy.{hint}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{path}: not a weights file (it holds a {type(obj).__name__}, not a dict of "
                               f"tensors).{hint}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def vgg16_features_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the ``features.N.*`` entries of a torchvision VGG16 state dict, renamed to ``N.*``; check shapes."""
    template = build_vgg16_features("meta").state_dict()
    prefix = "features."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith(prefix):
            out[k[len(prefix) :]] = value
    missing = sorted(set(template) - set(out), key=lambda s: int(s.split(".")[0]))
    if missing:
        raise ValueError(
            f"not a VGG16 state dict: missing {len(missing)} keys such as 'features.{missing[0]}' "
            "(expected torchvision's vgg16 layout: features.0.weight ... features.28.bias)"
        )
    for k, t in template.items():
        if tuple(out[k].shape) != tuple(t.shape):
            raise ValueError(f"features.{k} has shape {tuple(out[k].shape)}, VGG16 needs {tuple(t.shape)} (VGG19?)")
    return {k: out[k] for k in template}


def load_vgg16(path: str | os.PathLike[str] | None = None) -> nn.Sequential:
    """Load torchvision's ImageNet VGG16 ``features`` (frozen, eval) from `path` or the default model folders."""
    source = f"torchvision's ImageNet VGG16 weights, {VGG16_URL}"
    file = resolve_weights_file(path, VGG16_FILENAME, "vgg", source)
    state = read_state_dict(file, f"VGG16 needs {VGG16_FILENAME} ({source}) or a .safetensors with its keys.")
    try:
        state = vgg16_features_state_dict(state)
    except ValueError as e:
        raise WeightsFileError(f"{file}: {e}. Use {VGG16_FILENAME} ({source}).") from None
    features = build_vgg16_features("meta").to_empty(device="cpu")
    features.load_state_dict(state)
    return _freeze(features)


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class VGGFeatures(nn.Module):
    """Named VGG16 activations for inputs in [0, 1] RGB (B,3,H,W); ImageNet normalisation is applied inside.

    Layer names are ``convB_C``, ``reluB_C`` and ``poolB`` (see `VGG16_LAYERS`). The default layers are those of
    the paper's mirror loss; the paper says relu3_4, but VGG16 has no such layer, so relu3_3 (index 15) is used.
    The network is frozen (no parameter gradients; gradients still flow to the input) and stops after the last
    requested layer.
    """

    def __init__(
        self,
        layers: Sequence[str] = MIRROR_LOSS_LAYERS,
        features: nn.Sequential | None = None,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}; choose from {sorted(VGG16_LAYERS)}")
        self.layers: tuple[str, ...] = tuple(layers)
        self._index = {name: VGG16_LAYERS[name] for name in self.layers}
        last = max(self._index.values())
        full = features if features is not None else load_vgg16(weights)
        if len(full) < last + 1:
            raise ValueError(f"features stack has {len(full)} modules; layer index {last} needed")
        # Slicing keeps the original module names, so state_dict keys stay "features.N.*".
        self.features = _freeze(full[: last + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None, layers: Sequence[str] = MIRROR_LOSS_LAYERS) -> VGGFeatures:
        """Load weights from `path` (.pth or .safetensors), or the default model folders when None."""
        return cls(layers, features=load_vgg16(path))

    @classmethod
    def random(cls, seed: int = 0, layers: Sequence[str] = MIRROR_LOSS_LAYERS) -> VGGFeatures:
        """A randomly initialised stand-in (tests, tiny demos): same shapes, meaningless features."""
        gen = torch.Generator().manual_seed(seed)
        features = build_vgg16_features("meta").to_empty(device="cpu")
        with torch.no_grad():
            for m in features:
                if isinstance(m, nn.Conv2d):
                    bound = (6.0 / (m.in_channels * 9)) ** 0.5  # He-uniform: keeps activations O(1)
                    m.weight.uniform_(-bound, bound, generator=gen)
                    m.bias.zero_()
        return cls(layers, features=features)

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stays in eval mode (no dropout/BN in ``features``; kept explicit for safety)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B,3,H,W) RGB in [0,1], got shape {tuple(x.shape)}")
        param = next(self.features.parameters())
        x = x.to(device=param.device, dtype=param.dtype)
        h = (x - self.mean.to(x)) / self.std.to(x)
        wanted = {idx: name for name, idx in self._index.items()}
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            h = module(h)
            if i in wanted:
                out[wanted[i]] = h
        return out
