"""Human parsing for the clothing mask M_c (paper Sec. III: a pre-trained segmentation model on v_m).

Two runners, one label-set abstraction:

* :class:`SegformerClothesParser` -- a transformers ``SegformerForSemanticSegmentation`` folder
  (``segformer_b2_clothes``, 18 labels), loaded from safetensors only, offline;
* :class:`SCHPParser` -- an SCHP ONNX export (``parsing_atr.onnx`` 18 labels at 512x512 or
  ``parsing_lip.onnx`` 20 labels at 473x473): input ``input.1``, outputs (parsing, fusion, edge) at 1/4 size;
  we use the fused logits (output 1). Pre-processing as SCHP: the whole image affine-fitted (aspect kept,
  centred, border 0) into the input, **BGR**, /255, mean (0.406, 0.456, 0.485), std (0.225, 0.224, 0.229).

Mannequins: the bare mannequin body parses as skin (face / arms / legs) or background. Only *clothing* labels
make up M_c, so bare mannequin parts never count as clothing; body groups cannot be selected as clothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .masks import apply_mask, refine_mask, temporal_smooth_masks, to_frames
from .model_files import MissingModelError, create_onnx_session, find_model_file, onnx_providers

# Canonical groups. Clothing groups may be selected; body groups never count as clothing.
CLOTHING_GROUPS = ("upper", "dress", "coat", "pants", "skirt", "jumpsuit", "scarf")
ACCESSORY_GROUPS = ("hat", "bag", "belt", "glove", "socks", "shoes", "sunglasses")
BODY_GROUPS = ("face", "hair", "arms", "legs", "background")
DEFAULT_CLOTHING = CLOTHING_GROUPS

_GROUP_OF_NAME = {
    "background": "background", "hat": "hat", "hair": "hair", "glove": "glove", "sunglasses": "sunglasses",
    "upper-clothes": "upper", "upper_clothes": "upper", "upperclothes": "upper", "dress": "dress",
    "coat": "coat", "socks": "socks", "pants": "pants", "jumpsuits": "jumpsuit", "jumpsuit": "jumpsuit",
    "scarf": "scarf", "skirt": "skirt", "face": "face", "left-arm": "arms", "right-arm": "arms",
    "left-leg": "legs", "right-leg": "legs", "left-shoe": "shoes", "right-shoe": "shoes", "belt": "belt",
    "bag": "bag", "torso-skin": "arms", "neck": "face",
}


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "-").replace("_", "-")


def validate_clothing_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """The groups, or ValueError for body groups (bare mannequin parts parse as them) and unknown names."""
    groups = tuple(groups)
    choices = ", ".join(CLOTHING_GROUPS + ACCESSORY_GROUPS)
    bad = [g for g in groups if g in BODY_GROUPS]
    if bad:
        raise ValueError(f"{bad} are body parts, not clothing (a bare mannequin parses as them); choose from {choices}")
    unknown = [g for g in groups if g not in CLOTHING_GROUPS + ACCESSORY_GROUPS]
    if unknown:
        raise ValueError(f"unknown clothing groups {unknown}; choose from {choices}")
    return groups


@dataclass(frozen=True)
class LabelSet:
    """A parser's label names (index = class id) and, per label, its canonical group."""

    name: str
    labels: tuple[str, ...]
    input_size: tuple[int, int] | None = None  # (H, W) the model expects, when fixed

    def group(self, label_id: int) -> str:
        """Canonical group of a label id ('upper', 'arms', 'background', ...); unknown names -> 'other'."""
        return _GROUP_OF_NAME.get(_norm(self.labels[label_id]), "other")

    def ids(self, groups: Iterable[str]) -> list[int]:
        """Label ids whose group is in ``groups``."""
        g = set(groups)
        return [i for i in range(len(self.labels)) if self.group(i) in g]

    def clothing_ids(self, groups: Iterable[str] = DEFAULT_CLOTHING) -> list[int]:
        """Label ids making up M_c. Raises ValueError for body groups (bare mannequin parts) or unknown groups."""
        return self.ids(validate_clothing_groups(groups))

    def person_ids(self) -> list[int]:
        """Every label except background."""
        return [i for i in range(len(self.labels)) if self.group(i) != "background"]


LIP = LabelSet("lip", ("Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat",
                       "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
                       "Left-leg", "Right-leg", "Left-shoe", "Right-shoe"), (473, 473))
ATR = LabelSet("atr", ("Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress",
                       "Belt", "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm",
                       "Right-arm", "Bag", "Scarf"), (512, 512))
SEGFORMER_CLOTHES = LabelSet("segformer_clothes", ATR.labels, (512, 512))  # same 18 names and order as ATR
LABEL_SETS = {s.name: s for s in (LIP, ATR, SEGFORMER_CLOTHES)}


def label_set_from_names(names: Sequence[str], name: str = "custom") -> LabelSet:
    """A LabelSet for a model's own ``id2label`` (a known set when the names match one)."""
    for known in LABEL_SETS.values():
        if [_norm(n) for n in names] == [_norm(n) for n in known.labels]:
            return known if known is not ATR else SEGFORMER_CLOTHES
    return LabelSet(name, tuple(names))


# ------------------------------------------------------------------------------------------ results


@dataclass
class ParseResult:
    """Per-frame label maps and the masks derived from them."""

    labels: np.ndarray  # (N, H, W) uint8 class ids
    clothing_mask: np.ndarray  # (N, H, W) bool: M_c
    person_mask: np.ndarray  # (N, H, W) bool
    masked_frames: np.ndarray  # (N, H, W, 3) uint8: v ⊙ M_c
    label_set: LabelSet
    clothing_ids: list[int] = field(default_factory=list)


def masks_from_labels(labels: np.ndarray, label_set: LabelSet, groups: Iterable[str] = DEFAULT_CLOTHING
                      ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(clothing mask, person mask, clothing ids) from (N, H, W) label maps."""
    ids = label_set.clothing_ids(groups)
    return np.isin(labels, ids), np.isin(labels, label_set.person_ids()), ids


class HumanParser:
    """Base class: subclasses implement :meth:`parse_labels`; :meth:`parse` builds M_c and v ⊙ M_c."""

    label_set: LabelSet = ATR

    def parse_labels(self, frames: Sequence[np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse(self, frames: np.ndarray | Sequence[np.ndarray], groups: Iterable[str] = DEFAULT_CLOTHING, *,
              fill_holes: bool = True, grow_px: int = 0, temporal_window: int = 1,
              batch_size: int = 4) -> ParseResult:
        """Parse (N, H, W, 3) uint8 RGB frames; returns labels, M_c, person mask and masked frames.

        ``groups``: clothing groups (accessories like 'bag', 'belt', 'hat' may be added). ``fill_holes`` /
        ``grow_px`` refine each mask; ``temporal_window`` > 1 applies a majority vote over frames.
        """
        imgs = to_frames(frames)
        if not imgs:
            raise ValueError("no frames to parse")
        labels = np.concatenate([self.parse_labels(imgs[i:i + batch_size])
                                 for i in range(0, len(imgs), batch_size)]).astype(np.uint8)
        cloth, person, ids = masks_from_labels(labels, self.label_set, groups)
        if fill_holes or grow_px:
            cloth = np.stack([refine_mask(m, fill=fill_holes, grow_px=grow_px) for m in cloth])
        if temporal_window > 1:
            cloth = temporal_smooth_masks(cloth, temporal_window, "majority")
            person = temporal_smooth_masks(person, temporal_window, "majority")
        sizes = {f.shape for f in imgs}
        masked = apply_mask(np.stack(imgs), cloth) if len(sizes) == 1 else None
        return ParseResult(labels, cloth, person, masked, self.label_set, ids)

    __call__ = parse


def _fit_warp(h: int, w: int, out_hw: tuple[int, int]) -> np.ndarray:
    """Affine putting a (h, w) image centred into out_hw keeping its aspect (SCHP's whole-image box)."""
    oh, ow = out_hw
    s = min(ow / w, oh / h)
    return np.array([[s, 0, (ow - s * w) / 2], [0, s, (oh - s * h) / 2]], np.float32)


def _warp_channels(x: np.ndarray, m: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """cv2.warpAffine of an (H, W, C) float array with any C (in chunks of 4 channels)."""
    chunks = [cv2.warpAffine(np.ascontiguousarray(x[..., i:i + 4]), m, size_wh, flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
              for i in range(0, x.shape[-1], 4)]
    chunks = [c[..., None] if c.ndim == 2 else c for c in chunks]
    return np.concatenate(chunks, -1)


class SCHPParser(HumanParser):
    """SCHP ONNX parser (``parsing_atr.onnx`` / ``parsing_lip.onnx``)."""

    MEAN_BGR = np.array([0.406, 0.456, 0.485], np.float32)
    STD_BGR = np.array([0.225, 0.224, 0.229], np.float32)

    def __init__(self, model: str | os.PathLike = "parsing_atr.onnx", providers: Sequence[str] | None = None, *,
                 search_dirs: Sequence[str | os.PathLike] | None = None, label_set: LabelSet | str | None = None,
                 threads: int | None = None):
        self.path = find_model_file("human_parsing", model, search_dirs)
        self.session = create_onnx_session(self.path, providers or onnx_providers(), threads)
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        outs = self.session.get_outputs()
        self._fused = outs[1].name if len(outs) >= 3 else outs[0].name
        ncls = outs[1].shape[1] if len(outs) >= 3 else outs[0].shape[1]
        if isinstance(label_set, str):
            label_set = LABEL_SETS[label_set]
        if label_set is None:
            stem = Path(self.path).stem.lower()
            label_set = LIP if ("lip" in stem or ncls == 20) else ATR
        self.label_set = label_set
        if isinstance(ncls, int) and ncls != len(label_set.labels):
            raise ValueError(f"{self.path.name} outputs {ncls} classes but label set {label_set.name!r} has "
                             f"{len(label_set.labels)}")
        fixed = inp.shape[2:4]
        self.input_size = tuple(fixed) if all(isinstance(v, int) for v in fixed) else label_set.input_size
        b = inp.shape[0]
        self._batch = b if isinstance(b, int) and b > 0 else None

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(3, H_in, W_in) float32 input blob and the 2x3 warp for one RGB frame."""
        h, w = frame.shape[:2]
        m = _fit_warp(h, w, self.input_size)
        bgr = np.ascontiguousarray(frame[..., ::-1])
        warped = cv2.warpAffine(bgr, m, (self.input_size[1], self.input_size[0]), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        x = (warped.astype(np.float32) / 255.0 - self.MEAN_BGR) / self.STD_BGR
        return x.transpose(2, 0, 1), m

    def logits(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Fused logits per frame, (H, W, C) at the frame's size."""
        blobs, warps = zip(*(self.preprocess(f) for f in frames))
        batch = np.stack(blobs).astype(np.float32)
        step = self._batch or len(batch)
        outs = []
        for i in range(0, len(batch), step):
            chunk = batch[i:i + step]
            pad = (self._batch - len(chunk)) if self._batch else 0
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            outs.append(self.session.run([self._fused], {self._input: chunk})[0][:len(batch[i:i + step])])
        fused = np.concatenate(outs)
        res = []
        ih, iw = self.input_size
        for f, m, lg in zip(frames, warps, fused):
            up = cv2.resize(np.ascontiguousarray(lg.transpose(1, 2, 0)), (iw, ih), interpolation=cv2.INTER_LINEAR)
            up = up[..., None] if up.ndim == 2 else up
            inv = cv2.invertAffineTransform(m)
            res.append(_warp_channels(up, inv, (f.shape[1], f.shape[0])))
        return res

    def parse_labels(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([lg.argmax(-1) for lg in self.logits(frames)])


class SegformerClothesParser(HumanParser):
    """transformers SegFormer clothes parser from a local folder (``segformer_b2_clothes``), safetensors only."""

    def __init__(self, model: str | os.PathLike = "segformer_b2_clothes", device: str = "cpu", *,
                 search_dirs: Sequence[str | os.PathLike] | None = None, dtype=None):
        import torch
        from transformers import SegformerForSemanticSegmentation

        self.path = find_model_file("human_parsing", model, search_dirs)
        if not self.path.is_dir():
            raise ValueError(f"{self.path} is not a transformers model folder (config.json + model.safetensors)")
        if not any(self.path.glob("*.safetensors")):
            raise MissingModelError(["model.safetensors"], "human_parsing", [str(self.path)],
                                    "https://huggingface.co/mattmdjaga/segformer_b2_clothes",
                                    detail="Only .safetensors weights are loaded (pickled .bin files are refused).")
        self.torch = torch
        self.device = torch.device(device)
        self.model = SegformerForSemanticSegmentation.from_pretrained(
            str(self.path), local_files_only=True, use_safetensors=True).eval().to(self.device)
        if dtype is not None:
            self.model = self.model.to(dtype)
        id2label = self.model.config.id2label
        self.label_set = label_set_from_names([id2label[i] for i in sorted(id2label)], self.path.name)
        cfg = self._processor_config()
        size = cfg.get("size", {"height": 512, "width": 512})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        self.input_size = (int(size.get("height", 512)), int(size.get("width", 512)))
        self.mean = np.array(cfg.get("image_mean", [0.485, 0.456, 0.406]), np.float32)
        self.std = np.array(cfg.get("image_std", [0.229, 0.224, 0.225]), np.float32)

    def _processor_config(self) -> dict:
        p = self.path / "preprocessor_config.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def parse_labels(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        torch = self.torch
        ih, iw = self.input_size
        x = np.stack([(cv2.resize(f, (iw, ih), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
                       - self.mean) / self.std for f in frames]).transpose(0, 3, 1, 2)
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            logits = self.model(pixel_values=torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype)).logits
            out = []
            for i, f in enumerate(frames):
                up = torch.nn.functional.interpolate(logits[i:i + 1].float(), size=f.shape[:2], mode="bilinear",
                                                     align_corners=False)
                out.append(up.argmax(1)[0].cpu().numpy())
        return np.stack(out)


def load_parser(name_or_path: str | os.PathLike = "auto", *, search_dirs: Sequence[str | os.PathLike] | None = None,
                device: str = "cpu", providers: Sequence[str] | None = None) -> HumanParser:
    """A parser by file / folder name or path; ``'auto'`` tries segformer_b2_clothes, parsing_atr.onnx,
    parsing_lip.onnx in that order and raises :class:`MissingModelError` naming all three when none is found."""
    text = str(name_or_path)
    if text != "auto":
        if text.endswith(".onnx"):
            return SCHPParser(text, providers, search_dirs=search_dirs)
        return SegformerClothesParser(text, device, search_dirs=search_dirs)
    errors = []
    for cand in ("segformer_b2_clothes", "parsing_atr.onnx", "parsing_lip.onnx"):
        try:
            return load_parser(cand, search_dirs=search_dirs, device=device, providers=providers)
        except MissingModelError as err:
            errors.append(err)
    raise MissingModelError(["segformer_b2_clothes", "parsing_atr.onnx", "parsing_lip.onnx"], "human_parsing",
                            errors[0].looked_in, "segformer: https://huggingface.co/mattmdjaga/segformer_b2_clothes; "
                            "SCHP ONNX: OOTDiffusion / IDM-VTON checkpoints/humanparsing",
                            detail="No human-parsing model found; or give a clothing-mask sequence instead.")
