"""The M2H checkpoint: one `.safetensors` file with every trainable part, the config and a format version.

Keys: `pose_encoder.*`, `id_encoder.*`, `head_encoder.*`, `unet.*` (the whole UNet: SD-1.5 weights with the
widened conv_in, the motion modules and the adapter's to_k_id / to_v_id). Metadata (all strings):
`format` = "m2hvideo", `format_version`, `config` (M2HConfig as JSON), `base_model`, plus free-form extras
(training step, data, ...). Writes are atomic (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .base_weights import quiet_empty_fp32_notice
from .config import M2HConfig
from .models.m2h import M2HModel

FORMAT = "m2hvideo"
FORMAT_VERSION = "1"
PARTS = ("pose_encoder", "id_encoder", "head_encoder", "unet")
EMBEDDED_PREFIXES = ("vae.", "clip_vision.")  # optional frozen encoders of self-contained (tiny) checkpoints


class CheckpointError(ValueError):
    """An M2H checkpoint that cannot be loaded, with what is wrong and what to do."""


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """safetensors `save_file` to a temp file in the same folder, fsync, then rename over `path`.

    The file gets the permissions a plain `open()` would give it (0666 minus the umask), not mkstemp's 0600: a
    ComfyUI server running as another user must be able to read the checkpoints training wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(model: M2HModel, path: str | os.PathLike, dtype: torch.dtype | None = None,
                    extra: dict[str, object] | None = None, encoders=None) -> None:
    """Write the model (and, for small self-contained models, the frozen VAE/CLIP as `vae.*`/`clip_vision.*`)."""
    state = dict(model.state_dict())
    if encoders is not None:
        state.update({f"vae.{k}": v for k, v in encoders.vae.state_dict().items()})
        state.update({f"clip_vision.{k}": v for k, v in encoders.clip.state_dict().items()})
    tensors = {k: (v if dtype is None or not v.is_floating_point() else v.to(dtype)).detach().contiguous().cpu()
               for k, v in state.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.cfg.to_json(),
                "base_model": model.cfg.base_model}
    for k, v in (extra or {}).items():
        metadata[k] = v if isinstance(v, str) else json.dumps(v)
    atomic_save_file(tensors, path, metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"M2H checkpoint {path} does not exist (put it in ComfyUI/models/m2hvideo/)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        from .preprocess.model_files import describe_file

        raise CheckpointError(f"{path} is not a readable .safetensors file ({describe_file(path)}; "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}): download or export it "
                              "again") from None


def has_embedded_encoders(path: str | os.PathLike) -> bool:
    """Whether the checkpoint holds its own VAE and CLIP (`vae.*`, `clip_vision.*`), from the header only."""
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    return all(any(k.startswith(p) for k in keys) for p in EMBEDDED_PREFIXES)


def read_config(path: str | os.PathLike) -> M2HConfig:
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not an M2HVideo checkpoint (no format=m2hvideo metadata). If it is a "
                              "Stable Diffusion checkpoint, select it as the base model instead.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path.name} has M2H format version {meta.get('format_version')}; this version of "
                              f"the pack reads version {FORMAT_VERSION}. Update the pack.")
    try:
        return M2HConfig.from_json(meta["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name}: its model config can't be read: {e}") from e


def check_checkpoint_file(path: str | os.PathLike) -> M2HConfig:
    """Everything about the file that needs no model (header only): readable, an M2H checkpoint of a known format
    version, a config, weights for every part. Returns the config."""
    path = Path(path)
    cfg = read_config(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    missing_parts = [p for p in PARTS if not any(k.startswith(p + ".") for k in keys)]
    if missing_parts:
        raise CheckpointError(f"{path}: no weights for {', '.join(missing_parts)}; the checkpoint is incomplete "
                              "(export it again)")
    return cfg


def load_checkpoint(path: str | os.PathLike, expect_base: str | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> M2HModel:
    """Build the model the checkpoint's config describes and load every part, checking keys and shapes."""
    path = Path(path)
    cfg = read_config(path)
    if expect_base is not None and cfg.base_model != expect_base:
        raise CheckpointError(f"{path.name} was trained on base model '{cfg.base_model}', not '{expect_base}'")
    try:
        from safetensors.torch import load_file
        sd = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is truncated or corrupt: {e}") from e
    missing_parts = [p for p in PARTS if not any(k.startswith(p + ".") for k in sd)]
    if missing_parts:
        raise CheckpointError(f"{path.name} has no weights for {', '.join(missing_parts)}; it is incomplete")
    with quiet_empty_fp32_notice():
        model = M2HModel(cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    unexpected = [k for k in sd if k not in own and not k.startswith(EMBEDDED_PREFIXES)]
    if missing or wrong or unexpected:
        raise CheckpointError(f"{path.name} does not match its own config: {len(missing)} missing (e.g. {missing[:3]}),"
                              f" {len(wrong)} of another shape (e.g. {wrong[:3]}), {len(unexpected)} unexpected "
                              f"(e.g. {unexpected[:3]})")
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path.name}: tensor {k} contains NaN/inf (a diverged training run?)")
    model.load_state_dict({k: v for k, v in sd.items() if not k.startswith(EMBEDDED_PREFIXES)})
    return model.to(device=device, dtype=dtype).eval()
