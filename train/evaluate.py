"""Evaluate an M2H checkpoint on the test split of a prepare_data cache (paper Sec. IV-B, Table I).

    python train/evaluate.py --checkpoint m2h.safetensors --data CACHE \\
        --base v1-5-pruned-emaonly.safetensors --clip-vision clip_vision_vit_l14.safetensors \\
        [--frames 16] [--steps 50] [--guidance 7.5] [--vgg ...] [--lpips vgg.pth] [--i3d i3d_torchscript.pt] \\
        [--face-pack antelopev2] [--out results.json] [--method M2HVideo] [--dataset-name UBC]

Each test video is reconstructed from its own clothing (v ⊙ M_c), body pose and identity (the paper's protocol
for UBC / ASOS, where the human video is its own ground truth): `--frames` consecutive frames from the start.
Metrics (m2h_core.metrics): PSNR / SSIM / LPIPS inside the clothing mask, CSIM between ArcFace embeddings of the
generated frames and the identity image, FVD between the real and generated clip sets (needs >= 10 frames and
>= 2 videos). A metric whose model file is missing is reported as '-' with the file name and where it goes;
`--random-encoders` (tiny checkpoints) uses random VAE/CLIP and stand-in LPIPS so the path runs without files.
Prints the Table I layout and writes per-video numbers to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core import metrics  # noqa: E402
from m2h_core.checkpoint import load_checkpoint  # noqa: E402
from m2h_core.training.dataset import ClipCacheDataset  # noqa: E402
from m2h_core.inference.encoders import FrozenEncoders  # noqa: E402
from m2h_core.inference.sampler import SamplerSettings, sample_video  # noqa: E402


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) in [0, 1] -> channels-last uint8."""
    return (x.clamp(0, 1).movedim(-3, -1).cpu().numpy() * 255).round().astype(np.uint8)


def build_encoders(a, cfg) -> FrozenEncoders:
    if a.random_encoders:
        return FrozenEncoders.random(cfg, seed=0)
    from m2h_core.base_weights import load_clip_vision, load_sd15

    if not a.base or not a.clip_vision:
        raise SystemExit("error: --base (SD-1.5 file, for the VAE) and --clip-vision are needed "
                         "(or --random-encoders for tiny test checkpoints)")
    _, vae = load_sd15(a.base, cfg)
    clip = load_clip_vision(a.clip_vision, cfg)
    return FrozenEncoders(vae.eval().requires_grad_(False), clip, cfg)


def optional(name: str, fn, notes: list[str]):
    """Build a metric model; a missing file becomes a note (the metric prints as '-')."""
    try:
        return fn()
    except (FileNotFoundError, ImportError, ValueError) as e:
        notes.append(f"{name}: skipped - {e}")
        return None


def face_embedder(pack: str, models: str | None):
    from m2h_core.preprocess.face import FaceAnalyzer, NoFaceError

    fa = FaceAnalyzer(pack, search_dirs=[models] if models else None)

    def embed(img: np.ndarray):
        try:
            return fa.analyze(img).embedding
        except NoFaceError:
            return None

    return embed


def nanmean(values) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else None


def evaluate(a) -> dict:
    device = torch.device(a.device)
    model = load_checkpoint(a.checkpoint, device=device)
    cfg = model.cfg
    enc = build_encoders(a, cfg).to(device)
    ds = ClipCacheDataset(a.data, a.split, height=cfg.height, width=cfg.width)
    notes: list[str] = []
    if a.random_encoders:
        lpips_model = metrics.LPIPS.random(0)
        notes.append("lpips: random stand-in network (--random-encoders), not a perceptual metric")
    else:
        lpips_model = optional("LPIPS", lambda: metrics.LPIPS.from_files(a.vgg, a.lpips), notes)
    embed = None if a.no_csim else optional("CSIM", lambda: face_embedder(a.face_pack, a.models), notes)
    i3d = None if a.no_fvd else optional("FVD", lambda: metrics.load_i3d(a.i3d, device=device), notes)
    settings = SamplerSettings(steps=a.steps, guidance_scale=a.guidance, seed=a.seed,
                               context_frames=min(cfg.num_frames, a.frames), context_overlap=a.overlap)
    rows, real, fake = [], [], []
    for i in range(len(ds)):
        item = ds.window(i, a.frames, 0, a.stride)
        res = sample_video(model, enc, item["frames"], item["clothing_masks"], item["pose_images"],
                           item["identity_image"], item["identity_landmarks"], item["arcface"], settings)
        gen, gt = to_uint8(res.frames), to_uint8(item["frames"])
        r = {"video": item["id"], "frames": len(gen)}
        r.update(metrics.clothing_metrics(gen, gt, item["clothing_masks"].numpy() > 0.5, lpips_model))
        if embed is not None:
            try:
                r["csim"] = float(metrics.csim(gen, to_uint8(item["identity_image"]), embed))
            except ValueError as e:  # no face in the identity image
                r["csim"] = None
                notes.append(f"{item['id']}: CSIM skipped - {e}")
        rows.append(r)
        real.append(gt)
        fake.append(gen)
        print(f"[{i + 1}/{len(ds)}] {item['id']}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in r.items() if isinstance(v, float)))
    summary = {k: nanmean(r.get(k) for r in rows) for k in ("psnr", "ssim", "lpips", "csim")}
    summary["fvd"] = None
    if i3d is not None:
        if len(fake) >= 2 and min(len(v) for v in fake) >= metrics.I3D_MIN_FRAMES:
            summary["fvd"] = metrics.fvd(real, fake, model=i3d, device=device)
        else:
            notes.append(f"FVD: skipped - needs >= 2 test videos of >= {metrics.I3D_MIN_FRAMES} frames "
                         f"(have {len(fake)} of {min(len(v) for v in fake)}); raise --frames")
    table = metrics.format_table([{"method": a.method, "dataset": a.dataset_name, **summary}])
    print(table)
    for n in notes:
        print("note:", n)
    result = {"summary": summary, "videos": rows, "notes": notes, "checkpoint": str(a.checkpoint),
              "split": a.split, "settings": vars(settings)}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="M2H .safetensors")
    ap.add_argument("--data", required=True, help="prepare_data cache folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--base")
    ap.add_argument("--clip-vision", dest="clip_vision")
    ap.add_argument("--random-encoders", action="store_true", help="random VAE/CLIP (tiny checkpoints, tests)")
    ap.add_argument("--vgg", help="vgg16-397923af.pth (LPIPS)")
    ap.add_argument("--lpips", help="lpips vgg.pth lin weights")
    ap.add_argument("--i3d", help="i3d_torchscript.pt (FVD)")
    ap.add_argument("--face-pack", default="antelopev2")
    ap.add_argument("--models", help="folder with insightface/ model packs")
    ap.add_argument("--no-csim", action="store_true")
    ap.add_argument("--no-fvd", action="store_true")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--method", default="M2HVideo")
    ap.add_argument("--dataset-name", dest="dataset_name", default="test")
    ap.add_argument("--out", help="write per-video results (JSON)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        evaluate(a)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
