"""CPU frames-per-second of each preprocessor on a 64-frame 512x256 (H x W) clip.

Real weights are used when found through ``$M2H_MODELS`` (or ``--models DIR``); otherwise tiny models with the
real file formats are built in a temp folder and the printout says so (those numbers measure our pre/post-
processing and onnxruntime overhead, not the real networks). Ends with ``key=value`` lines.

    python benchmarks/bench_preprocess.py [--frames 64] [--models DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m2h_core.preprocess.model_files import MissingModelError, find_model_file  # noqa: E402


def _clip(n: int, h: int = 512, w: int = 256) -> np.ndarray:
    import cv2
    import skimage.data

    base = cv2.resize(skimage.data.astronaut(), (w, h))
    return np.stack([np.roll(base, i * 2, axis=1) for i in range(n)])


def _timed(fn, n_frames: int) -> float:
    fn()  # warm-up (session init, first-run allocations)
    t = time.perf_counter()
    fn()
    return n_frames / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--models", default=None, help="extra models folder (else $M2H_MODELS)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    dirs = [args.models] if args.models else []
    frames = _clip(args.frames)
    tmp = Path(tempfile.mkdtemp(prefix="m2h_bench_"))
    results: dict[str, str] = {}
    from tests import test_preprocess_builders as tb

    # ---- DWPose
    from m2h_core.preprocess.dwpose import DWPoseDetector

    try:
        det_p, pose_p = find_model_file("dwpose", "yolox_l.onnx", dirs), find_model_file("dwpose",
                                                                                         "dw-ll_ucoco_384.onnx", dirs)
        kind = "real"
    except MissingModelError:
        det_p, pose_p = tb.build_dwpose_pair(tmp / "dwpose")
        kind = "tiny-built"
    print(f"dwpose: {kind} models ({det_p}, {pose_p})")
    det = DWPoseDetector(det_p, pose_p, ["CPUExecutionProvider"], threads=args.threads)
    results["dwpose_fps"] = f"{_timed(lambda: det.detect(frames), len(frames)):.2f}"
    results["dwpose_models"] = kind

    # ---- parsing: SCHP ONNX and SegFormer
    from m2h_core.preprocess.parsing import SCHPParser, SegformerClothesParser

    try:
        schp_p, kind = find_model_file("human_parsing", "parsing_atr.onnx", dirs), "real"
    except MissingModelError:
        schp_p, kind = tb.build_schp(tmp / "parsing_atr.onnx"), "tiny-built"
    print(f"schp: {kind} model ({schp_p})")
    schp = SCHPParser(schp_p, ["CPUExecutionProvider"], threads=args.threads)
    results["schp_fps"] = f"{_timed(lambda: schp.parse(frames), len(frames)):.2f}"
    results["schp_model"] = kind
    try:
        seg_p, kind = find_model_file("human_parsing", "segformer_b2_clothes", dirs), "real"
    except MissingModelError:
        seg_p, kind = tb.build_segformer(tmp / "segformer_b2_clothes"), "tiny-built"
    print(f"segformer: {kind} model ({seg_p})")
    seg = SegformerClothesParser(seg_p)
    results["segformer_fps"] = f"{_timed(lambda: seg.parse(frames, batch_size=8), len(frames)):.2f}"
    results["segformer_model"] = kind

    # ---- face (one identity image; images per second)
    try:
        from m2h_core.preprocess.face import FaceAnalyzer, find_face_pack

        try:
            find_face_pack("antelopev2", dirs)
            fdirs, kind = dirs, "real"
        except MissingModelError:
            tb.build_face_pack(tmp / "insightface" / "models" / "antelopev2")
            fdirs, kind = [tmp], "tiny-built"
        import insightface

        import cv2

        img = np.ascontiguousarray(cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" /
                                                  "t1.jpg"))[..., ::-1])
        fa = FaceAnalyzer("antelopev2", fdirs, ["CPUExecutionProvider"])
        print(f"face: {kind} pack ({fa.folder}); the tiny detector fires on every anchor, so its NMS dominates")
        n = 8
        results["face_images_per_s"] = f"{_timed(lambda: [fa.analyze(img) for _ in range(n)], n):.2f}"
        results["face_models"] = kind
    except ImportError as err:
        print(f"face: skipped ({err})")
        results["face_images_per_s"] = "nan"
        results["face_models"] = "insightface-missing"

    print(f"clip: {len(frames)} frames of {frames.shape[1]}x{frames.shape[2]} (HxW), CPU, "
          f"{os.cpu_count()} cores visible")
    if any(v == "tiny-built" for v in results.values()):
        print("NOTE: some models were tiny stand-ins built in the real formats (no real weights found); their fps "
              "measure the pre/post-processing path, not the real networks. Set M2H_MODELS to time real files.")
    results["frames"] = str(len(frames))
    for k, v in results.items():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()
