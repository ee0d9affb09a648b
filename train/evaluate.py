"""Evaluate an M2H checkpoint with the paper's Table I protocol (Sec. IV-C2) on the test split of a clip cache.

    python train/evaluate.py --checkpoint m2h_final.safetensors --data CACHE \\
        --base v1-5-pruned-emaonly.safetensors --clip-vision clip_vision_vit_l14.safetensors \\
        [--vgg vgg16-397923af.pth --lpips vgg.pth] [--alexnet alexnet-owt-7be5be79.pth --lpips-alex alex.pth] \\
        [--i3d i3d_torchscript.pt] [--face-pack antelopev2 --models DIR] \\
        [--frames 16] [--stride 4] [--steps 50] [--guidance 7.5] [--out results/eval.json]

Every test video is cut into non-overlapping N-frame chunks at the training stride; each chunk is generated from its
own clothing, pose and an identity frame of the same video and scored: PSNR / SSIM / LPIPS inside the clothing mask,
CSIM (ArcFace), FVD over all chunks, each with a 95% bootstrap interval over test videos. `--collect` puts several
results (the ablations) in one table beside the paper's rows. A metric whose model file is missing is reported as '-'
naming the file; `--random-encoders` runs the whole path on tiny checkpoints without files. Every choice is recorded
under "protocol" in the JSON; what each number means: docs/REPRODUCE.md, section 5.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core import metrics
from m2h_core.checkpoint import load_checkpoint
from m2h_core.frames import to_nhwc, to_uint8
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.inference.sampler import SamplerSettings, sample_video
from m2h_core.training.dataset import CacheError, ClipCacheDataset, read_split, sampler_inputs

#: The paper's Table I (Mu et al., "From Mannequin to Human: A Pose-Aware and Identity-Preserving Video Generation
#: Framework for Lifelike Clothing Display", Sec. IV-C4, Table I): (method, dataset, PSNR, SSIM, LPIPS, CSIM, FVD).
PAPER_TABLE_I_CITATION = ("Mu, Zhou, Hou, Zhang, Guan, \"From Mannequin to Human: A Pose-Aware and "
                          "Identity-Preserving Video Generation Framework for Lifelike Clothing Display\", Table I")
PAPER_TABLE_I: tuple[tuple[str, str, float, float, float, float, float], ...] = (
    ("MagicPose", "UBC fashion", 15.22, 0.656, 0.237, 0.913, 112.75),
    ("MimicMotion", "UBC fashion", 23.01, 0.878, 0.079, 0.928, 35.52),
    ("AnimateAnyone", "UBC fashion", 21.72, 0.858, 0.103, 0.932, 53.93),
    ("StableVITON", "UBC fashion", 23.25, 0.864, 0.082, 0.912, 31.06),
    ("ControlNeXt", "UBC fashion", 17.81, 0.758, 0.119, 0.910, 88.64),
    ("M2HVideo (paper)", "UBC fashion", 23.47, 0.886, 0.069, 0.935, 13.35),
    ("MagicPose", "ASOS", 14.89, 0.63, 0.213, 0.908, 175.36),
    ("MimicMotion", "ASOS", 23.76, 0.856, 0.053, 0.927, 38.71),
    ("AnimateAnyone", "ASOS", 21.35, 0.781, 0.078, 0.902, 97.64),
    ("StableVITON", "ASOS", 23.98, 0.862, 0.056, 0.917, 33.21),
    ("ControlNeXt", "ASOS", 17.45, 0.643, 0.125, 0.865, 138.42),
    ("M2HVideo (paper)", "ASOS", 25.23, 0.891, 0.041, 0.938, 24.86),
)
#: The paper's ablations on UBC fashion, keyed by the names of train/configs/table3/*.yaml and table4/*.yaml:
#: Table III (H = head encoder, A = adapter, M = mirror loss on/off) and Table IV (alpha, beta of Eq. 6).
PAPER_ABLATIONS: dict[str, tuple[float, float, float, float, float]] = {
    "H0_A0_M0": (20.98, 0.843, 0.082, 0.918, 19.34),
    "H1_A0_M0": (23.20, 0.875, 0.076, 0.926, 15.20),
    "H0_A1_M0": (21.97, 0.866, 0.074, 0.920, 14.80),
    "H0_A0_M1": (22.41, 0.871, 0.078, 0.926, 15.62),
    "H1_A1_M0": (23.00, 0.879, 0.072, 0.923, 13.41),
    "H1_A0_M1": (22.15, 0.874, 0.071, 0.933, 13.62),
    "H0_A1_M1": (23.34, 0.882, 0.068, 0.928, 14.00),
    "H1_A1_M1": (23.47, 0.886, 0.069, 0.935, 13.35),
    "alpha0_beta0.005": (23.35, 0.865, 0.073, 0.928, 14.58),
    "alpha0.005_beta0.005": (23.31, 0.878, 0.068, 0.930, 14.72),
    "alpha0.05_beta0.005": (23.47, 0.886, 0.069, 0.935, 13.35),
    "alpha0.5_beta0.005": (22.56, 0.874, 0.075, 0.933, 13.66),
    "alpha0.05_beta0": (20.41, 0.842, 0.101, 0.907, 30.37),
    "alpha0.05_beta0.0005": (22.17, 0.879, 0.071, 0.929, 13.78),
    "alpha0.05_beta0.05": (20.60, 0.843, 0.102, 0.921, 23.31),
    "alpha0.05_beta0.5": (18.04, 0.801, 0.149, 0.902, 27.36),
}
TABLE_KEYS = ("psnr", "ssim", "lpips", "csim", "fvd")
CHUNK_METRICS = ("psnr", "ssim", "lpips", "lpips_alex", "csim")
#: I3D feature dimension + 1: the least number of chunks whose feature covariance can be full rank.
FVD_MIN_CHUNKS = 401


# --------------------------------------------------------------------------------------------- protocol pieces


def chunk_starts(num_video_frames: int, frames: int, stride: int) -> list[int]:
    """First frame of every non-overlapping `frames`-frame chunk of a video sampled every `stride` frames.

    The video at stride s has ceil(T/s) frames; chunk j takes its frames jN..jN+N-1, i.e. source frames
    s·(jN + k). Returns [s·N·j for j < floor(ceil(T/s) / N)].
    """
    if frames < 1 or stride < 1:
        raise ValueError(f"--frames and --stride must be >= 1 (got {frames}, {stride})")
    sampled = -(-int(num_video_frames) // stride)
    return [stride * frames * j for j in range(sampled // frames)]


def read_id_list(path: Path) -> list[str]:
    """Video ids from a split.json ("test") or a text file (one id a line; blank lines and # comments skipped)."""
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("test"), list):
            raise ValueError(f"{path} has no 'test' list (expected prepare_data's split.json layout)")
        return [str(i) for i in data["test"]]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def split_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the sorted ids, one a line: equal digests = the same test set."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def bootstrap_mean_ci(per_video: Sequence[Sequence[float]], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(point, low, high): the mean over all chunks and its percentile-bootstrap interval resampling videos.

    `per_video[i]` holds video i's chunk values (NaN/None dropped; videos left with none are dropped). A resample
    draws as many videos as there are, with replacement, and takes the mean over all their chunks. Fewer than two
    videos: no interval (None, None).
    """
    vals = [np.asarray([v for v in vs if v is not None and not math.isnan(v)], np.float64) for vs in per_video]
    vals = [v for v in vals if v.size]
    if not vals:
        return None, None, None
    sums = np.array([v.sum() for v in vals])
    counts = np.array([v.size for v in vals], np.float64)
    point = float(sums.sum() / counts.sum())
    if len(vals) < 2 or n_boot < 1:
        return point, None, None
    idx = np.random.default_rng(seed).integers(0, len(vals), size=(n_boot, len(vals)))
    boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return point, float(lo), float(hi)


def bootstrap_fvd_ci(real: Sequence[np.ndarray], fake: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(FVD over all chunks, low, high): `real[i]`, `fake[i]` are video i's (chunks, D) I3D features; resamples
    videos like `bootstrap_mean_ci` and recomputes the Fréchet distance (resamples with < 2 chunks are skipped)."""
    keep = [i for i in range(len(real)) if len(real[i])]
    if sum(len(real[i]) for i in keep) < 2:
        return None, None, None
    point = metrics.frechet_distance(np.concatenate([real[i] for i in keep]), np.concatenate([fake[i] for i in keep]))
    if len(keep) < 2 or n_boot < 1:
        return point, None, None
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        pick = [keep[j] for j in rng.integers(0, len(keep), len(keep))]
        r = np.concatenate([real[i] for i in pick])
        if len(r) >= 2:
            boot.append(metrics.frechet_distance(r, np.concatenate([fake[i] for i in pick])))
    if not boot:
        return point, None, None
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return point, float(lo), float(hi)


# --------------------------------------------------------------------------------------------- models


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


def optional(name: str, fn: Callable, notes: list[str], explicit: bool = False):
    """Build a metric model. A file that is not found becomes a note (the metric prints as '-'); a file the user
    named that cannot be read is an error naming it."""
    try:
        return fn()
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # torch.load(weights_only=True) refused a file
        raise ValueError(f"{name}: a weights file for it is not a weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120]}); check the files named by its flags") from None
    except (FileNotFoundError, ImportError, ValueError) as e:
        if explicit or (isinstance(e, ValueError) and "not a" in str(e)):
            raise ValueError(f"{name}: {e}") from None
        notes.append(f"{name}: skipped - {e}")
        return None


def training_stride(checkpoint: str | Path) -> tuple[int, str]:
    """(stride, where from): `frame_stride` of the run's train_config.json next to the checkpoint
    (OUTPUT_DIR/m2h_final.safetensors or OUTPUT_DIR/checkpoints/step_*/m2h.safetensors), else 4 (Sec. IV-B)."""
    ckpt = Path(checkpoint).resolve()
    for folder in (ckpt.parent, *ckpt.parents[1:3]):
        cfg = folder / "train_config.json"
        if cfg.is_file():
            try:
                stride = int(json.loads(cfg.read_text())["frame_stride"])
            except (ValueError, KeyError, TypeError):
                continue
            return stride, str(cfg)
    return 4, "default (paper Sec. IV-B)"


def in_models(models: str | None, subfolder: str) -> Path | None:
    """The folder `models/subfolder` searched for a metric's file when `--models` is given (a missing file is then
    reported there); None: the default search ($M2H_MODELS/<subfolder>, <repo>/models/<subfolder>)."""
    return Path(models) / subfolder if models else None


def face_embedder(pack: str, models: str | None):
    from m2h_core.preprocess.face import FaceAnalyzer, NoFaceError

    fa = FaceAnalyzer(pack, search_dirs=[models] if models else None)

    def embed(img: np.ndarray):
        try:
            return fa.analyze(img).embedding
        except NoFaceError:
            return None

    return embed


# --------------------------------------------------------------------------------------------- evaluation


def load_test_split(a) -> tuple[list[str], str]:
    """(ids, where from): `--split-file`, else the cache's split.json ('--split', default 'test')."""
    if a.split_file:
        return read_id_list(Path(a.split_file)), str(a.split_file)
    if not Path(a.data).is_dir():
        raise CacheError(f"clip cache {a.data} does not exist: run train/prepare_data.py --out {a.data}")
    split = read_split(a.data)
    if a.split not in split:
        raise CacheError(f"{a.data}/split.json has no '{a.split}' list (has: {', '.join(split)})")
    return list(split[a.split]), f"{Path(a.data) / 'split.json'}:{a.split}"


def score_chunk(gen: np.ndarray, gt: np.ndarray, mask: np.ndarray, mask_mode: str, lpips_models: dict,
                device: torch.device) -> dict:
    """Masked PSNR / SSIM / LPIPS(-Alex) of one chunk (the two mask modes: docs/REPRODUCE.md, section 5)."""
    if mask_mode == "zeroed":
        gen, gt, mask = gen * mask[..., None], gt * mask[..., None], None
    out = {"psnr": float(metrics.masked_psnr(gen, gt, mask)), "ssim": float(metrics.masked_ssim(gen, gt, mask))}
    for key, model in lpips_models.items():
        out[key] = float(metrics.masked_lpips(gen, gt, mask, model=model, device=device))
    return out


def evaluate(a, embedder: Callable[[np.ndarray], np.ndarray | None] | None = None) -> dict:
    """Run the protocol (docs/REPRODUCE.md, section 5). `embedder` (one RGB uint8 image -> face embedding or None)
    replaces the insightface model for CSIM (tests)."""
    stride_source = "--stride"
    if a.stride is None:
        a.stride, stride_source = training_stride(a.checkpoint)
    if a.frames < 1 or a.stride < 1:
        raise ValueError(f"--frames and --stride must be >= 1 (got {a.frames}, {a.stride})")
    ids, split_source = load_test_split(a)
    device = torch.device(a.device)
    model = load_checkpoint(a.checkpoint, device=device)
    cfg = model.cfg
    ds = ClipCacheDataset(a.data, None, ids=ids, num_frames=None, height=cfg.height, width=cfg.width, seed=a.seed)
    notes: list[str] = []
    lpips_models: dict = {}
    if a.random_encoders:
        lpips_models["lpips"] = metrics.LPIPS.random(0)
        lpips_models["lpips_alex"] = metrics.LPIPSAlex.random(0)
        notes.append("lpips: random stand-in networks (--random-encoders), not a perceptual metric")
    else:
        vgg = optional("LPIPS-VGG", lambda: metrics.LPIPS.from_files(
            a.vgg or in_models(a.models, "vgg"),
            a.lpips or in_models(a.models, "lpips")), notes, explicit=bool(a.vgg or a.lpips))
        alex = optional("LPIPS-Alex", lambda: metrics.LPIPSAlex.from_files(
            a.alexnet or in_models(a.models, "lpips"),
            a.lpips_alex or in_models(a.models, "lpips")), notes,
            explicit=bool(a.alexnet or a.lpips_alex))
        lpips_models.update({k: m for k, m in (("lpips", vgg), ("lpips_alex", alex)) if m is not None})
    if embedder is None and not a.no_csim:
        embedder = optional("CSIM", lambda: face_embedder(a.face_pack, a.models), notes)
    i3d = None
    if not a.no_fvd:
        if a.frames < metrics.I3D_MIN_FRAMES:
            notes.append(f"FVD: skipped - needs chunks of >= {metrics.I3D_MIN_FRAMES} frames (--frames {a.frames})")
        else:
            i3d = optional("FVD", lambda: metrics.load_i3d(a.i3d or in_models(a.models, "fvd"),
                                                            device=device), notes, explicit=bool(a.i3d))
    enc = build_encoders(a, cfg).to(device)
    base = SamplerSettings(steps=a.steps, guidance_scale=a.guidance, seed=a.seed,
                           context_frames=min(cfg.num_frames, a.frames), context_overlap=a.overlap)
    videos = []
    real_feats: list[np.ndarray] = []
    fake_feats: list[np.ndarray] = []
    todo = [(i, chunk_starts(v.num_frames, a.frames, a.stride)) for i, v in enumerate(ds.videos)]
    total = sum(len(s) for _, s in todo)
    done = 0
    on = ["psnr", "ssim", *lpips_models, *(["csim"] if embedder is not None else []), *(["fvd"] if i3d else [])]
    print(f"evaluating {total} chunks of {a.frames} frames at stride {a.stride} ({stride_source}) from {len(todo)} "
          f"test videos; metrics: {', '.join(on)}", flush=True)
    for n in notes:  # skipped metrics, said before hours of sampling rather than after
        print("note:", n, flush=True)
    if i3d is not None and total < FVD_MIN_CHUNKS:
        print(f"warning: {total} chunks < {FVD_MIN_CHUNKS}: the FVD will be biased (see the end)", file=sys.stderr)
    for i, starts in todo:
        vid = ds.videos[i]
        if not starts:
            notes.append(f"{vid.id}: no chunk - {vid.num_frames} frames < {(a.frames - 1) * a.stride + 1} "
                         f"({a.frames} frames at stride {a.stride})")
        chunks, rf, ff = [], [], []
        for j, start in enumerate(starts):
            item = ds.window(i, a.frames, start, a.stride)
            settings = dataclasses.replace(base, seed=a.seed + 1000 * i + j)
            res = sample_video(model, enc, *sampler_inputs(item), settings)
            gen, gt = to_uint8(to_nhwc(res.frames)), to_uint8(to_nhwc(item["frames"]))
            mask = item["clothing_masks"].numpy() > 0.5
            c = {"start": start, "frame_indices": item["frame_indices"].tolist(),
                 "identity_index": int(item["identity_index"]),
                 **score_chunk(gen, gt, mask, a.mask_mode, lpips_models, device)}
            if embedder is not None:
                ref = embedder(to_uint8(to_nhwc(item["identity_image"])))
                ref = ref if ref is not None else item["arcface"].numpy()
                per = _csim_frames(gen, ref, embedder)
                found = ~np.isnan(per)
                c["csim"] = float(per[found].mean()) if found.any() else None
                c["csim_face_rate"] = float(found.mean())
            if i3d is not None:
                rf.append(metrics.i3d_features([gt], i3d, device=device, fit=a.fvd_fit)[0])
                ff.append(metrics.i3d_features([gen], i3d, device=device, fit=a.fvd_fit)[0])
            if a.save_frames:
                save_chunk_frames(Path(a.save_frames) / vid.id / f"{j:02d}", gen)
            chunks.append(c)
            done += 1
            print(f"[{done}/{total}] {vid.id} chunk {j} (frames {start}..{item['frame_indices'][-1].item()}): "
                  + ", ".join(f"{k}={v:.4f}" for k, v in c.items() if isinstance(v, float)), flush=True)
        d = 0 if not rf else len(rf[0])
        real_feats.append(np.array(rf).reshape(len(rf), d))
        fake_feats.append(np.array(ff).reshape(len(ff), d))
        means = {k: _nanmean([c.get(k) for c in chunks]) for k in CHUNK_METRICS + ("csim_face_rate",)}
        videos.append({"video": vid.id, "num_frames": vid.num_frames, "chunks": chunks,
                       **{k: v for k, v in means.items() if v is not None}})
    n_chunks = sum(len(v["chunks"]) for v in videos)
    if len(videos) < 2:
        notes.append("one test video: no bootstrap interval (intervals resample test videos)")
    if n_chunks == 0:
        raise ValueError(f"no test video has {(a.frames - 1) * a.stride + 1} frames for one chunk "
                         f"({a.frames} frames at stride {a.stride}); lower --frames or --stride")
    summary: dict[str, float | None] = {}
    ci: dict[str, list[float] | None] = {}
    for k in CHUNK_METRICS + ("csim_face_rate",):
        point, lo, hi = bootstrap_mean_ci([[c.get(k) for c in v["chunks"]] for v in videos], a.bootstrap,
                                          a.bootstrap_seed)
        summary[k] = point
        ci[k] = None if lo is None else [lo, hi]
    summary["fvd"], ci["fvd"] = None, None
    if i3d is not None:
        if n_chunks < 2:
            notes.append(f"FVD: skipped - needs >= 2 chunks, have {n_chunks}")
        else:
            point, lo, hi = bootstrap_fvd_ci(real_feats, fake_feats, a.bootstrap, a.bootstrap_seed)
            summary["fvd"], ci["fvd"] = point, (None if lo is None else [lo, hi])
            if n_chunks < FVD_MIN_CHUNKS:
                msg = (f"FVD from {n_chunks} chunks < {FVD_MIN_CHUNKS} (I3D feature dim + 1): the covariance is "
                       f"singular and the FVD biased upwards; not comparable with FVDs from other chunk counts")
                print(f"warning: {msg}", file=sys.stderr)
                notes.append(f"warning: {msg}")
    if ci["fvd"] is not None and not ci["fvd"][0] <= summary["fvd"] <= ci["fvd"][1]:
        notes.append("FVD: the point lies outside its bootstrap interval (the Fréchet distance of a resample with "
                     "duplicated chunks is biased); read the interval as a spread, not a confidence interval")
    protocol = {"frames": a.frames, "stride": a.stride, "stride_source": stride_source, "chunks": n_chunks,
                "videos": len(videos),
                "mask_mode": a.mask_mode, "split_source": split_source, "split_sha256": split_digest(ids),
                "test_ids": list(ids), "bootstrap": a.bootstrap, "bootstrap_seed": a.bootstrap_seed,
                "ci_level": 0.95, "fvd_min_chunks": FVD_MIN_CHUNKS, "sampler": dataclasses.asdict(base),
                "seed_rule": "seed + 1000 * video index + chunk index", "checkpoint": str(a.checkpoint),
                "random_encoders": bool(a.random_encoders),
                "lpips": sorted(lpips_models), "csim": embedder is not None, "fvd": i3d is not None,
                "fvd_fit": a.fvd_fit}
    result = {"method": a.method, "dataset": a.dataset_name, "summary": summary, "ci95": ci, "protocol": protocol,
              "videos": videos, "notes": notes,
              "paper_table_i": {"citation": PAPER_TABLE_I_CITATION,
                                "rows": [dict(zip(("method", "dataset") + TABLE_KEYS, r)) for r in PAPER_TABLE_I]}}
    print(metrics.format_table([{"method": a.method, "dataset": a.dataset_name, **summary}]))
    for k in CHUNK_METRICS + ("fvd",):
        if summary[k] is not None:
            interval = "" if ci[k] is None else f" 95% CI [{ci[k][0]:.4f}, {ci[k][1]:.4f}]"
            print(f"{k} = {summary[k]:.4f}{interval}")
    print(f"{n_chunks} chunks of {a.frames} frames at stride {a.stride} from {len(videos)} test videos "
          f"(split {split_digest(ids)[:12]})")
    for n in notes:
        print("note:", n)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))
        md = Path(a.markdown) if a.markdown else out.with_suffix(".md")
        md.write_text(markdown_report(result))
        written = [out, md]
        if i3d is not None and n_chunks:
            feats = out.with_suffix(".i3d.safetensors")
            save_features(feats, real_feats, fake_feats)
            written.append(feats)
        print("wrote " + ", ".join(str(w) for w in written))
    elif a.markdown:
        Path(a.markdown).write_text(markdown_report(result))
    return result


def save_chunk_frames(folder: Path, frames: np.ndarray) -> None:
    """A generated chunk as lossless PNGs folder/00000.png... (what was scored, bit for bit)."""
    from m2h_core.training.dataset import frame_name, write_png

    folder.mkdir(parents=True, exist_ok=True)
    for f, img in enumerate(frames):
        write_png(folder / frame_name(f), img)


def save_features(path: Path, real: Sequence[np.ndarray], fake: Sequence[np.ndarray]) -> None:
    """The I3D features behind the FVD: real (n, D), fake (n, D) float64 and video (n,) int64 (index into the JSON's
    videos), so FVDs over other chunk sets or against other runs' real features can be recomputed."""
    from safetensors.numpy import save_file

    rows = [(i, r, f) for i in range(len(real)) for r, f in zip(real[i], fake[i])]
    save_file({"real": np.ascontiguousarray(np.stack([r for _, r, _ in rows]), np.float64),
               "fake": np.ascontiguousarray(np.stack([f for _, _, f in rows]), np.float64),
               "video": np.array([i for i, _, _ in rows], np.int64)}, str(path))


def _csim_frames(gen: np.ndarray, ref_embedding, embedder: Callable) -> np.ndarray:
    """Per-frame cosine between the embedding of each generated frame's face and `ref_embedding` (NaN: no face)."""
    out = np.full(len(gen), np.nan)
    for f in range(len(gen)):
        e = embedder(gen[f])
        if e is not None:
            out[f] = metrics.cosine_similarity(e, ref_embedding)
    return out


def _nanmean(values) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else None


# --------------------------------------------------------------------------------------------- report


def markdown_report(result: dict) -> str:
    """Table I's layout (methods x PSNR↑ SSIM↑ LPIPS↓ CSIM↑ FVD↓ per dataset) with the paper's rows and ours
    (value and 95% interval), then the protocol and notes."""
    ours_ds = result["dataset"]
    datasets = list(dict.fromkeys([r[1] for r in PAPER_TABLE_I] + [ours_ds]))
    heads = {k: h for k, h, _, _ in metrics.TABLE_METRICS}
    decimals = {"lpips_alex": 3, **{k: d for k, _, d, _ in metrics.TABLE_METRICS}}
    paper: dict[str, dict[str, tuple]] = {}
    for r in PAPER_TABLE_I:
        paper.setdefault(r[0], {})[r[1]] = r[2:]

    def ours_cell(k: str) -> str:
        v = result["summary"].get(k)
        if v is None:
            return "-"
        text = f"{v:.{decimals[k]}f}"
        iv = result["ci95"].get(k)
        return text if iv is None else f"{text} [{iv[0]:.{decimals[k]}f}, {iv[1]:.{decimals[k]}f}]"

    top = ["Method"] + [f"{d} {heads[k]}" for d in datasets for k in TABLE_KEYS]
    lines = ["| " + " | ".join(top) + " |", "|" + "---|" * len(top)]
    for method, per_ds in paper.items():
        cells = [method]
        for d in datasets:
            vals = per_ds.get(d)
            cells += ["-"] * len(TABLE_KEYS) if vals is None else [
                f"{v:.{decimals[k]}f}" for k, v in zip(TABLE_KEYS, vals)]
        lines.append("| " + " | ".join(cells) + " |")
    ours = [f"**{result['method']} (this run)**"]
    for d in datasets:
        ours += [ours_cell(k) if d == ours_ds else "-" for k in TABLE_KEYS]
    lines.append("| " + " | ".join(ours) + " |")
    p = result["protocol"]
    extra = []
    for k, label in (("lpips_alex", "LPIPS-Alex"), ("csim_face_rate", "share of generated frames with a face")):
        if result["summary"].get(k) is not None:
            extra.append(f"- {label}: {ours_cell(k) if k != 'csim_face_rate' else _fmt_plain(result, k)}")
    body = [
        f"# {result['method']} on {ours_ds}: Table I protocol", "",
        *lines, "",
        f"Paper rows: {PAPER_TABLE_I_CITATION}. Ours: mean over chunks, [95% bootstrap interval over test videos].",
        "",
        *extra,
        (f"- {p['chunks']} chunks of {p['frames']} frames at stride {p['stride']} from {p['videos']} test videos; "
         f"split `{p['split_source']}` sha256 `{p['split_sha256'][:16]}`"),
        (f"- clothing mask mode `{p['mask_mode']}`; LPIPS networks {', '.join(p['lpips']) or 'none'}; "
         f"CSIM {'on' if p['csim'] else 'off'}; FVD {'on' if p['fvd'] else 'off'} (min {p['fvd_min_chunks']} chunks, "
         f"I3D fit `{p.get('fvd_fit', 'center_crop')}`)"),
        f"- sampler {p['sampler']}; bootstrap {p['bootstrap']} resamples, seed {p['bootstrap_seed']}",
        f"- checkpoint `{p['checkpoint']}`" + (" (random encoders: numbers are not meaningful)"
                                                 if p["random_encoders"] else ""),
    ]
    if result["notes"]:
        body += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(body) + "\n"


def _fmt_plain(result: dict, k: str) -> str:
    v, iv = result["summary"][k], result["ci95"].get(k)
    return f"{v:.3f}" + ("" if iv is None else f" [{iv[0]:.3f}, {iv[1]:.3f}]")


def collect_table(paths: Sequence[str | Path]) -> tuple[str, list[str]]:
    """(Markdown table, warnings) of several evaluate.py JSONs - one row per run (value [95% interval]), followed
    by the paper's row when the run's --method is a Table III/IV config name (`PAPER_ABLATIONS`). Runs evaluated
    on different test sets or with different protocol settings are flagged: their numbers are not comparable."""
    results = []
    for p in paths:
        try:
            r = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{p} is not an evaluate.py result ({e})") from None
        if "summary" not in r or "protocol" not in r:
            raise ValueError(f"{p} is not an evaluate.py result (no summary/protocol; older file? re-run evaluate)")
        results.append((Path(p), r))
    if not results:
        raise ValueError("--collect needs at least one results JSON")
    decimals = {k: d for k, _, d, _ in metrics.TABLE_METRICS}
    warnings = []
    for key in ("split_sha256", "frames", "stride", "mask_mode", "lpips", "random_encoders", "fvd_fit"):
        values = {json.dumps(r["protocol"].get(key)) for _, r in results}
        if len(values) > 1:
            warnings.append(f"runs differ in protocol.{key} ({', '.join(sorted(values))}): not comparable")
    head = ["Run"] + [h for _, h, _, _ in metrics.TABLE_METRICS] + ["chunks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, r in results:
        method = str(r.get("method") or path.stem)
        cells = [method]
        for k in TABLE_KEYS:
            v, iv = r["summary"].get(k), r.get("ci95", {}).get(k)
            cells.append("-" if v is None else f"{v:.{decimals[k]}f}" + (
                "" if iv is None else f" [{iv[0]:.{decimals[k]}f}, {iv[1]:.{decimals[k]}f}]"))
        lines.append("| " + " | ".join(cells + [str(r["protocol"].get("chunks", "-"))]) + " |")
        if method in PAPER_ABLATIONS:
            vals = PAPER_ABLATIONS[method]
            lines.append("| " + " | ".join([f"{method} (paper)"] + [
                f"{v:.{decimals[k]}f}" for k, v in zip(TABLE_KEYS, vals)] + [""]) + " |")
    text = "\n".join(lines) + "\n\nPaper rows: Tables III and IV of " + PAPER_TABLE_I_CITATION.rsplit(",", 1)[0]
    if warnings:
        text += "\n\n" + "\n".join(f"- warning: {w}" for w in warnings)
    return text + "\n", warnings


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="M2H .safetensors (e.g. OUTPUT_DIR/m2h_final.safetensors)")
    ap.add_argument("--data", help="prepare_data cache folder")
    ap.add_argument("--collect", nargs="+", metavar="JSON",
                    help="instead of evaluating: one table of several results JSONs (ablations), to stdout / "
                         "--markdown")
    ap.add_argument("--split", default="test", help="which list of CACHE/split.json (default: test)")
    ap.add_argument("--split-file", dest="split_file", help="a split.json or text file of video ids instead")
    ap.add_argument("--base")
    ap.add_argument("--clip-vision", dest="clip_vision")
    ap.add_argument("--random-encoders", action="store_true", help="random VAE/CLIP/LPIPS (tiny checkpoints, tests)")
    ap.add_argument("--vgg", help="vgg16-397923af.pth (LPIPS-VGG)")
    ap.add_argument("--lpips", help="lpips vgg.pth lin weights")
    ap.add_argument("--alexnet", help="alexnet-owt-7be5be79.pth (LPIPS-Alex, optional)")
    ap.add_argument("--lpips-alex", dest="lpips_alex", help="lpips alex.pth lin weights (LPIPS-Alex, optional)")
    ap.add_argument("--i3d", help="i3d_torchscript.pt (FVD)")
    ap.add_argument("--face-pack", default="antelopev2")
    ap.add_argument("--models", help="models folder: insightface/models/<pack>/ (CSIM) and vgg/, lpips/, fvd/ files")
    ap.add_argument("--no-csim", action="store_true")
    ap.add_argument("--no-fvd", action="store_true")
    ap.add_argument("--fvd-fit", dest="fvd_fit", choices=metrics.I3D_FITS, default=metrics.I3D_DEFAULT_FIT,
                    help="how a frame reaches I3D's square input: resize (default: the whole frame, head and feet "
                         "included), pad (aspect kept, black bars) or center_crop (StyleGAN-V's; cuts a 2:1 "
                         "portrait's head and feet)")
    ap.add_argument("--frames", type=int, default=16, help="frames per chunk N (FVD needs >= 10; default 16)")
    ap.add_argument("--stride", type=int, default=None,
                    help="frame stride (default: frame_stride of the run's train_config.json next to the "
                         "checkpoint, else 4 as in the paper)")
    ap.add_argument("--mask-mode", dest="mask_mode", choices=("inside", "zeroed"), default="inside")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--overlap", type=int, default=4, help="context-window overlap (chunks longer than the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    ap.add_argument("--bootstrap-seed", dest="bootstrap_seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--method", default="M2HVideo")
    ap.add_argument("--dataset-name", dest="dataset_name", default="UBC fashion",
                    help="column group of the table ('UBC fashion' / 'ASOS' sit beside the paper's numbers)")
    ap.add_argument("--out", help="results JSON (a Markdown report is written next to it)")
    ap.add_argument("--markdown", help="Markdown report path (default: --out with .md)")
    ap.add_argument("--save-frames", dest="save_frames",
                    help="also write every generated chunk as PNGs to DIR/<video>/<chunk>/ (to look at them)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.collect:
        try:
            text, warnings = collect_table(a.collect)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(text)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if a.markdown:
            Path(a.markdown).write_text(text)
        return 0
    if not a.checkpoint or not a.data:
        ap.error("--checkpoint and --data are required (or --collect JSON...)")
    try:
        evaluate(a)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
