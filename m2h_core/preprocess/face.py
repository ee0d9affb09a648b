"""Face analysis of the identity photo x_id: detection, 5-point alignment, ArcFace embedding, landmarks,
the face-landmark image p_id and the face mask M_id.

insightface is imported lazily (a broken insightface must not break importing m2h_core). Model packs are
found on disk (``<root>/models/<pack>/``, searched recursively, so the nested ``antelopev2/antelopev2/`` mistake
works); nothing is downloaded. Each ONNX file is loaded with ``insightface.model_zoo.get_model`` (the same
routing ``FaceAnalysis`` uses) -- we do not call ``FaceAnalysis`` itself because it insists on
``root/models/<name>`` exactly and may try to download. Alignment (similarity warp to the ArcFace 112x112
template) and the landmark runner are our own (the 68-point model is run directly, so insightface's pickled
mean shape is never loaded).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .masks import to_rgb_uint8
from .model_files import (MissingModelError, create_onnx_session, find_model_file, get_spec, onnx_load_error,
                          onnx_providers)

#: ArcFace 5-point template at 112x112 (left eye, right eye, nose tip, left mouth corner, right mouth corner).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
MIN_FACE_IMAGE_SIDE = 32
#: a face narrower than this (box width, photo pixels) is upscaled for ArcFace's 112x112 crop: warned about
SMALL_FACE_WIDTH = 100


@dataclass(frozen=True)
class FacePack:
    """File names of an insightface model pack."""

    name: str
    detector: str
    recognizer: str
    landmarks: tuple[str, ...] = ("1k3d68.onnx", "2d106det.onnx")


FACE_PACKS = {
    "antelopev2": FacePack("antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": FacePack("buffalo_l", "det_10g.onnx", "w600k_r50.onnx"),
}


class NoFaceError(ValueError):
    """No face was found in the identity image."""


# ------------------------------------------------------------------------------------------ alignment


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` (K, 2) onto ``dst`` (K, 2),
    as a 2x3 matrix (Umeyama 1991, reflection excluded)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var if var > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]]).astype(np.float32)


def alignment_matrix(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 similarity warp of 5 face keypoints onto the ArcFace template scaled to ``size`` (112 or 128k)."""
    kps = np.asarray(kps, np.float32).reshape(5, 2)
    if size % 112 == 0:
        ratio, dx = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio, dx = size / 128.0, 8.0 * size / 128.0
    else:
        raise ValueError(f"aligned size must be a multiple of 112 or 128, got {size}")
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += dx
    return similarity_transform(kps, dst)


def align_face(image: np.ndarray, kps: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Aligned square crop (size, size, 3) and its 2x3 warp, for the 5 keypoints ``kps`` of ``image``."""
    m = alignment_matrix(kps, size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0), m


# ------------------------------------------------------------------------------------------ masks


def face_mask_from_box(bbox: Sequence[float], height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Bool ellipse inscribed in the (scaled) face box."""
    x1, y1, x2, y2 = [float(v) for v in bbox[:4]]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax, ay = max(1.0, (x2 - x1) / 2 * scale), max(1.0, (y2 - y1) / 2 * scale)
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (int(round(ax)), int(round(ay))), 0, 0, 360, 1, -1)
    return mask > 0


def face_mask_from_landmarks(landmarks: np.ndarray, height: int, width: int,
                             bbox: Sequence[float] | None = None) -> np.ndarray:
    """Bool convex hull of the landmarks; with ``bbox`` its top corners are added so the forehead is covered."""
    pts = np.asarray(landmarks, np.float32)[:, :2]
    if bbox is not None:
        x1, y1, x2, y2 = [float(v) for v in bbox[:4]]
        pts = np.vstack([pts, [[x1, y1], [x2, y1]]])
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    mask = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask > 0


# ------------------------------------------------------------------------------------------ results


@dataclass
class FaceResult:
    """The analysed (largest) face of one image."""

    embedding: np.ndarray  # (512,) L2-normalised ArcFace embedding
    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    det_score: float
    kps: np.ndarray  # (5, 2)
    landmarks: np.ndarray | None  # (68, 2) or (106, 2) or None
    landmark_image: np.ndarray  # p_id: (H, W, 3) uint8
    mask: np.ndarray  # M_id: (H, W) bool
    aligned: np.ndarray  # (112, 112, 3) uint8 RGB
    num_faces: int = 1
    all_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))
    embedding_norm: float = 0.0


def face_similarity(a: FaceResult | np.ndarray, b: FaceResult | np.ndarray) -> float | np.ndarray:
    """Cosine similarity of embeddings (CSIM); (N, D) vs (D,) gives (N,)."""
    ea = a.embedding if isinstance(a, FaceResult) else np.asarray(a, np.float32)
    eb = b.embedding if isinstance(b, FaceResult) else np.asarray(b, np.float32)
    na = ea / np.maximum(np.linalg.norm(ea, axis=-1, keepdims=True), 1e-12)
    nb = eb / np.maximum(np.linalg.norm(eb, axis=-1, keepdims=True), 1e-12)
    sim = (na * nb).sum(-1)
    return float(sim) if np.ndim(sim) == 0 else sim


def landmark_points_image(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """p_id via :func:`m2h_core.pose_render.draw_face_landmarks` (points get score 1)."""
    from ..pose_render import draw_face_landmarks

    pts = np.asarray(points, np.float32)
    if pts.shape[-1] == 2:
        pts = np.concatenate([pts, np.ones((len(pts), 1), np.float32)], 1)
    return draw_face_landmarks(pts, height, width)


# ------------------------------------------------------------------------------------------ models


def import_insightface():
    """Import insightface's model zoo, turning any failure into an ImportError that says how to fix it."""
    try:
        from insightface import model_zoo  # noqa: PLC0415 - lazy on purpose
    except Exception as err:  # noqa: BLE001 - any import-time failure
        raise ImportError(
            f"insightface is needed for face analysis but could not be imported ({type(err).__name__}: {err}). "
            "Install it with `pip install insightface` (it needs a C++ compiler on some platforms; prebuilt "
            "wheels exist for Windows). The rest of M2HVideo works without it.") from err
    return model_zoo


def find_face_pack(pack: str = "antelopev2", search_dirs: Sequence[str | os.PathLike] | None = None) -> Path:
    """The folder holding ``pack``'s detector and recognizer (recursive search; names missing files)."""
    if pack not in FACE_PACKS and not Path(pack).exists():
        raise ValueError(f"unknown insightface pack {pack!r}; choose from {sorted(FACE_PACKS)} or give a folder")
    if pack in FACE_PACKS:
        return find_model_file("insightface", get_spec(f"insightface_{pack}").key, search_dirs)
    folder = Path(pack)
    for fp in FACE_PACKS.values():
        if (folder / fp.detector).is_file() and (folder / fp.recognizer).is_file():
            return folder
    raise MissingModelError([f"{p.detector} + {p.recognizer}" for p in FACE_PACKS.values()], "insightface",
                            [str(folder)], detail=f"{folder} holds neither pack's detector + recognizer.")


def _onnx_mean_std(path: Path, default: tuple[float, float]) -> tuple[float, float]:
    """insightface convention: graphs that start with Sub and Mul nodes normalise inside (mean 0, std 1)."""
    import onnx

    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else default


class LandmarkModel:
    """insightface 2d106det / 1k3d68 landmark ONNX (192x192 crop around the face box, 1.5x its size)."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None):
        self.path = Path(path)
        self.session = create_onnx_session(self.path, providers or onnx_providers())
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else 192
        out = self.session.get_outputs()[0].shape[1]
        self.num = 68 if out == 3309 else int(out) // 2
        self.dim = 3 if out == 3309 else 2
        self.mean, self.std = _onnx_mean_std(self.path, (127.5, 128.0))

    def __call__(self, rgb: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
        """Landmarks (num, 2) in image pixels."""
        x1, y1, x2, y2 = [float(v) for v in bbox[:4]]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        s = self.size / (max(x2 - x1, y2 - y1) * 1.5)
        m = np.array([[s, 0, self.size / 2 - s * cx], [0, s, self.size / 2 - s * cy]], np.float32)
        crop = cv2.warpAffine(rgb, m, (self.size, self.size), borderValue=0.0)
        blob = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]
        pred = self.session.run(None, {self.input_name: blob})[0][0]
        pred = pred.reshape(-1, 3 if pred.shape[0] >= 3000 else 2)[-self.num:, :2]
        pts = (pred + 1) * (self.size // 2)
        inv = cv2.invertAffineTransform(m)
        return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def _get_model(model_zoo, path: Path, providers: Sequence[str]):
    """insightface's model_zoo.get_model, with one line naming the file when it does not load (corrupt ONNX)."""
    try:
        return model_zoo.get_model(str(path), providers=providers)
    except Exception as e:  # noqa: BLE001 - onnx / onnxruntime / protobuf errors of a bad file
        raise onnx_load_error(path, e) from None


class FaceAnalyzer:
    """Detector + ArcFace recognizer (+ landmarks when the pack has them) of an insightface pack.

    ``pack``: 'antelopev2' (default), 'buffalo_l', or a folder. ``search_dirs``: folders holding
    ``insightface/models/<pack>/`` (ComfyUI's ``models/``), plus ``$M2H_MODELS``.
    """

    def __init__(self, pack: str = "antelopev2", search_dirs: Sequence[str | os.PathLike] | None = None,
                 providers: Sequence[str] | None = None, *, det_size: tuple[int, int] = (640, 640),
                 det_thresh: float = 0.5, landmarks: bool = True):
        self.folder = find_face_pack(pack, search_dirs)
        fp = next((p for p in FACE_PACKS.values() if (self.folder / p.detector).is_file()
                   and (self.folder / p.recognizer).is_file()), FACE_PACKS.get(pack))
        self.pack = fp
        model_zoo = import_insightface()
        self.providers = list(providers) if providers else onnx_providers()
        ctx = 0 if "CUDAExecutionProvider" in self.providers else -1
        self.det_size = tuple(det_size)
        self.detector = _get_model(model_zoo, self.folder / fp.detector, self.providers)
        if self.detector is None or getattr(self.detector, "taskname", "") != "detection":
            raise ValueError(f"{fp.detector} in {self.folder} is not a face detector (bad or truncated file?)")
        self.detector.prepare(ctx, input_size=self.det_size, det_thresh=det_thresh)
        self.recognizer = _get_model(model_zoo, self.folder / fp.recognizer, self.providers)
        if self.recognizer is None or getattr(self.recognizer, "taskname", "") != "recognition":
            raise ValueError(f"{fp.recognizer} in {self.folder} is not an ArcFace recognizer")
        self.recognizer.prepare(ctx)
        self.landmark_model: LandmarkModel | None = None
        if landmarks:
            for name in fp.landmarks:  # 68 points first (the OpenPose face layout), then 106
                if (self.folder / name).is_file():
                    self.landmark_model = LandmarkModel(self.folder / name, self.providers)
                    break

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (n, 5: x1, y1, x2, y2, score) and keypoints (n, 5, 2) of every face in an RGB image."""
        rgb = to_rgb_uint8(image, name="identity image")
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        boxes, kpss = self.detector.detect(bgr, input_size=self.det_size, max_num=0)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        if kpss is None:
            raise ValueError(f"{self.pack.detector} gives no 5-point keypoints; alignment needs a *_kps detector")
        return np.asarray(boxes, np.float32), np.asarray(kpss, np.float32)

    def embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Raw ArcFace embedding (D,) of one aligned 112x112 RGB crop. insightface's ``get_feat`` takes BGR and
        swaps to RGB itself, so the crop is passed as BGR; the network sees RGB, (x - 127.5) / 127.5."""
        feat = self.recognizer.get_feat([np.ascontiguousarray(aligned_rgb[..., ::-1])])
        return np.asarray(feat, np.float32).reshape(-1)

    def analyze(self, image: np.ndarray, *, mask_mode: str = "auto") -> FaceResult:
        """Analyse the largest face of ``image`` (RGB; grayscale / RGBA / float accepted).

        ``mask_mode``: 'hull' (landmark hull + box top), 'ellipse' (box ellipse) or 'auto' (hull when landmarks).
        Raises :class:`NoFaceError` when no face is found, ValueError for an empty image.
        """
        rgb = to_rgb_uint8(image, name="identity image")
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_FACE_IMAGE_SIDE:
            raise NoFaceError(f"identity image is {w}x{h}; it is too small to hold a detectable face "
                              f"(at least {MIN_FACE_IMAGE_SIDE} px per side, ideally a face of {SMALL_FACE_WIDTH}+ px)")
        boxes, kpss = self.detect(rgb)
        if len(boxes) == 0:
            raise NoFaceError("no face found in the identity image; use a clear, front-facing photo of one "
                              f"person with the face at least ~{SMALL_FACE_WIDTH} px wide")
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        i = int(np.argmax(areas))
        bbox, kps = boxes[i, :4], kpss[i]
        aligned, _ = align_face(rgb, kps, 112)
        raw = self.embed(aligned)
        norm = float(np.linalg.norm(raw))
        emb = raw / max(norm, 1e-12)
        lmk = self.landmark_model(rgb, bbox) if self.landmark_model is not None else None
        pts = lmk if lmk is not None else kps
        if mask_mode == "auto":
            mask_mode = "hull" if lmk is not None else "ellipse"
        if mask_mode == "hull":
            mask = face_mask_from_landmarks(pts, h, w, bbox)
        elif mask_mode == "ellipse":
            mask = face_mask_from_box(bbox, h, w)
        else:
            raise ValueError(f"mask_mode must be 'auto', 'hull' or 'ellipse', got {mask_mode!r}")
        return FaceResult(emb.astype(np.float32), bbox.astype(np.float32), float(boxes[i, 4]), kps, lmk,
                          landmark_points_image(pts, h, w), mask, aligned, len(boxes), boxes, norm)

    __call__ = analyze


# ------------------------------------------------------------------------------------------ several photos

#: a photo whose embedding has cosine below this to the mean of the others is dropped (issue 16)
OUTLIER_COSINE = 0.4
#: a set whose mean pairwise cosine is below this shows different people (ArcFace: the same person scores
#: ~0.5-0.8 across photos, two people ~0-0.2)
SAME_PERSON_COSINE = 0.25


@dataclass(frozen=True)
class EmbeddingSet:
    """Several photos' ArcFace embeddings combined: the L2-normalised mean of the kept ones."""

    mean: np.ndarray  # (D,) unit norm, over the kept photos
    similarity: np.ndarray  # (N,) cosine of every photo to `mean`
    kept: np.ndarray  # (N,) bool
    mean_pairwise: float  # over all photos, before any was dropped


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_embedding(embeddings: np.ndarray, outlier_cosine: float = OUTLIER_COSINE) -> EmbeddingSet:
    """L2-normalise each embedding, drop outliers one at a time (the worst first, while its cosine to the mean of
    the *other* kept photos is below `outlier_cosine` and more than two remain: a photo cannot vouch for itself),
    and average the rest (re-normalised). The caller decides what a low `mean_pairwise` means."""
    e = _unit(np.asarray(embeddings, np.float32).reshape(len(embeddings), -1))
    n = len(e)
    if n == 0:
        raise ValueError("no embeddings to average")
    sims = e @ e.T
    pair = float((sims.sum() - n) / (n * (n - 1))) if n > 1 else 1.0
    kept = np.ones(n, bool)
    while kept.sum() > 2:
        idx = np.nonzero(kept)[0]
        loo = np.array([float(e[i] @ _unit(e[idx[idx != i]].sum(0))) for i in idx])
        worst = int(np.argmin(loo))
        if loo[worst] >= outlier_cosine:
            break
        kept[idx[worst]] = False
    mean = _unit(e[kept].mean(0))
    return EmbeddingSet(mean.astype(np.float32), (e @ mean).astype(np.float32), kept, pair)


def frontal_score(kps: np.ndarray) -> float:
    """1 for a face looking straight at the camera, towards 0 when turned: the nose tip's horizontal offset from
    the eyes' midpoint (in the eye line's frame, so roll does not count) relative to the eye distance."""
    k = np.asarray(kps, np.float64).reshape(5, 2)
    d = k[1] - k[0]
    dist = float(np.hypot(*d))
    if dist < 1e-6:
        return 0.0
    u = d / dist
    off = abs(float((k[2] - (k[0] + k[1]) / 2) @ u)) / dist
    return float(max(0.0, 1.0 - 2.0 * off))


def sharpness(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned 112x112 crop's grey levels (higher = sharper)."""
    grey = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def best_photo(faces: Sequence[FaceResult], kept: np.ndarray) -> tuple[int, str]:
    """Index of the kept face to take x_id / p_id from: the most frontal, then the sharpest (score = frontal +
    0.5 x sharpness relative to the sharpest kept face), and why, in words."""
    idx = [i for i in range(len(faces)) if kept[i]]
    front = {i: frontal_score(faces[i].kps) for i in idx}
    sharp = {i: sharpness(faces[i].aligned) for i in idx}
    top = max(sharp.values()) or 1.0
    score = {i: front[i] + 0.5 * sharp[i] / top for i in idx}
    best = max(idx, key=lambda i: score[i])
    return best, (f"frontal {front[best]:.2f} (1 = straight at the camera), sharpness {sharp[best] / top:.2f} of "
                  "the sharpest")


def face_width(face: FaceResult) -> float:
    """Width of the face box in the photo's pixels."""
    return float(face.bbox[2] - face.bbox[0])


def small_face_note(faces: Sequence[FaceResult], names: Sequence[str], best: int) -> str | None:
    """One line when a face is under `SMALL_FACE_WIDTH` px (ArcFace then sees it upscaled to 112 px, blurred):
    its width, and what the several-photos rule does about it (one photo: what giving several would do; several:
    which photo x_id / p_id come from, and the photo with the largest face). None when every face is big enough."""
    widths = [face_width(f) for f in faces]
    small = [i for i, w in enumerate(widths) if w < SMALL_FACE_WIDTH]
    if not small:
        return None
    base = [os.path.basename(os.fspath(n)) for n in names]
    if len(faces) == 1:
        w = widths[0]
        return (f"small face: the face in {base[0]} is {w:.0f} px wide, so ArcFace sees it upscaled "
                f"{112 / max(w, 1.0):.1f}x (the identity comes out blurred); use a photo with the face at least "
                f"~{SMALL_FACE_WIDTH} px wide, or give several photos of the person: the most frontal, sharpest face "
                "is then used for x_id / p_id and all the embeddings are averaged")
    listed = ", ".join(f"{base[i]} {widths[i]:.0f} px" for i in small)
    largest = int(np.argmax(widths))
    pick = f"x_id / p_id come from {base[best]} (face {widths[best]:.0f} px wide: the most frontal, sharpest)"
    if largest != best:
        pick += f"; the largest face is in {base[largest]} ({widths[largest]:.0f} px)"
    return f"small face: {listed} wide (under {SMALL_FACE_WIDTH} px, upscaled for ArcFace); {pick}"


def faces_preview(faces: Sequence[FaceResult], emb: EmbeddingSet, best: int, size: int = 112) -> np.ndarray:
    """A strip of the aligned faces, each labelled with its cosine to the mean; dropped ones dimmed with a red
    frame, the one used for x_id / p_id framed green. (size, N * size, 3) uint8."""
    tiles = []
    for i, f in enumerate(faces):
        t = cv2.resize(np.ascontiguousarray(f.aligned), (size, size), interpolation=cv2.INTER_AREA)
        if not emb.kept[i]:
            t = (t * 0.4).astype(np.uint8)
        colour = (0, 200, 0) if i == best else (220, 40, 40) if not emb.kept[i] else (200, 200, 200)
        cv2.rectangle(t, (0, 0), (size - 1, size - 1), colour, 2)
        cv2.putText(t, f"{emb.similarity[i]:.2f}", (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * size / 112,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(t)
    return np.concatenate(tiles, 1)
