"""Train M2HVideo (paper Algorithm 1). All options live in a YAML config; command-line flags override it.

    python train/train.py --config train/configs/tiny.yaml                      # CPU, synthetic, random init
    python train/train.py --config train/configs/sd15.yaml --data CACHE \\
        --base v1-5-pruned-emaonly.safetensors --clip-vision clip_vision_vit_l14.safetensors \\
        --motion-module mm_sd_v15_v2.safetensors --vgg vgg16-397923af.pth
    accelerate launch --config_file acc.yaml train/train.py --config ...        # DDP / FSDP / DeepSpeed

    --resume auto        continue from the newest checkpoint in the output folder (the default)
    --set key=value      any config key (repeatable), e.g. --set lora_rank=16 --set batch_size=2
Ablations (Table III):  --no-head-encoder  --no-adapter  --no-adapter-norm  --no-mirror
                        --ablation table3   (all 8 H/A/L_mir combinations, one sub-folder each)
Mirror weights (Table IV): --alpha 0,0.005,0.05 --beta 0.005 (the grid of all pairs), or --sweep table4
  (one run per row: train/configs/table3/*.yaml and table4/*.yaml are the same rows as config files)

Warm start (no public M2H weights exist):  --init public --ip-adapter ip-adapter-faceid_sd15.bin
  --controlnet control_v11p_sd15_openpose.pth [--set pose_channels=[16,32,96,256]]: adapter A's identity K/V and H's
  ArcFace path from FaceID, E_pose from ControlNet's hint encoder (plus the AnimateDiff motion module and, with an
  inpainting --base, its input channels). See m2h_core/training/public_init.py.

Before a long run:  --preflight   (same config and flags): a few real steps in both resolution phases, then
  key=value lines and <output_dir>/preflight.json: peak memory and whether it fits (and what to change first),
  seconds per step and hours to max_steps, |grad L_mir| / |grad L_diff| with the alpha for --target-ratio, the
  face-crop vs full decode difference, fp16/bf16 finiteness. Without a GPU, configs too big for the CPU get
  meta-device estimates (est_* keys, labelled as estimates). See m2h_core/training/preflight.py.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2h_core.training.config import load_train_config, parse_value  # noqa: E402
from m2h_core.training.trainer import Trainer  # noqa: E402

TABLE3 = [dict(use_head_encoder=h, adapter_enabled=a, mirror=m)
          for h, a, m in itertools.product((False, True), repeat=3)]
TABLE4 = [(0, 0.005), (0.005, 0.005), (0.05, 0.005), (0.5, 0.005), (0.05, 0), (0.05, 0.0005), (0.05, 0.05),
          (0.05, 0.5)]


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="YAML training config (train/configs/)")
    ap.add_argument("--data", help="prepare_data cache folder")
    ap.add_argument("--synthetic", type=int, dest="synthetic_clips", help="train on N in-memory synthetic clips")
    ap.add_argument("--base", help="SD-1.5 single-file checkpoint or diffusers folder")
    ap.add_argument("--clip-vision", dest="clip_vision")
    ap.add_argument("--motion-module", dest="motion_module")
    ap.add_argument("--vgg", help="VGG16 weights (vgg16-397923af.pth or .safetensors)")
    ap.add_argument("--init-checkpoint", dest="init_checkpoint", help="start from an M2H checkpoint")
    ap.add_argument("--random-init", dest="random_init", action="store_const", const=True)
    ap.add_argument("--init", choices=("base", "public"),
                    help="public: also warm-start M2H parts from public add-ons (--ip-adapter, --controlnet; "
                         "m2h_core/training/public_init.py); the preflight lists what came from where")
    ap.add_argument("--ip-adapter", dest="ip_adapter", help="IP-Adapter FaceID file for --init public")
    ap.add_argument("--controlnet", help="ControlNet OpenPose file for --init public")
    ap.add_argument("--output-dir", dest="output_dir")
    ap.add_argument("--max-steps", dest="max_steps", type=int)
    ap.add_argument("--batch-size", dest="batch_size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--lora-rank", dest="lora_rank", type=int)
    ap.add_argument("--mixed-precision", dest="mixed_precision", choices=("no", "fp16", "bf16"))
    ap.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const=True)
    ap.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    ap.add_argument("--validate-every", dest="validate_every", type=int)
    ap.add_argument("--tensorboard", action="store_const", const=True)
    ap.add_argument("--no-progressive", dest="progressive", action="store_const", const=False)
    ap.add_argument("--no-head-encoder", dest="use_head_encoder", action="store_const", const=False)
    ap.add_argument("--no-adapter", dest="adapter_enabled", action="store_const", const=False)
    ap.add_argument("--no-adapter-norm", dest="adapter_normalize", action="store_const", const=False)
    ap.add_argument("--no-mirror", dest="mirror", action="store_const", const=False)
    ap.add_argument("--alpha", type=floats, help="mirror pixel weight(s), comma-separated for a grid")
    ap.add_argument("--beta", type=floats, help="mirror perceptual weight(s), comma-separated for a grid")
    ap.add_argument("--ablation", choices=("table3",), help="run the 8 H/A/L_mir ablation settings")
    ap.add_argument("--sweep", choices=("table4",), help="run the paper's 8 (alpha, beta) settings")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    ap.add_argument("--resume", default="auto", help="'auto' (default), 'none', or a checkpoint folder")
    ap.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop early
    pf = ap.add_argument_group("preflight")
    pf.add_argument("--preflight", action="store_true", help="measure/estimate the run instead of training")
    pf.add_argument("--preflight-steps", type=int, default=2, help="timed steps per resolution phase")
    pf.add_argument("--preflight-mode", choices=("auto", "measure", "estimate"), default="auto",
                    help="auto: measure on a GPU, or on the CPU when a step is small enough; else estimate")
    pf.add_argument("--target-ratio", type=float, default=0.1,
                    help="|grad L_mir| / |grad L_diff| that alpha_for_target aims at")
    pf.add_argument("--preflight-out", help="preflight.json path (default: <output_dir>/preflight.json)")
    ap.add_argument("--traceback", action="store_true", help="show the full traceback of known errors")
    return ap


def runs_from_args(a: argparse.Namespace) -> tuple[dict, list[tuple[str, dict]]]:
    """(base overrides, [(sub-folder, extra overrides)] - one entry with '' for a single run)."""
    skip = {"config", "alpha", "beta", "ablation", "sweep", "set", "resume", "stop_after", "preflight",
            "preflight_steps", "preflight_mode", "target_ratio", "preflight_out", "traceback"}
    base = {k: v for k, v in vars(a).items() if k not in skip and v is not None}
    for item in a.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        base[k.strip()] = parse_value(v)
    alphas, betas = a.alpha or [None], a.beta or [None]
    runs: list[tuple[str, dict]] = []
    if a.ablation == "table3":
        for o in TABLE3:
            runs.append((f"H{int(o['use_head_encoder'])}_A{int(o['adapter_enabled'])}_M{int(o['mirror'])}", o))
    elif a.sweep == "table4":
        runs = [(f"alpha{al:g}_beta{be:g}", {"alpha": al, "beta": be}) for al, be in TABLE4]
    elif len(alphas) * len(betas) > 1:
        for al, be in itertools.product(alphas, betas):
            o = {k: v for k, v in (("alpha", al), ("beta", be)) if v is not None}
            runs.append(("_".join(f"{k}{v:g}" for k, v in o.items()), o))
    else:
        if alphas[0] is not None:
            base["alpha"] = alphas[0]
        if betas[0] is not None:
            base["beta"] = betas[0]
        runs = [("", {})]
    return base, runs


#: Errors with a message written for the user (bad config, missing or unreadable files, diverged runs): one line.
KNOWN_ERRORS = (ValueError, FileNotFoundError, NotImplementedError, FloatingPointError, PermissionError)


def run_one(a: argparse.Namespace, tc, resume: str | None) -> None:
    if a.preflight:
        from m2h_core.training.preflight import PreflightOptions, format_report, run_preflight

        report = run_preflight(tc, PreflightOptions(steps=a.preflight_steps, target_ratio=a.target_ratio,
                                                    mode=a.preflight_mode, out=a.preflight_out))
        print("\n".join(format_report(report)), flush=True)
        return
    result = Trainer(tc).run(resume=resume, stop_after=a.stop_after)
    last = result.logs[-1] if result.logs else None
    print(f"done: step {result.step}" + (f", loss {last.loss:.4f}" if last else "")
          + (f", final model {result.final_checkpoint}" if result.final_checkpoint else ""))


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    base, runs = runs_from_args(a)
    resume = None if a.resume in ("none", "no", "") else a.resume
    for sub, extra in runs:
        overrides = {**base, **extra}
        try:
            tc = load_train_config(a.config, overrides)
            if sub:
                tc.output_dir = str(Path(tc.output_dir) / sub)
                print(f"=== run {sub} -> {tc.output_dir}")
            run_one(a, tc, resume)
        except KNOWN_ERRORS as e:
            if a.traceback:
                raise
            msg = " ".join(str(e).split()) or type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
