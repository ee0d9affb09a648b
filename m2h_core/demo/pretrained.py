"""The shipped pretrained tiny M2H model (`assets/tiny_m2h.safetensors`): the demo's model trained for longer.

The CPU demo trains its tiny model for minutes; the package also ships the same recipe (`recipe.DemoSettings`,
`recipe.train_demo_model`) trained for an hour on more synthetic clips at twice the UNet widths, with the shipped
tiny VAE and the demo's random tiny CLIP embedded. The demo samples it beside the model it trains ("what it can do"
beside "training works"). `python -m m2h_core.demo.pretrained` re-makes it (the shipped file's command and figures
are in its metadata and in docs/demo.md); it scores the model on the demo's held-out pairs
(`evaluation.score_heldout`) and records the figures in the file (`heldout`), so a test checks the shipped file
reproduces them. `--start-from FILE` continues a file's training (the metadata then keeps every command under
`history`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..checkpoint import load_checkpoint, read_metadata
from ..inference.encoders import FrozenEncoders
from ..models.m2h import M2HModel

SHIPPED_M2H = Path(__file__).resolve().parent / "assets" / "tiny_m2h.safetensors"
FORMAT_TAG = "m2h tiny pretrained"
# The shipped model's UNet widths: twice the demo's (16, 32). With 256 clips they moved every held-out figure
# (docs/demo.md); the model trained inside the demo keeps the narrow widths to fit its time budget.
# PRETRAINED_STEPS is the shipped file's.
PRETRAINED_UNET_CHANNELS = (32, 64)
PRETRAINED_CLIPS = 256
PRETRAINED_STEPS = 8000


def load_pretrained(path: str | Path = SHIPPED_M2H) -> tuple[M2HModel, FrozenEncoders, dict]:
    """-> (model, its embedded encoders, metadata with the recorded held-out figures). FileNotFoundError /
    ValueError name the file and how to re-make it."""
    from ..inference.pipeline import embedded_encoders

    path = Path(path)
    remake = f"re-create it with `python -m m2h_core.demo.pretrained --out {path}`"
    if not path.is_file():
        raise FileNotFoundError(f"pretrained tiny M2H model not found: {path}; {remake}")
    try:
        meta = read_metadata(path)
        model = load_checkpoint(path).eval()
        encoders = embedded_encoders(path, model.cfg)
    except Exception as e:  # noqa: BLE001 - corrupt / foreign files: one clear message
        raise ValueError(f"{path} is not a readable tiny M2H checkpoint ({e}); {remake}") from e
    if meta.get("demo") != FORMAT_TAG or encoders is None:
        raise ValueError(f"{path} is not the demo's pretrained tiny M2H model (no '{FORMAT_TAG}' tag or no embedded "
                         f"VAE / CLIP); {remake}")
    info = {k: (json.loads(v) if k in ("heldout", "settings", "identity", "train_steps", "n_clips", "seconds",
                                       "history", "total_train_steps", "loss_per_100_steps")
                else v) for k, v in meta.items() if k not in ("config",)}
    info.setdefault("total_train_steps", info.get("train_steps"))  # one run: its own steps; continued: all runs'
    return model, encoders, info


def pretrain(out: str | Path = SHIPPED_M2H, *, steps: int = PRETRAINED_STEPS, n_clips: int = PRETRAINED_CLIPS,
             seed: int = 4321, progress: Callable[[str], None] | None = print, start_from: str | Path | None = None,
             lr: float | None = None, unet_channels: tuple[int, ...] | None = None, garment_edge: int = 0,
             mirror_alpha: float | None = None, clothing_fill: str | None = None) -> dict:
    """Train the demo's model for `steps` on `n_clips` clips of seed `seed`, score it, save it (atomic write).
    start_from: continue from this pretrained file's weights (its metadata's history is kept); lr: peak learning rate
    (default DemoSettings.lr); unet_channels: the UNet's widths (default PRETRAINED_UNET_CHANNELS, or start_from's);
    clothing_fill: the clothing frame's fill outside M_c (default DemoSettings.clothing_fill, whatever start_from's)."""
    import torch

    from ..checkpoint import save_checkpoint
    from .evaluation import score_heldout
    from .recipe import DemoSettings, quiet_tqdm, train_demo_model
    from .synthetic import generate_dataset
    from .tiny_vae import SHIPPED_VAE, load_vae_weights

    say = progress or (lambda _m: None)
    s = DemoSettings(train_steps=steps, n_train_clips=n_clips, garment_edge=garment_edge)
    s.lr = s.lr if lr is None else lr
    s.mirror_alpha = s.mirror_alpha if mirror_alpha is None else mirror_alpha
    s.clothing_fill = s.clothing_fill if clothing_fill is None else clothing_fill
    init, history, channels = None, [], PRETRAINED_UNET_CHANNELS
    if start_from is not None:
        base, _, base_meta = load_pretrained(start_from)
        channels, init = base.cfg.unet.block_out_channels, base.state_dict()
        if base.cfg.clothing_fill != s.clothing_fill:
            say(f"[pretrain] clothing fill {base.cfg.clothing_fill} -> {s.clothing_fill} (M2HConfig.clothing_fill)")
        history = list(base_meta.get("history") or []) + [{k: base_meta.get(k) for k in (
            "command", "train_steps", "n_clips", "clip_seed", "seconds", "loss_per_100_steps")}]
        del base
    s.unet_channels = tuple(unet_channels or channels)
    cfg = s.model_config()
    H, W = cfg.height, cfg.width
    encoders = FrozenEncoders.random(cfg, seed=0)  # the demo's CLIP stand-in (seed 0)
    cfg.vae.scaling_factor = load_vae_weights(encoders.vae, SHIPPED_VAE).scaling_factor
    t0 = time.perf_counter()
    clips = generate_dataset(n_clips, seed, n_frames=s.clip_frames, height=2 * H, width=2 * W, fps=s.fps)
    with quiet_tqdm():
        model, _, logs = train_demo_model(s, cfg, encoders, clips, seed, torch.device("cpu"),
                                          say=lambda m: say(f"[pretrain] {m}"), init=init)
    seconds = time.perf_counter() - t0
    say("[pretrain] scoring on the demo's held-out pairs")
    figures = score_heldout(model, encoders)
    curve = [round(float(sum(r["loss"] for r in logs[i: i + 100]) / len(logs[i: i + 100])), 4)
             for i in range(0, len(logs), 100)]
    meta = {"demo": FORMAT_TAG, "train_steps": steps, "n_clips": n_clips, "clip_seed": seed,
            "seconds": round(seconds), "heldout": figures, "loss_per_100_steps": curve,
            "command": f"python -m m2h_core.demo.pretrained --steps {steps} --clips {n_clips} --seed {seed}"
                       + (f" --lr {s.lr:g}" if lr is not None else "")
                       + f" --unet-channels {','.join(map(str, s.unet_channels))}"
                       + (f" --garment-edge {garment_edge}" if garment_edge else "")
                       + (f" --mirror-alpha {s.mirror_alpha:g}" if mirror_alpha is not None else "")
                       + f" --clothing-fill {s.clothing_fill}"
                       + (" --start-from FILE (the previous file: history)" if start_from is not None else "")}
    if history:
        meta["history"] = history
        meta["total_train_steps"] = steps + sum(int(h.get("train_steps") or 0) for h in history)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, encoders=encoders, extra=meta)
    m, c = figures["mean"], figures["vae_ceiling"]
    say(f"[pretrain] {steps} steps in {seconds:.0f} s; held-out clothing PSNR {m['clothing_psnr']:.2f} dB (ceiling "
        f"{c['clothing_psnr']:.2f}), SSIM {m['clothing_ssim']:.3f} ({c['clothing_ssim']:.3f}), identity "
        f"{figures.get('identity')} -> {out}")
    return meta


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser(prog="python -m m2h_core.demo.pretrained", description=pretrain.__doc__)
    ap.add_argument("--out", default=str(SHIPPED_M2H))
    ap.add_argument("--steps", type=int, default=PRETRAINED_STEPS)
    ap.add_argument("--clips", type=int, default=PRETRAINED_CLIPS)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (0: PyTorch's default)")
    ap.add_argument("--start-from", default=None, help="continue the training of this pretrained file")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the demo's)")
    ap.add_argument("--unet-channels", default=None, help="the UNet's widths, e.g. 16,32 (default: "
                    f"{','.join(map(str, PRETRAINED_UNET_CHANNELS))}, or the --start-from file's)")
    ap.add_argument("--garment-edge", type=int, default=0, help="the mirror loss also covers the garment's boundary "
                    "band, this many pixels either side of its edge (DemoSettings.garment_edge; 0: off)")
    ap.add_argument("--mirror-alpha", type=float, default=None, help="the mirror loss's weight (default: the demo's, "
                    "DemoSettings.mirror_alpha)")
    ap.add_argument("--clothing-fill", choices=("black", "backdrop"), default=None,
                    help="the clothing frame outside M_c: black (the paper's v ⊙ M_c) or the scene's backdrop colour "
                         "(default: the demo's, DemoSettings.clothing_fill; M2HConfig.clothing_fill)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    channels = tuple(int(v) for v in a.unet_channels.split(",")) if a.unet_channels else None
    pretrain(a.out, steps=a.steps, n_clips=a.clips, seed=a.seed, start_from=a.start_from, lr=a.lr,
             unet_channels=channels, garment_edge=a.garment_edge, mirror_alpha=a.mirror_alpha,
             clothing_fill=a.clothing_fill)


if __name__ == "__main__":
    main()
