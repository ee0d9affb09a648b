"""Builders of small model files in the real formats (ONNX graphs with the real input/output names and shapes,
a tiny transformers SegFormer folder, an insightface-style pack folder), so the real loading code runs offline.

Also imported by benchmarks/bench_preprocess.py. The graphs compute simple, known functions of the input so
the pre/post-processing around them can be checked against hand-derived answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _save(m, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


# ------------------------------------------------------------------------------------------ DWPose


def yolox_raw_for_boxes(boxes_xyxy_input, input_hw=(640, 640), score=0.9, num_classes=80) -> np.ndarray:
    """Raw (pre-decode) YOLOX output (A, 5 + C) with one anchor per box (given in *letterboxed input* pixels)
    at stride 32; objectness and class-0 probability ``score``."""
    strides = (8, 16, 32)
    sizes = [(input_hw[0] // s) * (input_hw[1] // s) for s in strides]
    raw = np.zeros((sum(sizes), 5 + num_classes), np.float32)
    raw[:, 2:4] = 0.0
    off = sizes[0] + sizes[1]
    ws = input_hw[1] // 32
    for x1, y1, x2, y2 in boxes_xyxy_input:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        gx, gy = int(cx // 32), int(cy // 32)
        a = off + gy * ws + gx
        raw[a, 0], raw[a, 1] = cx / 32 - gx, cy / 32 - gy
        raw[a, 2], raw[a, 3] = np.log(w / 32), np.log(h / 32)
        raw[a, 4], raw[a, 5] = score, score
    return raw


def build_yolox(path: Path, boxes_xyxy_input=((100, 50, 400, 600),), batch: int | None = 1) -> Path:
    """``yolox_l.onnx`` signature: input ``images`` (B, 3, 640, 640), output ``output`` (B, 8400, 85).

    The output is the raw tensor of :func:`yolox_raw_for_boxes`, with objectness and class scores gated by the
    input's variance: a uniform image (e.g. all 114 grey) detects nobody."""
    raw = yolox_raw_for_boxes(boxes_xyxy_input)
    base = raw.copy()
    base[:, 4:] = 0.0
    gated = np.zeros_like(raw)
    gated[:, 4:] = raw[:, 4:]
    b = batch if batch else "batch"
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["images", "m"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["v"], axes=[1, 2, 3], keepdims=1),  # (B,1,1,1)
        helper.make_node("Min", ["v", "one"], ["g4"]),
        helper.make_node("Reshape", ["g4", "shape3"], ["g"]),  # (B,1,1)
        helper.make_node("Mul", ["g", "gated"], ["gm"]),
        helper.make_node("Add", ["gm", "base"], ["output"]),
    ]
    inits = [_const("one", 1.0), numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
             _const("gated", gated[None]), _const("base", base[None])]
    m = _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, 3, 640, 640])],
               [helper.make_tensor_value_info("output", TensorProto.FLOAT, [b, 8400, 85])], inits, "yolox_tiny")
    return _save(m, path)


def build_dwpose(path: Path, crop_points: np.ndarray | None = None, value: float = 0.8,
                 batch: int | None = None) -> Path:
    """``dw-ll_ucoco_384.onnx`` signature: input ``input`` (B, 3, 384, 288), outputs ``simcc_x`` (B, 133, 576)
    and ``simcc_y`` (B, 133, 768). Every crop gets the same one-hot SimCC peaks at 2 x ``crop_points``
    (133, 2) in crop pixels (default: a grid)."""
    if crop_points is None:
        crop_points = default_crop_points()
    sx = np.zeros((1, 133, 576), np.float32)
    sy = np.zeros((1, 133, 768), np.float32)
    for k, (x, y) in enumerate(np.asarray(crop_points)):
        sx[0, k, int(round(2 * x))] = value
        sy[0, k, int(round(2 * y))] = value
    b = batch if batch else "batch"
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),  # (B,)
        helper.make_node("Reshape", ["m", "shape3"], ["m3"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "cx"], ["simcc_x"]),
        helper.make_node("Add", ["z", "cy"], ["simcc_y"]),
    ]
    inits = [_const("zero", 0.0), numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
             _const("cx", sx), _const("cy", sy)]
    m = _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [b, 3, 384, 288])],
               [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [b, 133, 576]),
                helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [b, 133, 768])], inits, "dwpose_tiny")
    return _save(m, path)


def default_crop_points() -> np.ndarray:
    """133 distinct crop-pixel points (x in [10, 278], y in [10, 374], on a half-pixel grid)."""
    k = np.arange(133)
    return np.stack([10 + (k * 37) % 268, 10 + (k * 53) % 364], 1).astype(np.float32)


def build_dwpose_pair(folder: Path, **kw) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return build_yolox(folder / "yolox_l.onnx", **{k: v for k, v in kw.items() if k in ("boxes_xyxy_input",)}), \
        build_dwpose(folder / "dw-ll_ucoco_384.onnx")


# ------------------------------------------------------------------------------------------ parsing

#: colour (RGB) -> ATR label used by the nearest-colour SCHP stand-in
PARSE_COLOURS = {
    (255, 255, 255): 0,  # background
    (200, 30, 30): 4,  # upper-clothes
    (30, 30, 200): 6,  # pants
    (230, 190, 160): 14,  # left-arm (skin / bare mannequin)
    (60, 40, 20): 2,  # hair
}


def build_schp(path: Path, num_classes: int = 18, size: int = 512, colours=None) -> Path:
    """SCHP export signature: input ``input.1`` (1, 3, S, S); outputs parsing / fusion (1, C, S/4, S/4) and edge
    (1, 2, S/4, S/4). The fused logits are a nearest-colour classifier on the normalised **BGR** input
    (4x4 average pooled): class c scores 2 x.t_c - |t_c|^2 for its template colour t_c."""
    colours = colours or PARSE_COLOURS
    mean = np.array([0.406, 0.456, 0.485], np.float32)
    std = np.array([0.225, 0.224, 0.229], np.float32)
    w = np.zeros((num_classes, 3, 1, 1), np.float32)
    bias = np.full((num_classes,), -1e4, np.float32)
    for rgb, c in colours.items():
        t = (np.array(rgb[::-1], np.float32) / 255.0 - mean) / std  # BGR template in normalised space
        w[c, :, 0, 0] = 2 * t
        bias[c] = -float(t @ t)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["p", "w", "b"], ["fusion"]),
        helper.make_node("Mul", ["fusion", "half"], ["parsing"]),
        helper.make_node("Conv", ["p", "we"], ["edge"]),
    ]
    inits = [_const("w", w), _const("b", bias), _const("half", 0.5), _const("we", np.zeros((2, 3, 1, 1)))]
    q = size // 4
    m = _model(nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
               [helper.make_tensor_value_info("parsing", TensorProto.FLOAT, [1, num_classes, q, q]),
                helper.make_tensor_value_info("fusion", TensorProto.FLOAT, [1, num_classes, q, q]),
                helper.make_tensor_value_info("edge", TensorProto.FLOAT, [1, 2, q, q])], inits, "schp_tiny")
    return _save(m, path)


def build_segformer(folder: Path, constant_label: int | None = None) -> Path:
    """A tiny random ``SegformerForSemanticSegmentation`` with the segformer_b2_clothes label set, saved with
    ``save_pretrained`` (safetensors). ``constant_label``: zero the classifier and bias it to that class."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from m2h_core.preprocess.parsing import SEGFORMER_CLOTHES

    labels = SEGFORMER_CLOTHES.labels
    cfg = SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                          hidden_sizes=[8, 16, 16, 16], num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2],
                          decoder_hidden_size=16, num_labels=len(labels),
                          id2label={i: n for i, n in enumerate(labels)},
                          label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(cfg).eval()
    if constant_label is not None:
        with torch.no_grad():
            model.decode_head.classifier.weight.zero_()
            model.decode_head.classifier.bias.zero_()
            model.decode_head.classifier.bias[constant_label] = 10.0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(
        '{"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], '
        '"size": {"height": 128, "width": 128}}')
    return folder


# ------------------------------------------------------------------------------------------ insightface

#: 5 keypoints relative to an anchor centre, in units of the stride (eyes, nose, mouth corners)
KPS_OFFSETS = np.array([[-0.6, -0.5], [0.6, -0.5], [0.0, 0.1], [-0.45, 0.6], [0.45, 0.6]], np.float32)


def build_scrfd(path: Path, score_logit: float = 4.0, half_size: float = 1.5) -> Path:
    """SCRFD-with-keypoints signature (scrfd_10g_bnkps / det_10g): input ``input.1`` (1, 3, H, W) dynamic, nine
    outputs -- scores (N, 1) x3, boxes (N, 4) x3, keypoints (N, 10) x3 for strides 8/16/32, 2 anchors per cell.
    Constant heads: every anchor scores sigmoid(``score_logit``), its box is +-``half_size`` strides and its
    keypoints are :data:`KPS_OFFSETS` strides from the anchor centre."""
    nodes, inits, outs = [], [], {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        for head, ch, val in (("score", 2, None), ("bbox", 8, None), ("kps", 20, None)):
            wname, bname, y = f"w_{head}{s}", f"b_{head}{s}", f"{head}_{s}"
            inits.append(_const(wname, np.zeros((ch, 3, s, s))))
            if head == "score":
                b = np.full(ch, score_logit)
            elif head == "bbox":
                b = np.full(ch, half_size)
            else:
                b = np.tile(KPS_OFFSETS.reshape(-1), 2)
            inits.append(_const(bname, b))
            k = 1 if head == "score" else (4 if head == "bbox" else 10)
            nodes += [helper.make_node("Conv", ["input.1", wname, bname], [y + "_c"], strides=[s, s]),
                      helper.make_node("Transpose", [y + "_c"], [y + "_t"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [y + "_t", f"shape{k}"], [y + ("_r" if head == "score" else "")])]
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [y + "_r"], [y]))
            outs[head].append(helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", k]))
    for k in (1, 4, 10):
        inits.append(numpy_helper.from_array(np.array([-1, k], np.int64), f"shape{k}"))
    m = _model(nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
               outs["score"] + outs["bbox"] + outs["kps"], inits, "scrfd_tiny")
    return _save(m, path)


def build_arcface(path: Path, dim: int = 512, seed: int = 0) -> Path:
    """ArcFace signature: input ``input.1`` (N, 3, 112, 112), one output (N, 512). A fixed random linear map of
    8x8 average-pooled pixels, so different faces give different embeddings."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3 * 14 * 14, dim)).astype(np.float32) / 24
    nodes = [helper.make_node("AveragePool", ["input.1"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["683"])]
    m = _model(nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
               [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])], [_const("w", w)], "arc_tiny")
    return _save(m, path)


def build_landmark(path: Path, num: int = 106) -> Path:
    """2d106det signature: input ``data`` (1, 3, 192, 192), output ``fc1`` (1, 212): constant points on a circle
    of radius 0.5 (normalised crop units) around the crop centre."""
    ang = np.linspace(0, 2 * np.pi, num, endpoint=False)
    pts = np.stack([0.5 * np.cos(ang), 0.5 * np.sin(ang)], 1).reshape(1, -1)
    nodes = [helper.make_node("ReduceMean", ["data"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Reshape", ["m", "shape2"], ["m2"]),
             helper.make_node("Mul", ["m2", "zero"], ["z"]),
             helper.make_node("Add", ["z", "pts"], ["fc1"])]
    inits = [_const("zero", 0.0), _const("pts", pts), numpy_helper.from_array(np.array([-1, 1], np.int64), "shape2")]
    m = _model(nodes, [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
               [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 2 * num])], inits, "lmk_tiny")
    return _save(m, path)


def build_face_pack(folder: Path, pack: str = "antelopev2", landmarks: bool = True, **scrfd_kw) -> Path:
    """An insightface-style pack folder (``.../models/<pack>/``) with tiny models under the real file names."""
    names = {"antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"), "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx")}
    det, rec = names[pack]
    folder.mkdir(parents=True, exist_ok=True)
    build_scrfd(folder / det, **scrfd_kw)
    build_arcface(folder / rec)
    if landmarks:
        build_landmark(folder / "2d106det.onnx")
    return folder
