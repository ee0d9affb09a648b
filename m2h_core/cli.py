"""The `m2h` command: `m2h demo`, `m2h generate`, `m2h batch`, `m2h regen-mask`, `m2h composite`, `m2h doctor`
(also `python -m m2h_core ...`)."""

from __future__ import annotations

import argparse
import os
import sys

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _add_generate(sub) -> None:

    p = sub.add_parser("generate", help="mannequin video + identity photo -> human video")
    p.add_argument("--video", required=True, help="mannequin video (mp4/webm/gif/folder of frames)")
    p.add_argument("--identity", required=True, nargs="+",
                   help="photo(s) of the person: one, several (1-8, the same person) or a folder")
    p.add_argument("--out", required=True, help="output video (.mp4/.webm/.gif, or a folder for PNGs)")
    p.add_argument("--masks", help="clothing masks (folder/video/.npy, the video's framing) instead of the parser")
    p.add_argument("--poses", help="pose video/folder (the video's framing) instead of running DWPose")
    p.add_argument("--frames", type=int, default=None, help="use at most this many frames")
    _add_common(p)
    _add_zero_shot(p)


def _add_zero_shot(p) -> None:
    """`m2h generate --zero-shot`: public files instead of an M2H checkpoint (docs/zero-shot.md)."""
    z = p.add_argument_group("zero-shot mode (no M2H checkpoint; --base is the SD-1.5 checkpoint)")
    z.add_argument("--zero-shot", action="store_true",
                   help="redraw only the person with SD-1.5 + AnimateDiff + ControlNet OpenPose + IP-Adapter FaceID; "
                        "garment lock and keep background always on")
    z.add_argument("--ip-adapter", help="IP-Adapter FaceID / FaceID-PlusV2 / Plus-Face file (models/ipadapter)")
    z.add_argument("--motion", help="AnimateDiff motion module v2 or v3 (models/animatediff_models)")
    z.add_argument("--controlnet", help="ControlNet 1.1 OpenPose (models/controlnet)")
    z.add_argument("--ip-lora", help="the FaceID LoRA (models/loras) when the IP-Adapter file does not carry it")
    z.add_argument("--lora-strength", type=float, default=0.6, help="FaceID LoRA strength (default 0.6)")
    z.add_argument("--mask-mode", default="latent_blend", choices=["latent_blend", "differential"],
                   help="how the regenerate mask's soft edge is used (default latent_blend)")


def _models_dirs(a) -> list[str]:
    """--models-dir folders, then $M2H_MODELS."""
    return a.models_dir + ([os.environ["M2H_MODELS"]] if os.environ.get("M2H_MODELS") else [])


def _sampler_settings(a):
    """The sampling options `m2h generate` (M2H or zero-shot) and `m2h batch` share, checked where they are made."""
    from .inference.sampler import SamplerSettings

    return SamplerSettings(steps=a.steps, guidance_scale=a.cfg, scheduler=a.scheduler, seed=a.seed,
                           context_frames=a.context, context_overlap=a.overlap, chunk_frames=a.chunk_frames,
                           batch_cfg=a.batch_cfg, pose_strength=a.pose_strength,
                           identity_strength=a.identity_strength)


def _add_common(p) -> None:
    """Model, preprocessing, sampling and compositing options `m2h generate` and `m2h batch` share."""
    from .inference import defaults as d

    p.add_argument("--checkpoint", help="M2H checkpoint (.safetensors); required unless --zero-shot")
    p.add_argument("--base", help="SD-1.5 checkpoint for the VAE (unless the M2H checkpoint embeds it)")
    p.add_argument("--clip-vision", help="CLIP image encoder: ViT-L/14 for an M2H checkpoint (unless embedded); "
                   "ViT-H/14 for --zero-shot with FaceID-PlusV2 / Plus-Face")
    p.add_argument("--models-dir", action="append", default=[],
                   help="folder(s) with DWPose / parsing / insightface files (also $M2H_MODELS)")
    p.add_argument("--parser", default="auto", help="parsing model file/folder name (default: first found)")
    p.add_argument("--face-pack", default="antelopev2", help="insightface pack (antelopev2 or buffalo_l)")
    p.add_argument("--steps", type=int, default=d.STEPS, help=f"denoising steps (default {d.STEPS}, the paper's)")
    p.add_argument("--cfg", type=float, default=d.GUIDANCE_SCALE,
                   help=f"classifier-free guidance scale (default {d.GUIDANCE_SCALE}; 1 = off)")
    p.add_argument("--scheduler", default=d.SCHEDULER, choices=list(d.SCHEDULERS))
    p.add_argument("--seed", type=int, default=d.SEED)
    p.add_argument("--pose-strength", type=float, default=d.POSE_STRENGTH,
                   help=f"scale of the pose encoder's residual (default {d.POSE_STRENGTH:g}, the paper's; 0..2)")
    p.add_argument("--identity-strength", type=float, default=d.IDENTITY_STRENGTH,
                   help=f"scale of the adapter's identity branch after its re-normalisation (default "
                        f"{d.IDENTITY_STRENGTH:g}, the paper's; 0..2)")
    p.add_argument("--context", type=int, default=d.CONTEXT_FRAMES_AUTO,
                   help="frames the model sees at once (default: the frame count the model was trained with)")
    p.add_argument("--overlap", type=int, default=d.CONTEXT_OVERLAP, help="frames shared by neighbouring windows")
    p.add_argument("--chunk-frames", type=int, default=d.CHUNK_FRAMES,
                   help=f"at most this many frames per UNet call (default {d.CHUNK_FRAMES}): windows grouped, spatial "
                        "layers once per frame; lower it to save memory, 0 or <= --context: one window per call")
    p.add_argument("--batch-cfg", action=argparse.BooleanOptionalAction, default=d.BATCH_CFG,
                   help="guidance's conditional and unconditional passes as one UNet call (2x the memory per call) "
                        f"or as two (same result; default {'--batch-cfg' if d.BATCH_CFG else '--no-batch-cfg'})")
    p.add_argument("--garment-lock", action="store_true",
                   help="keep the source video's own garment pixels inside the (eroded) clothing mask, seam blended")
    p.add_argument("--keep-background", action="store_true",
                   help="keep the source video's pixels outside the generated person (the shop's background)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--precision", default="fp16" if _cuda() else "fp32", choices=sorted(DTYPES))


def _add_batch(sub) -> None:

    p = sub.add_parser("batch", help="run every job of a jobs.csv (video, identity, output, ...) with models "
                                     "loaded once; several processes via accelerate launch")
    p.add_argument("--jobs", required=True, help="CSV with columns video, identity, output (optional: masks, poses, "
                                                 "frames, steps, cfg, seed, scheduler, context, overlap, garment_lock, "
                                                 "keep_background)")
    p.add_argument("--failed", help="where failed jobs are listed (default: failed.csv next to the job list)")
    _add_common(p)


def _add_any_generator(sub) -> None:
    """`m2h regen-mask` and `m2h composite`: the garment lock and keep-background around any generator."""
    from .inference.compositing import SEAMS

    r = sub.add_parser("regen-mask", help="the mask of what any generator should redraw on a mannequin video "
                                          "(bare body + head room, never the garment), and the garment lock mask")
    r.add_argument("--video", required=True, help="mannequin video (mp4/webm/gif/folder of frames)")
    r.add_argument("--out", required=True, help="regenerate mask video (white = redraw; .mp4/.webm/.gif or a folder)")
    r.add_argument("--lock-out", help="also write the lock mask (white = the garment M2H Composite keeps)")
    r.add_argument("--preview-out", help="also write a preview (redraw red, lock green)")
    r.add_argument("--masks", help="your clothing masks (folder/video/.npy/image) instead of the parser's")
    r.add_argument("--person-masks", help="your mannequin silhouette masks instead of the parser's (with --masks: "
                                          "no parsing model needed)")
    r.add_argument("--keypoints", default="dwpose",
                   help="'dwpose' (run DWPose from --models-dir), an OpenPose JSON file (one frame dict per video "
                        "frame), or 'none' (no head region from the pose)")
    r.add_argument("--clothing", default=None, help="clothing groups, comma-separated (default: all garments)")
    r.add_argument("--head-scale", type=float, default=1.3, help="head region width / the head width from the pose")
    r.add_argument("--hair-margin", type=float, default=0.35, help="head region raised by this many head widths")
    r.add_argument("--grow-into-garment", type=int, default=None,
                   help="px the region reaches into the garment's edge (default 4 at 512 px high, scaled)")
    r.add_argument("--feather", type=int, default=0, help="soft edge of the regenerate mask in px (0 = hard)")
    r.add_argument("--temporal-window", type=int, default=3, help="frames the masks are voted over (1 = off)")
    c = sub.add_parser("composite", help="garment lock / keep background on another generator's video")
    c.add_argument("--generated", required=True, help="the generated video (any size: the source is fitted to it)")
    c.add_argument("--source", required=True, help="the mannequin video it was generated from")
    c.add_argument("--out", required=True, help="output video (source fps; .mp4/.webm/.gif or a folder)")
    c.add_argument("--lock-masks", help="lock masks from `m2h regen-mask --lock-out` (else the parser finds the "
                                        "garment on the source)")
    c.add_argument("--garment-lock", action="store_true", help="keep the source's garment pixels")
    c.add_argument("--keep-background", action="store_true", help="keep the source's background")
    c.add_argument("--seam", default="poisson", choices=list(SEAMS), help="how the seam is blended")
    for p in (r, c):
        p.add_argument("--models-dir", action="append", default=[],
                       help="folder(s) with parsing / DWPose files (also $M2H_MODELS)")
        p.add_argument("--parser", default="auto", help="parsing model file/folder name (default: first found)")


def _regen_mask(a) -> int:
    from .inference.any_generator import regen_mask_files
    from .inference.regen_mask import RegenMaskSettings
    from .pose_render import load_openpose_json

    from .inference.inputs import must_exist

    must_exist(a.video, "the mannequin video")  # the inputs before any model
    dirs = _models_dirs(a)
    keypoints, detect, parser, notes = None, None, None, []
    if a.keypoints not in ("dwpose", "none"):
        keypoints = load_openpose_json(a.keypoints)
    if a.keypoints == "dwpose" or not (a.masks and a.person_masks):
        from .inference.generate import Preprocessors, detect_poses  # the models only when they are used

        models = Preprocessors(dirs)
        if a.keypoints == "dwpose":
            def detect(frames, fps):
                return detect_poses(frames, fps, dirs, notes, models)[1]
        if not (a.masks and a.person_masks):
            parser = models.parser(a.parser)
    grow = {} if a.grow_into_garment is None else {"grow_into_garment": a.grow_into_garment}
    settings = RegenMaskSettings.for_height(_first_height(a.video), head_scale=a.head_scale,
                                            hair_margin=a.hair_margin, feather=a.feather,
                                            temporal_window=a.temporal_window, **grow)
    groups = [g.strip() for g in a.clothing.split(",") if g.strip()] if a.clothing else None
    rep = regen_mask_files(a.video, a.out, settings, parser=parser, clothing_masks=a.masks,
                           person_masks=a.person_masks, keypoints=keypoints, detect_poses=detect, groups=groups,
                           lock_out=a.lock_out, preview_out=a.preview_out)
    for note in notes + rep.notes:
        print("note:", note, file=sys.stderr)
    print(f"wrote {rep.out}: {rep.num_frames} frames, {rep.width}x{rep.height} (WxH), {rep.fps:g} fps")
    return 0


def _first_height(video: str) -> int:
    """The first frame's height (the pixel settings scale with it)."""
    from .video_io import FrameStream

    return int(next(iter(FrameStream(video, max_frames=1))).shape[0])


def _composite(a) -> int:
    from .inference.any_generator import composite_files
    from .inference.compositing import CompositeSettings
    from .inference.generate import Preprocessors

    if not (a.garment_lock or a.keep_background):
        raise ValueError("nothing to do: give --garment-lock and/or --keep-background")
    from .inference.inputs import must_exist

    must_exist(a.generated, "the generated video")  # the inputs before any model
    must_exist(a.source, "the source video")
    dirs = _models_dirs(a)
    parser = Preprocessors(dirs).parser(a.parser)
    height = _first_height(a.generated)
    settings = CompositeSettings.for_height(height, a.garment_lock, a.keep_background, a.seam)
    rep = composite_files(a.generated, a.source, a.out, settings, parser, a.lock_masks)
    for note in rep.notes:
        print("note:", note, file=sys.stderr)
    print(f"wrote {rep.out}: {rep.num_frames} frames, {rep.width}x{rep.height} (WxH), {rep.fps:g} fps")
    return 0


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a tiny M2H model on synthetic clips and animate a mannequin (CPU)")
    p.add_argument("--out", default="m2h_demo_out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a much shorter run (a smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-vae", action="store_true",
                   help="train the tiny VAE here instead of loading the pretrained one shipped in m2h_core/demo/assets")
    p.add_argument("--train-steps", type=int, default=None,
                   help="steps of the model trained here (default 300; the shipped pretrained model: 8000 at twice the "
                        "widths)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="do not sample the pretrained tiny M2H model shipped in m2h_core/demo/assets")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: all cores, one when the machine is already busy)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="m2h", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_generate(sub)
    _add_batch(sub)
    _add_any_generator(sub)
    d = sub.add_parser("doctor", help="list every model file the pack can use and where it looked")
    d.add_argument("--models-dir", action="append", default=[])
    d.add_argument("--check", nargs="+", default=None, metavar="FILE",
                   help="only say what these weight files are and whether their headers match the published layout")
    a = ap.parse_args(argv)
    if a.command in ("generate", "batch") and not a.checkpoint and not getattr(a, "zero_shot", False):
        ap.error("the following arguments are required: --checkpoint (or --zero-shot with public files)")
    if a.command == "doctor":
        from .preprocess.model_files import doctor, format_doctor
        from .public_doctor import check_file, format_public_report, scan_public_files

        if a.check:
            for f in a.check:
                print(f"{f}: {check_file(f).note}")
            return 0
        print(format_doctor(doctor(a.models_dir)))
        print()
        print(format_public_report(scan_public_files(a.models_dir)))
        return 0
    if a.command == "demo":
        from .demo.run import run_demo
        from .demo.run import DemoSettings

        settings = DemoSettings.quick() if a.quick else DemoSettings()
        if a.train_vae:
            settings.vae_source = "train"
        if a.no_pretrained:
            settings.pretrained = False
        if a.train_steps is not None:
            settings.train_steps = a.train_steps
        report = run_demo(a.out, quick=a.quick, seed=a.seed, device=a.device, settings=settings, threads=a.threads)
        print(_demo_summary(report))
        return 0
    if a.command == "batch":
        return _batch(a)
    if a.command == "regen-mask":
        return _regen_mask(a)
    if a.command == "composite":
        return _composite(a)
    return _generate(a)


def _demo_summary(report) -> str:
    m = report.metrics
    lines = [f"demo finished in {report.seconds:.0f} s; files in {report.out_dir}:"]
    for name in ("video", "contact_sheet", "identity_sheet", "checkpoint", "metrics_json", "readme"):
        if getattr(report, name, None) is not None:
            lines.append(f"  {name:14s} {getattr(report, name)}")
    hm = m.get("heldout_mean", {})
    names = [n for n in ("pretrained", "trained", "untrained", "vae_ceiling") if n in hm]
    if names:
        lines.append(f"held-out mean of {hm[names[0]]['cases']} pairs (trained = trained here):")
        lines.append(f"  {'metric':24s}" + "".join(f"{n:>12s}" for n in names))
        for k in ("clothing_psnr", "clothing_ssim", "head_psnr", "background_psnr"):
            lines.append(f"  {k:24s}" + "".join(f"{hm[n][k]:12.3f}" for n in names))
    ident = m.get("identity") or {}
    if ident:
        lines.append(f"identity ({ident.get('model')} model, {ident['people']} people): face colour r "
                     f"{ident['face_colour_correlation']:.3f}, hair colour r {ident['hair_colour_correlation']:.3f}")
    return "\n".join(lines)


def _generate(a) -> int:
    if a.zero_shot:
        return _generate_zero_shot(a)
    import torch

    from .inference.generate import GenerateRequest, ModelFiles, generate

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" of the parsing model: noise to a user of this command
    files = ModelFiles(a.checkpoint, a.base, a.clip_vision, a.device, getattr(torch, DTYPES[a.precision]))
    settings = _sampler_settings(a)
    dirs = _models_dirs(a)
    identity = a.identity[0] if len(a.identity) == 1 else a.identity
    req = GenerateRequest(a.video, identity, a.out, a.masks, a.poses, a.frames, a.parser, a.face_pack, dirs,
                          a.garment_lock, a.keep_background)
    with _ProgressBar("sampling") as bar:
        report = generate(files, req, settings, progress=bar.update)
    for note in report.notes:
        print("note:", note, file=sys.stderr)
    print(f"wrote {report.out}: {report.num_frames} frames, {report.size}, {report.fps:g} fps")
    return 0


def _generate_zero_shot(a) -> int:
    import torch

    from .inference.generate import GenerateRequest
    from .inference.zero_shot_generate import generate_zero_shot
    from .inference.zero_shot_loader import PublicFiles

    if not a.base or not a.ip_adapter:
        raise ValueError("--zero-shot needs --base (an SD-1.5 checkpoint) and --ip-adapter (IP-Adapter FaceID); "
                         "--motion and --controlnet are strongly advised (docs/zero-shot.md)")
    files = PublicFiles(base=a.base, ip_adapter=a.ip_adapter, motion=a.motion, controlnet=a.controlnet,
                        ip_lora=a.ip_lora, clip_vision=a.clip_vision, lora_strength=a.lora_strength)
    settings = _sampler_settings(a)
    dirs = _models_dirs(a)
    identity = a.identity[0] if len(a.identity) == 1 else a.identity
    req = GenerateRequest(a.video, identity, a.out, a.masks, a.poses, a.frames, a.parser, a.face_pack, dirs)
    with _ProgressBar("sampling") as bar:
        report = generate_zero_shot(files, req, settings, a.mask_mode, a.device, getattr(torch, DTYPES[a.precision]),
                                    progress=bar.update)
    for note in report.notes:
        print("note:", note, file=sys.stderr)
    print(f"wrote {report.out}: {report.num_frames} frames, {report.size}, {report.fps:g} fps (zero-shot)")
    return 0


def _batch(a) -> int:
    import torch

    from .inference.batch import distributed, run_batch
    from .inference.generate import ModelFiles

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    state = distributed(cpu=a.device == "cpu")
    device = str(state.device) if a.device != "cpu" and state.num_processes > 1 else a.device
    files = ModelFiles(a.checkpoint, a.base, a.clip_vision, device, getattr(torch, DTYPES[a.precision]))
    settings = _sampler_settings(a)
    dirs = _models_dirs(a)
    defaults = {"parser": a.parser, "face_pack": a.face_pack, "search_dirs": dirs, "garment_lock": a.garment_lock,
                "keep_background": a.keep_background}
    tag = f"[{state.process_index}/{state.num_processes}] " if state.num_processes > 1 else ""

    def on_job(what: str, job) -> None:
        print(f"{tag}{what}: row {job.row} -> {job.output}", flush=True)

    report = run_batch(a.jobs, files, defaults, settings, failed_csv=a.failed, state=state, on_job=on_job)
    print(f"{tag}{len(report.done)} done, {len(report.skipped)} already done, {len(report.failed)} failed"
          + (f" (listed in {a.failed or os.path.join(os.path.dirname(a.jobs), 'failed.csv')})" if report.failed
             else ""), flush=True)
    return 0 if not report.failed else 1


class _ProgressBar:
    """A tqdm bar made at the first step and always closed on the way out, so an error prints on its own line."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step")
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def entry() -> int:
    """Console entry point: known input problems print one clear line instead of a traceback."""
    from .checkpoint import CheckpointError
    from .inference.sampler import SamplingCancelled, SamplingError

    try:
        return main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, CheckpointError, SamplingCancelled, SamplingError) as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        print(f"m2h: error: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(entry())
