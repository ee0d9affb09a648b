"""Mutation check: do the tests notice typical bugs in central places? (issues 17, 32; the mutant runs are not part
of CI, but tests/test_mutation_needles.py checks in CI that every needle still matches the code)

Each mutant is a small text patch (file, needle, replacement) that introduces a bug the test suite must catch.
The script copies the working tree (tracked and untracked, not ignored: `git ls-files --cached --others
--exclude-standard`, so `.venv`, `.git` and build outputs stay behind) to a temporary folder, runs the
unmutated tests there once (a "killed" means nothing for a test that fails anyway: such tests are left out of
the mutant runs, with a warning; --strict stops instead), then for each mutant patches the copy, runs the
mutant's test files (or the whole suite with --all) and restores the file. The repository itself is never
written to.

    python benchmarks/mutation_check.py                 # every mutant, its own test files
    python benchmarks/mutation_check.py --all           # every mutant, the whole suite (slow)
    python benchmarks/mutation_check.py -k lpips -k cfg # mutants whose name contains a word
    python benchmarks/mutation_check.py --check-needles # only report needles that no longer match the code
    python benchmarks/mutation_check.py -k window --tests tests/test_sampler.py --every  # what one file catches
    python benchmarks/mutation_check.py --list

One line per mutant: `killed` (with the first failing test), `SURVIVED`, `STALE` (a needle is missing or not
unique: the code changed, update the mutant) or `timeout`. The exit status is 1 when a mutant survived or is stale.
A mutant may list alternative patch sets (`variants`); the first whose needles all match is applied.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

Patch = tuple[str, str, str]  # (file relative to the repository root, needle, replacement)


@dataclass
class Mutant:
    name: str
    why: str
    variants: list[list[Patch]]
    tests: list[str] = field(default_factory=list)


def m(name: str, why: str, tests: list[str], *variants: list[Patch]) -> Mutant:
    return Mutant(name, why, list(variants), tests)


SAMPLER = "m2h_core/inference/sampler.py"
METRICS = "m2h_core/metrics.py"
MIRROR = "m2h_core/training/mirror_loss.py"
TRAINER = "m2h_core/training/trainer.py"
STATE = "m2h_core/training/state.py"
VGG_LPIPS_LOOP = ("diff = (_unit_normalize(fx[name].float()) - _unit_normalize(fy[name].float())).pow(2)\n"
                  '            layer = (diff * getattr(self, f"lin{k}")).sum(dim=1, keepdim=True)\n'
                  "            total = total + ")
T_SAMPLER = ["tests/test_context_windows.py", "tests/test_sampler.py"]
T_TRAIN = ["tests/test_train.py", "tests/test_mirror_loss.py"]
T_NODES = ["tests/test_nodes.py", "tests/test_inputs.py"]
VIDEO_IO = "m2h_core/video_io.py"
FACE = "m2h_core/preprocess/face.py"
DATASET = "m2h_core/training/dataset.py"
ENCODERS = "m2h_core/inference/encoders.py"
T_AUDIO = ["tests/test_audio.py"]
T_FACE = ["tests/test_small_face.py", "tests/test_multi_photo.py"]
T_DATA = ["tests/test_short_clips.py", "tests/test_dataset.py"]
T_OPTIONS = ["tests/test_options.py"]
T_BOUNDARY = ["tests/test_model_boundaries.py"]
CLI_SETTINGS = (  # cli._sampler_settings: the sampling options of m2h generate (M2H and zero-shot) and m2h batch
    '    return SamplerSettings(steps=a.steps, guidance_scale=a.cfg, scheduler=a.scheduler, seed=a.seed,\n'
    '                           context_frames=a.context, context_overlap=a.overlap, chunk_frames=a.chunk_frames,\n'
    '                           batch_cfg=a.batch_cfg, pose_strength=a.pose_strength,\n'
)

MUTANTS: list[Mutant] = [
    # -- the rows of issue 17 -------------------------------------------------------------------------------------
    m("window-weights-all-1", "context-window blend weights all 1", T_SAMPLER,
      [(SAMPLER, "    w = torch.ones(n)\n    if index[0] > 0:", "    return torch.ones(n)\n    if index[0] > 0:")]),
    m("windows-without-overlap", "context windows ignore the overlap", T_SAMPLER,
      [(SAMPLER, "stride = length - overlap", "stride = length")]),
    m("v-to-eps-sign", "sign flipped in the v -> eps conversion feeding the mirror loss", T_TRAIN,
      [(TRAINER, "eps = ab.sqrt() * eps + (1 - ab).sqrt() * z_t", "eps = ab.sqrt() * eps - (1 - ab).sqrt() * z_t")],
      [(MIRROR, "a.sqrt() * v_pred.to(a.dtype) + (1 - a).sqrt() * z_t.to(a.dtype)",
        "a.sqrt() * v_pred.to(a.dtype) - (1 - a).sqrt() * z_t.to(a.dtype)")]),
    m("mirror-weights-wrong-clip", "per-clip mirror weights applied to the wrong clip", T_TRAIN,
      [(MIRROR, "w_frame = w_clip.repeat_interleave(f)", "w_frame = w_clip.flip(0).repeat_interleave(f)")]),
    m("resume-without-lr-schedule", "resume does not restore the lr schedule",
      ["tests/test_train.py", "tests/test_checkpoint.py"],
      [(STATE, 'trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])', "pass")]),
    m("lpips-first-layer-only", "LPIPS uses only relu1_2", ["tests/test_metrics.py"],
      [(METRICS, "for k, name in enumerate(LPIPS_LAYERS):", "for k, name in enumerate(LPIPS_LAYERS[:1]):")]),
    m("node-swaps-frames-and-poses", "the sampler node swaps clothing frames and pose images", T_NODES,
      [("nodes/logic.py", "res = sample_video(pipeline.model, pipeline.encoders, video,",
        "res = sample_video(pipeline.model, pipeline.encoders, type(video)(video.pose_images, "
        "video.clothing_masks, video.frames),")],
      [("nodes/logic.py", "bhwc_to_nchw(fitted.frames), fitted.masks,", "bhwc_to_nchw(fitted.poses), fitted.masks,"),
       ("nodes/logic.py", "bhwc_to_nchw(fitted.poses), head.identity_image",
        "bhwc_to_nchw(fitted.frames), head.identity_image")]),
    m("node-inputs-swap-frames-and-poses", "the node's input preparation swaps clothing frames and pose images",
      T_NODES,
      [("nodes/logic.py", "return inputs.prepare_video(frames, masks, poses, h, w)",
        "return inputs.prepare_video(poses, masks, frames, h, w)")]),
    # -- further mutants in central places --------------------------------------------------------------------
    m("windows-unnormalised", "blended window predictions not divided by the summed weights", T_SAMPLER,
      [(SAMPLER, "            eps = eps / total", "            eps = eps / len(windows)")]),
    m("window-conditions-misaligned", "a window's latents paired with the previous frames' conditions", T_SAMPLER,
      [(SAMPLER, "model_in[:, idx], t, cond, idx,", "model_in[:, idx], t, cond, (idx - 1).clamp_min(0),")]),
    m("cfg-combination", "classifier-free guidance pushes towards the unconditional branch",
      ["tests/test_sampler.py"],
      [(SAMPLER, "return eps_u + guidance_scale * (eps_c - eps_u)",
        "return eps_c + guidance_scale * (eps_u - eps_c)")]),
    m("adapter-eq3-no-std", "Eq. 3 matches the mean but not the standard deviation", ["tests/test_model.py"],
      [("m2h_core/models/adapter.py", "return (x - mu_x) / (sd_x + eps) * sd_r + mu_r", "return (x - mu_x) + mu_r")]),
    m("adapter-eq3-stats-per-channel", "Eq. 3 statistics over tokens only (per channel)", ["tests/test_model.py"],
      [("m2h_core/models/adapter.py",
        "mu_x, sd_x = x.mean(dim=(1, 2), keepdim=True), x.std(dim=(1, 2), keepdim=True, unbiased=False)",
        "mu_x, sd_x = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True, unbiased=False)")]),
    m("ddim-x0-sign", "one-step x0 adds the noise instead of removing it", T_TRAIN,
      [(MIRROR, "x0 = (z_t.to(a.dtype) - (1 - a).sqrt() * eps_pred.to(a.dtype)) / a.sqrt()",
        "x0 = (z_t.to(a.dtype) + (1 - a).sqrt() * eps_pred.to(a.dtype)) / a.sqrt()")]),
    m("ddim-x0-no-sqrt", "one-step x0 divides by alpha-bar instead of its square root", T_TRAIN,
      [(MIRROR, "eps_pred.to(a.dtype)) / a.sqrt()", "eps_pred.to(a.dtype)) / a")]),
    m("mirror-crop-box-off-by-one", "face crop box loses its last latent cell", T_TRAIN,
      [(MIRROR, "y1 = torch.where(rows, ar_h, -1).amax(1) // downscale + 1",
        "y1 = torch.where(rows, ar_h, -1).amax(1) // downscale")]),
    m("lpips-no-unit-normalisation", "LPIPS compares raw activations", ["tests/test_metrics.py"],
      [(METRICS, "return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)", "return feat")]),
    m("lpips-nearest-upsampling", "LPIPS maps upsampled with nearest instead of bilinear", ["tests/test_metrics.py"],
      [(METRICS, VGG_LPIPS_LOOP + 'F.interpolate(layer, size=size, mode="bilinear", align_corners=False)',
        VGG_LPIPS_LOOP + 'F.interpolate(layer, size=size, mode="nearest")')]),
    m("frechet-trace-factor", "Fréchet distance without the factor 2 on tr(sqrt(S1 S2))", ["tests/test_metrics.py"],
      [(METRICS, "- 2.0 * np.trace(covmean)", "- np.trace(covmean)")]),
    m("frechet-biased-covariance", "covariance of features with 1/N instead of 1/(N-1)", ["tests/test_metrics.py"],
      [(METRICS, "np.atleast_2d(np.cov(f, rowvar=False))", "np.atleast_2d(np.cov(f, rowvar=False, bias=True))")]),
    m("psnr-per-pixel-not-per-channel", "masked PSNR's MSE divided by pixels, not pixels x 3",
      ["tests/test_metrics.py"], [(METRICS, "/ (3 * count))", "/ count)")]),
    m("mask-crop-resize-linear", "clothing masks cropped/resized with linear instead of nearest interpolation",
      ["tests/test_mask_resize.py", "tests/test_video_io.py", *T_NODES],
      [("m2h_core/video_io.py", "return apply_crop(m, info, cv2.INTER_NEAREST)",
        "return apply_crop(m, info, cv2.INTER_LINEAR)")]),
    m("center-crop-not-centred", "the centre crop takes the left/top edge", ["tests/test_video_io.py"],
      [("m2h_core/video_io.py", "x0 = (src_width - crop_w) // 2", "x0 = 0")]),
    m("user-mask-resize-linear", "user mask sequences resized with linear interpolation (masks grow)",
      ["tests/test_preprocess_parsing.py"],
      [("m2h_core/preprocess/masks.py", "interpolation=cv2.INTER_NEAREST) > 0",
        "interpolation=cv2.INTER_LINEAR) > 0")]),
    m("erode-one-px-less", "grow_mask erodes one pixel less than asked", ["tests/test_preprocess_parsing.py"],
      [("m2h_core/preprocess/masks.py", "(2 * abs(px) + 1, 2 * abs(px) + 1))", "(2 * abs(px) - 1, 2 * abs(px) - 1))")]),
    m("pose-limbs-opaque", "OpenPose limbs drawn opaque instead of at 0.6 alpha", ["tests/test_pose_render.py"],
      [("m2h_core/pose_render.py", "alpha: float = 0.6) -> None:", "alpha: float = 1.0) -> None:")]),
    m("pose-scaled-no-shift", "PoseFrame.scaled ignores dx", ["tests/test_pose_render.py"],
      [("m2h_core/pose_render.py", "a[..., 0] = a[..., 0] * sx + dx", "a[..., 0] = a[..., 0] * sx")]),
    m("head-region-no-hair", "the head region is not widened above the brows for hair",
      ["tests/test_identity_region.py"],
      [("m2h_core/identity.py", "top, bottom = y1 - HEAD_MARGIN_TOP * bh,", "top, bottom = y1,")]),
    m("nms-keeps-overlaps", "NMS compares IoU the wrong way round", ["tests/test_preprocess_dwpose.py"],
      [("m2h_core/preprocess/dwpose.py", "order = rest[iou <= iou_threshold]", "order = rest[iou >= iou_threshold]")]),
    m("simcc-split-ratio-ignored", "SimCC locations not divided by the split ratio",
      ["tests/test_preprocess_dwpose.py"],
      [("m2h_core/preprocess/dwpose.py", "return (locs / split_ratio).reshape(n, k, 2)",
        "return locs.reshape(n, k, 2)")]),
    m("letterbox-not-aspect", "letterbox ratio from the height only", ["tests/test_preprocess_dwpose.py"],
      [("m2h_core/preprocess/dwpose.py", "r = min(size[0] / h, size[1] / w)", "r = size[0] / h")]),
    m("umeyama-no-reflection-guard", "face alignment allows a reflection", ["tests/test_preprocess_face.py"],
      [("m2h_core/preprocess/face.py", "scale = (sig * d).sum() / var if var > 0 else 1.0",
        "scale = sig.sum() / var if var > 0 else 1.0")]),
    m("synthetic-clothing-mask-human-only", "the synthetic clothing mask is the human's garment, not the part both "
      "renderings share", ["tests/test_synthetic.py"],
      [("m2h_core/demo/synthetic.py", 'cloth[i] = fr["human"]["garment"] & fr["mannequin"]["garment"]',
        'cloth[i] = fr["human"]["garment"]')]),
    m("synthetic-poses-from-identity", "synthetic body poses use the person's head geometry (identity leaks)",
      ["tests/test_synthetic.py"],
      [("m2h_core/demo/synthetic.py", 'fr["cam"], mgeom, H, W, with_face=False))',
        'fr["cam"], fr["hgeom"], H, W, with_face=False))')]),
    m("tiny-vae-scaling-ignored", "the shipped tiny VAE's scaling factor is not applied on load",
      ["tests/test_tiny_vae.py"],
      [("m2h_core/demo/tiny_vae.py", "    scale = float(meta[\"scaling_factor\"])\n    set_scaling_factor(vae, scale)",
        "    scale = float(meta[\"scaling_factor\"])\n    set_scaling_factor(vae, 1.0)")]),
    m("demo-trains-nothing", "the demo's training does not change the model (lr 0)", ["tests/test_demo.py"],
      [("m2h_core/demo/recipe.py", "batch_size=s.batch_size, lr=s.lr,", "batch_size=s.batch_size, lr=0.0,")]),
    m("optimizer-step-skipped", "the trainer never applies its optimizer step", ["tests/test_train.py"],
      [(TRAINER, "        self.optimizer.step()\n", "        pass\n")]),
    m("crop-target-wrong-box", "the mirror loss crops the target at another clip's face box", T_TRAIN,
      [(MIRROR, "gt = _crop(gt, boxes, size, scale)", "gt = _crop(gt, boxes.flip(0), size, scale)")]),
    m("paper-reduction-mean-over-frames", "mirror_reduction=paper averages over frames instead of Eq. 6's sum",
      T_TRAIN, [(MIRROR, "elif paper:  # Σ over the clip's frames, mean over the batch's clips\n"
                         "            norm = w / b\n",
                 "elif paper:  # Σ over the clip's frames, mean over the batch's clips\n"
                 "            norm = w / b / f\n")]),
    m("motion-modules-not-checkpointed", "gradient checkpointing leaves the AnimateDiff motion modules out",
      ["tests/test_train.py", "tests/test_preflight.py"],
      [("m2h_core/training/components.py", "module.__class__ = classes.setdefault(cls, _checkpointed(cls))",
        "pass")]),
    # -- issue 32: the source's audio, small faces, short clips, options, model boundaries, decision rules -------
    m("audio-span-start-ignored", "the kept sound starts at the source's start, not at the first frame written",
      T_AUDIO, [(VIDEO_IO, "begin = t0 + audio.start_s", "begin = t0")]),
    m("audio-late-start-not-padded", "sound that starts after the first frame is moved to the start (out of sync)",
      T_AUDIO, [(VIDEO_IO, "emit(np.zeros((arr.shape[0], gap * step), arr.dtype))", "pass")]),
    m("audio-webm-gets-aac", "WebM output is given AAC (it can only carry Opus / Vorbis)", T_AUDIO,
      [(VIDEO_IO, '"libvpx-vp9": "libopus"}', '"libvpx-vp9": "aac"}')]),
    m("audio-not-passed-by-generate", "m2h generate writes its video without the source's sound", T_AUDIO,
      [("m2h_core/inference/generate.py", "with VideoWriter(req.out, fps, audio=audio) as out:",
        "with VideoWriter(req.out, fps) as out:")]),
    m("audio-not-wired-in-templates", "the templates leave Create Video's audio empty", T_AUDIO,
      [("workflows/build_workflows.py", 'g.link(comps, "audio", create, "audio")  # the source\'s sound (Create',
        "pass  # (Create")]),
    m("small-face-threshold-halved", "faces of 50-99 px pass without the small-face warning", T_FACE,
      [(FACE, "small = [i for i, w in enumerate(widths) if w < SMALL_FACE_WIDTH]",
        "small = [i for i, w in enumerate(widths) if w < SMALL_FACE_WIDTH / 2]")]),
    m("small-face-largest-is-smallest", "the small-face warning names the smallest face as the largest", T_FACE,
      [(FACE, "largest = int(np.argmax(widths))", "largest = int(np.argmin(widths))")]),
    m("best-photo-sharpness-first", "several photos: the sharpest wins over the most frontal", T_FACE,
      [(FACE, "score = {i: front[i] + 0.5 * sharp[i] / top for i in idx}",
        "score = {i: 0.5 * front[i] + sharp[i] / top for i in idx}")]),
    m("identity-frame-among-sampled", "x_id may be one of the sampled frames although others have a face",
      T_DATA, [(DATASET, "others = np.setdiff1d(faces, np.asarray(exclude))", "others = faces")]),
    m("short-clips-prepared", "prepare_data caches clips shorter than the training window", T_DATA,
      [("train/prepare_data.py", "if clip.num_frames < max(2, min_frames):", "if clip.num_frames < 2:")]),
    m("min-frames-option-dropped", "prepare_data's --min-frames never reaches process_video", T_DATA,
      [("train/prepare_data.py", "process_video(p, vid, out, pre, max_side, max_frames, min_frames=min_frames)",
        "process_video(p, vid, out, pre, max_side, max_frames)")]),
    m("short-clips-loaded", "the dataset keeps clips shorter than the window", T_DATA,
      [(DATASET, "v.num_frames < num_frames]", "v.num_frames < 1]")]),
    m("short-clips-looped", "sampling loops a clip shorter than the window", T_DATA,
      [(DATASET, "    if n < num_frames:\n        raise ValueError(",
        ("    if n < num_frames:\n        return (int(rng.integers(0, n)) + np.arange(num_frames)) % n\n"
         "        raise ValueError("))]),
    m("cli-drops-pose-strength", "m2h generate / batch ignore --pose-strength", T_OPTIONS,
      [("m2h_core/cli.py", CLI_SETTINGS, CLI_SETTINGS.replace("pose_strength=a.pose_strength", "pose_strength=1.0"))]),
    m("cli-swaps-context-overlap", "m2h generate / batch swap --context and --overlap", T_OPTIONS,
      [("m2h_core/cli.py", CLI_SETTINGS, CLI_SETTINGS.replace(
          "context_frames=a.context, context_overlap=a.overlap",
          "context_frames=a.overlap, context_overlap=a.context"))]),
    m("jobs-overlap-column-to-context", "jobs.csv's overlap column sets the context window", T_OPTIONS,
      [("m2h_core/inference/batch.py", '"overlap": "context_overlap"}', '"overlap": "context_frames"}')]),
    m("jobs-ignore-command-garment-lock", "jobs without a garment_lock column ignore the command's --garment-lock",
      T_OPTIONS, [("m2h_core/inference/batch.py",
                   'garment_lock=opts.pop("garment_lock", req_defaults.get("garment_lock", False)),',
                   'garment_lock=opts.pop("garment_lock", False),')]),
    m("sampler-swaps-strengths", "sample_video passes the identity strength as the pose strength", T_OPTIONS,
      [(SAMPLER, ("pose_strength=settings.pose_strength,\n                                       "
                  "identity_strength=settings.identity_strength)"),
        ("pose_strength=settings.identity_strength,\n                                       "
         "identity_strength=settings.pose_strength)"))]),
    m("sampler-ignores-batch-cfg", "chunked sampling always batches the two CFG branches", T_OPTIONS,
      [(SAMPLER, "chunk.motion,\n                                                             settings.batch_cfg)",
        "chunk.motion,\n                                                             True)")]),
    m("face-detector-gets-rgb", "the face detector is handed RGB (insightface swaps it: the network sees BGR)",
      T_BOUNDARY, [(FACE, "bgr = np.ascontiguousarray(rgb[..., ::-1])", "bgr = np.ascontiguousarray(rgb)")]),
    m("arcface-gets-rgb", "ArcFace is handed RGB (insightface swaps it: the network sees BGR)", T_BOUNDARY,
      [(FACE, "get_feat([np.ascontiguousarray(aligned_rgb[..., ::-1])])",
        "get_feat([np.ascontiguousarray(aligned_rgb)])")]),
    m("dwpose-detector-rgb", "the YOLOX person detector sees RGB instead of BGR", T_BOUNDARY,
      [("m2h_core/preprocess/dwpose.py", "img = f[..., ::-1] if self.det_bgr else f", "img = f")]),
    m("dwpose-pose-bgr", "the DWPose pose model sees BGR instead of RGB", T_BOUNDARY,
      [("m2h_core/preprocess/dwpose.py", "img_src = [f if self.pose_rgb else f[..., ::-1] for f in frames]",
        "img_src = [f[..., ::-1] for f in frames]")]),
    m("clip-mean-bgr", "CLIP normalised with its mean in BGR order", T_BOUNDARY,
      [(ENCODERS, "CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)",
        "CLIP_MEAN = (0.40821073, 0.4578275, 0.48145466)")]),
    m("clip-channels-swapped", "CLIP is given BGR pixels", T_BOUNDARY,
      [(ENCODERS, "pixel_values=(x.to(p.dtype) - mean) / std)", "pixel_values=(x.to(p.dtype).flip(1) - mean) / std)")]),
    m("vae-input-not-centred", "the VAE is given pixels in [0, 1] instead of [-1, 1]", T_BOUNDARY,
      [(ENCODERS, "self.vae.encode(pixels.to(p.device, p.dtype) * 2 - 1)",
        "self.vae.encode(pixels.to(p.device, p.dtype))")]),
]


# ------------------------------------------------------------------------------------------------------------- run


def working_tree_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                         check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (repo / f).is_file()})


def copy_tree(repo: Path, dest: Path) -> None:
    for rel in working_tree_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)


def pick_variant(mutant: Mutant, root: Path) -> tuple[list[Patch] | None, str]:
    """The first variant whose needles each occur exactly once; else (None, what is wrong)."""
    problems = []
    for variant in mutant.variants:
        bad = []
        for rel, needle, _ in variant:
            path = root / rel
            count = path.read_text().count(needle) if path.is_file() else 0
            if count != 1:
                bad.append(f"{rel}: needle {'not found' if count == 0 else f'found {count}x'}: {needle[:60]!r}")
        if not bad:
            return variant, ""
        problems.append("; ".join(bad))
    return None, " | ".join(problems)


def run_tests(root: Path, tests: list[str], timeout: float, every: bool = False,
              deselect: tuple[str, ...] = ()) -> tuple[str, str, float]:
    """('passed' | 'failed' | 'timeout', failing test(s) or the last output line, seconds).
    every: run on after the first failure and name every failing test; deselect: test ids left out."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    for test_id in deselect:
        cmd += ["--deselect", test_id]
    if not every:
        cmd.insert(3, "-x")
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - start
    seconds = time.time() - start
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "passed", "", seconds
    failing = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    lines = [line for line in text.splitlines() if line.strip()]
    if failing:
        return "failed", " ".join(failing if every else failing[:1]), seconds
    return "failed", lines[-1] if lines else f"exit {proc.returncode}", seconds


def check_imports_from(root: Path) -> None:
    """The copy's packages must shadow the editable install of the repository."""
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", "import m2h_core, nodes; print(m2h_core.__file__); "
                          "print(nodes.__file__)"], cwd=root, env=env, capture_output=True, text=True)
    paths = out.stdout.split()
    if out.returncode != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(root.resolve())
                                                          for p in paths):
        raise SystemExit(f"the copy at {root} does not import its own m2h_core/nodes: {out.stdout}{out.stderr}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[], help="only mutants whose name contains this (repeatable)")
    ap.add_argument("--all", action="store_true", help="run the whole suite for every mutant, not its test files")
    ap.add_argument("--tests", nargs="+", help="run these test files/ids for every mutant instead of its own")
    ap.add_argument("--every", action="store_true", help="do not stop at the first failure: name every failing test")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check-needles", action="store_true", help="only check that every needle still matches")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated tests")
    ap.add_argument("--strict", action="store_true", help="stop when an unmutated test fails (default: leave the "
                    "failing tests out of the mutant runs and say so)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per test run (default 1800)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = ap.parse_args(argv)

    mutants = [mu for mu in MUTANTS if not args.k or any(k in mu.name for k in args.k)]
    if args.list:
        for mu in mutants:
            print(f"{mu.name:34s} {mu.why}  [{', '.join(mu.tests)}]")
        return 0
    if args.check_needles:
        stale = 0
        for mu in mutants:
            variant, problem = pick_variant(mu, REPO)
            missing = [t for t in mu.tests if not (REPO / t.split("::")[0]).exists()]
            if missing:
                problem = (problem + " | " if problem else "") + "missing test files: " + " ".join(missing)
            stale += variant is None or len(missing) == len(mu.tests)
            print(f"{'ok' if variant and len(missing) < len(mu.tests) else 'STALE':8s} {mu.name:34s} {problem}")
        return 1 if stale else 0

    tmp = Path(tempfile.mkdtemp(prefix="m2h_mutants_"))
    root = tmp / "repo"
    baseline_failures: tuple[str, ...] = ()
    try:
        copy_tree(REPO, root)
        check_imports_from(root)
        print(f"copy of {REPO} at {root}", flush=True)
        if not args.no_baseline:
            union = ["tests"] if args.all else args.tests or sorted({t for mu in mutants for t in mu.tests
                                                                      if (root / t.split("::")[0]).exists()})
            status, first, secs = run_tests(root, union, args.timeout, every=True)
            print(f"baseline {status:8s} {secs:6.0f}s  {' '.join(union)} {first}", flush=True)
            if status == "failed" and first.startswith("tests/") and not args.strict:
                # a test that fails without any mutant says nothing about mutants: leave it out, say so
                baseline_failures = tuple(first.split())
                print(f"warning: left out of every mutant run (they fail unmutated): {first}", flush=True)
            elif status != "passed":
                print("the unmutated tests do not pass: fix that first", file=sys.stderr)
                return 2
        bad = 0
        for mu in mutants:
            variant, problem = pick_variant(mu, root)
            if variant is None:
                print(f"STALE    {mu.name:34s} {problem}", flush=True)
                bad += 1
                continue
            tests = ["tests"] if args.all else args.tests or mu.tests
            missing = [t for t in tests if not (root / t.split("::")[0]).exists()]
            tests = [t for t in tests if t not in missing]
            if not tests:
                print(f"STALE    {mu.name:34s} none of its test files exist: {' '.join(missing)}", flush=True)
                bad += 1
                continue
            originals = {rel: (root / rel).read_text() for rel, _, _ in variant}
            try:
                for rel, needle, repl in variant:
                    path = root / rel
                    path.write_text(path.read_text().replace(needle, repl, 1))
                status, first, secs = run_tests(root, tests, args.timeout, args.every, baseline_failures)
            finally:
                for rel, text in originals.items():
                    (root / rel).write_text(text)
            verdict = {"failed": "killed", "passed": "SURVIVED", "timeout": "timeout"}[status]
            bad += status == "passed"
            print(f"{verdict:8s} {mu.name:34s} {secs:6.0f}s  {first or mu.why}", flush=True)
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
