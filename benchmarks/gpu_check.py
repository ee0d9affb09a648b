"""One prepared GPU check (issue 30): random weights at real shapes, `key=value` lines; sized for under 8 minutes
on one 80 GB GPU (not yet run on one: docs/REPRODUCE.md, section 10).

    python benchmarks/gpu_check.py                 # GPU: SD-1.5 shapes at 512x256 (the paper's size)
    python benchmarks/gpu_check.py --small         # CPU smoke run: tiny preset at 64x32 (tests/test_gpu_check.py)

What it prints (every figure is measured here; `est_*` are the preflight's estimates, printed beside them):

* sampler: per-denoising-step wall time (median of the gaps between step callbacks) and peak memory of a whole
  `sample_video` call (decode included) for 16 / 64 / 256 frames, ours vs diffusers' `AnimateDiffPipeline` with
  FreeNoise windows of the same length and stride on a UNet of the same shapes (`bench_sampler.diffusers_pipeline`),
  DDIM, CFG 7.5; `sampler_step_ratio_N` and `sampler_mem_ratio_N` are ours / diffusers' (< 1 is better).
  GPU: fp16 weights, peak = torch.cuda.max_memory_allocated; CPU: float32, peak = process peak RSS.
* train: `train.py --preflight` (`training.preflight.run_preflight`, measure mode) at the paper's batch 4 per GPU,
  8 frames, 512x256, bf16 with gradient checkpointing, both resolution phases: `train_step_s_full`,
  `train_peak_mem_gib` against `est_peak_mem_gib` / `est_step_s_full_<gpu>`; the mirror/diffusion gradient ratio
  for each reading of Eq. 4/6 (`grad_ratio_normalized`, `_literal`, `_paper`); the face-crop vs full-frame decode
  gap with this preset's VAE (SD-1.5-shaped; random weights, so the gap is an upper bound's shape, not a trained
  VAE's figure).
* decoder (GPU only): SD-1.5 VAE decode + VGG forward/backward for one 512x256 frame, full vs face crop
  (`bench_train_step.bench_decoder_sd15`).

Sections run one after another; one that fails prints `<section>_error=...` and the others still run.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sampler

from m2h_core.config import preset
from m2h_core.inference.encoders import FrozenEncoders
from m2h_core.inference.inputs import IdentityInputs, VideoInputs
from m2h_core.inference.sampler import SamplerSettings, sample_video
from m2h_core.models.m2h import M2HModel


def emit(key: str, value) -> None:
    text = f"{value:.4g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else value
    print(f"{key}={text}", flush=True)


class PeakMemory:
    """Peak memory of a block in GiB: CUDA's max allocated (and the growth over what was allocated before), or the
    process's peak RSS on a CPU (Linux: the window is reset with /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            bench_sampler.reset_peak_rss()
            self.base = bench_sampler.peak_rss_kib() * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = bench_sampler.peak_rss_kib() * 1024
        self.peak_gib, self.growth_gib = peak / 2**30, (peak - self.base) / 2**30


def _inputs(cfg, n: int) -> tuple[VideoInputs, IdentityInputs]:
    g = torch.Generator().manual_seed(0)
    h, w = cfg.height, cfg.width
    frames = torch.rand(n, 3, h, w, generator=g)
    masks = (torch.rand(n, h, w, generator=g) > 0.5).float()
    ident = torch.rand(3, h, w, generator=g)
    return VideoInputs(frames, masks, frames.flip(1)), IdentityInputs(ident, ident.clone(), torch.randn(512, generator=g))


def _ours(model, enc, video, ident, settings, progress) -> None:
    sample_video(model, enc, video, ident, settings=settings, progress=progress)


def _median_step(run) -> float:
    """Median gap between consecutive step callbacks of one call (the first step's warm-up is not a gap)."""
    stamps: list[float] = []
    run(lambda *_: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps) if gaps else float("nan")


def check_sampler(cfg, frames: list[int], steps: int, device: torch.device, dtype: torch.dtype,
                  diffusers: bool) -> None:
    context, overlap = cfg.num_frames, min(4, cfg.num_frames - 1)
    emit("sampler_setup", f"{cfg.height}x{cfg.width} windows {context} stride {context - overlap} DDIM "
         f"{steps} steps CFG 7.5 dtype {str(dtype).replace('torch.', '')}")
    torch.manual_seed(0)
    with device:  # random init straight on the device (an SD-1.5 UNet takes long on a CPU)
        model = M2HModel(cfg).eval()
        enc = FrozenEncoders.random(cfg)
    model.to(device, dtype)
    enc.to(device, dtype)
    pipe = None
    if diffusers:
        with device:
            pipe = bench_sampler.diffusers_pipeline(cfg, context, overlap)
        pipe.to(device=device, dtype=dtype)
    settings = SamplerSettings(steps=steps, context_frames=context, context_overlap=overlap)
    sample_video(model, enc, *_inputs(cfg, context), settings=SamplerSettings(steps=1, context_frames=context))
    failed = 0
    for n in frames:
        video, ident = _inputs(cfg, n)
        runs = {"ours": partial(_ours, model, enc, video, ident, settings)}
        if pipe is not None:
            runs["diffusers"] = partial(bench_sampler.run_diffusers, pipe, cfg, n, steps, "np")
        got = {}
        for who, run in runs.items():
            try:  # e.g. out of memory at 256 frames: the other figures still count
                with PeakMemory(device) as mem:
                    step = _median_step(run)
            except Exception as e:  # noqa: BLE001
                failed += 1
                emit(f"sampler_error_{n}_{who}", " ".join(f"{type(e).__name__}: {e}".split())[:200])
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            got[who] = (step, mem.peak_gib)
            emit(f"sampler_step_s_{n}_{who}", step)
            emit(f"sampler_peak_gib_{n}_{who}", mem.peak_gib)
            emit(f"sampler_growth_gib_{n}_{who}", mem.growth_gib)
        if len(got) == 2:
            emit(f"sampler_step_ratio_{n}", got["ours"][0] / got["diffusers"][0])
            emit(f"sampler_mem_ratio_{n}", got["ours"][1] / got["diffusers"][1])
    model = enc = pipe = None  # free the device for the next section
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if failed:
        raise RuntimeError(f"{failed} sampler run(s) failed (sampler_error_* above)")


def check_train(preset_name: str, size: tuple[int, int], batch: int, frames: int, device: torch.device,
                out_dir: Path, progressive: bool = True, estimate: bool = True) -> None:
    """The preflight (measure mode) on synthetic clips at the given size; its figures under train_* / est_*.
    estimate=False: only its measuring half (`preflight.measure`; the meta-device count takes a while on a CPU)."""
    from accelerate import Accelerator

    from m2h_core.demo.synthetic import generate_dataset
    from m2h_core.training.config import TrainConfig
    from m2h_core.training.dataset import SyntheticClipDataset
    from m2h_core.training.preflight import REFERENCE_GPUS, PreflightOptions, measure, run_preflight
    from m2h_core.training.trainer import Trainer

    cuda = device.type == "cuda"
    tc = TrainConfig.from_dict({
        "preset": preset_name, "random_init": True, "synthetic_clips": batch, "height": size[0], "width": size[1],
        "num_frames": frames, "frame_stride": 1, "batch_size": batch, "max_steps": 27500,
        "mixed_precision": "bf16" if cuda else "no", "gradient_checkpointing": cuda, "progressive": progressive,
        "output_dir": str(out_dir)})
    # clips drawn small and resized by the dataset (the costs do not depend on the pixels); a face mask is real
    clips = generate_dataset(batch, 0, n_frames=max(frames, 8), height=128, width=64)
    dataset = SyntheticClipDataset(clips, num_frames=frames, stride=1, height=size[0], width=size[1])

    def factory(c: TrainConfig) -> Trainer:
        return Trainer(c, dataset=dataset, accelerator=Accelerator(mixed_precision=c.mixed_precision, cpu=not cuda))

    opts = PreflightOptions(steps=1, mode="measure", out=str(out_dir / "preflight.json"))
    if estimate:
        report = run_preflight(tc, opts, trainer_factory=factory, log=lambda s: None)
    else:
        report = measure(tc, opts, factory, log=lambda s: None)
    name = torch.cuda.get_device_name(device).lower() if cuda else ""
    gpu = next((g for g in REFERENCE_GPUS if g.split("_")[0] in name), None)  # e.g. "h100" in "nvidia h100 ..."
    emit("train_setup", f"{preset_name} {size[0]}x{size[1]} batch {batch} frames {frames} "
         f"{tc.mixed_precision} checkpointing {tc.gradient_checkpointing}")
    for key, src in (("train_step_s_half", "step_s_half"), ("train_step_s_full", "step_s_full"),
                     ("train_peak_mem_gib", "peak_mem_gib"), ("train_peak_mem_kind", "peak_mem_kind"),
                     ("est_peak_mem_gib", "est_peak_mem_gib"), ("est_step_tflops_full", "est_step_tflops_full"),
                     ("grad_ratio_normalized", "grad_ratio_normalized"), ("grad_ratio_literal", "grad_ratio_literal"),
                     ("grad_ratio_paper", "grad_ratio_paper"), ("crop_vs_full_face_rmse", "crop_vs_full_face_rmse"),
                     ("crop_vs_full_face_psnr_db", "crop_vs_full_face_psnr_db"),
                     ("crop_vs_full_loss_rel", "crop_vs_full_loss_rel"), ("train_loss_finite", "loss_finite")):
        emit(key, report.get(src, "n/a (no estimate)"))
    if gpu and estimate:
        emit(f"est_step_s_full_{gpu}", report[f"est_step_s_full_{gpu}"])
    if estimate and cuda:
        emit("train_peak_vs_estimate", report["peak_mem_gib"] / report["est_peak_mem_gib"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny preset at 64x32 on the CPU (a smoke run, seconds)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--frames", default=None, help="sampler frame counts, comma-separated (default 16,64,256)")
    ap.add_argument("--steps", type=int, default=3, help="denoising steps per sampler call (the median gap is timed)")
    ap.add_argument("--no-diffusers", action="store_true", help="skip diffusers' pipeline")
    ap.add_argument("--skip", default="", help="sections to skip, comma-separated: sampler,train,decoder")
    ap.add_argument("--out", default="/tmp/m2h_gpu_check", help="folder for the preflight's JSON")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-estimate", action="store_true",
                    help="train: measure only, without the preflight's meta-device estimate (a quicker CPU run)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if a.small:
        name, size, frames, batch, train_frames = "tiny", (64, 32), [8, 16], 1, 4
    else:
        name, size, frames, batch, train_frames = "sd15", (512, 256), [16, 64, 256], 4, 8
    if a.frames:
        frames = [int(v) for v in a.frames.split(",")]
    cfg = preset(name)
    cfg.height, cfg.width = size
    emit("device", f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    emit("torch", torch.__version__)
    emit("preset", name)
    t_all = time.perf_counter()
    sections = {
        "sampler": lambda: check_sampler(cfg, frames, a.steps, device, torch.float16 if cuda else torch.float32,
                                         not a.no_diffusers),
        "train": lambda: check_train(name, size, batch, train_frames, device, Path(a.out),
                                     progressive=not a.small, estimate=not a.no_estimate),
    }
    if cuda and not a.small:
        def decoder() -> None:
            import bench_train_step

            for k, v in bench_train_step.bench_decoder_sd15("cuda").items():
                emit(k, v)
        sections["decoder"] = decoder
    failed = 0
    for sec, fn in sections.items():
        if sec in skip:
            continue
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one section's failure must not hide the others' figures
            failed += 1
            emit(f"{sec}_error", " ".join(f"{type(e).__name__}: {e}".split())[:300])
            traceback.print_exc(file=sys.stderr)
        emit(f"{sec}_s", time.perf_counter() - t0)
        if cuda:
            torch.cuda.empty_cache()
    emit("total_s", time.perf_counter() - t_all)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
