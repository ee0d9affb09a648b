"""Human parsing: label sets and the mannequin rule, the SCHP ONNX runner (real signature, BGR pre-processing)
on a synthetic mannequin frame with known regions, the SegFormer folder runner, and mask utilities."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from m2h_core.preprocess import masks as mk
from m2h_core.preprocess.model_files import MissingModelError
from m2h_core.preprocess.parsing import (ATR, LIP, SEGFORMER_CLOTHES, SCHPParser, SegformerClothesParser,
                                         load_parser, masks_from_labels)
from tests.test_preprocess_builders import build_schp, build_segformer


def mannequin_frame(h=256, w=128):
    """White studio, skin-coloured bare mannequin head and arms, red shirt, blue trousers."""
    f = np.full((h, w, 3), 255, np.uint8)
    f[20:60, 44:84] = (230, 190, 160)
    f[60:130, 10:30] = (230, 190, 160)
    f[60:130, 98:118] = (230, 190, 160)
    f[60:140, 30:98] = (200, 30, 30)
    f[140:240, 34:94] = (30, 30, 200)
    return f


def expected_clothing(h=256, w=128):
    m = np.zeros((h, w), bool)
    m[60:140, 30:98] = True
    m[140:240, 34:94] = True
    return m


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("models")
    build_schp(r / "human_parsing" / "parsing_atr.onnx")
    build_segformer(r / "human_parsing" / "segformer_b2_clothes", constant_label=4)
    return r


# ------------------------------------------------------------------------------------------ label sets


def test_label_sets_and_clothing_groups():
    assert len(LIP.labels) == 20 and len(ATR.labels) == 18 and SEGFORMER_CLOTHES.labels == ATR.labels
    assert [ATR.labels[i] for i in ATR.clothing_ids()] == ["Upper-clothes", "Skirt", "Pants", "Dress", "Scarf"]
    assert [LIP.labels[i] for i in LIP.clothing_ids()] == ["Upper-clothes", "Dress", "Coat", "Pants",
                                                            "Jumpsuits", "Scarf", "Skirt"]
    with_acc = ATR.clothing_ids(("upper", "bag", "belt", "hat"))
    assert sorted(ATR.labels[i] for i in with_acc) == ["Bag", "Belt", "Hat", "Upper-clothes"]


def test_mannequin_body_parts_never_count_as_clothing():
    for ls in (LIP, ATR, SEGFORMER_CLOTHES):
        ids = set(ls.clothing_ids(("upper", "dress", "coat", "pants", "skirt", "jumpsuit", "scarf") +
                                  ("hat", "bag", "belt", "glove", "socks", "shoes", "sunglasses")))
        body = {i for i, n in enumerate(ls.labels) if n in ("Background", "Face", "Hair", "Left-arm", "Right-arm",
                                                             "Left-leg", "Right-leg")}
        assert ids.isdisjoint(body)
        assert 0 not in ls.person_ids()
    with pytest.raises(ValueError, match="body parts"):
        ATR.clothing_ids(("upper", "arms"))
    with pytest.raises(ValueError, match="unknown"):
        ATR.clothing_ids(("jacket",))
    labels = np.array([[[0, 4, 14, 11, 6]]])  # bg, upper, left-arm, face, pants
    cloth, person, _ = masks_from_labels(labels, ATR)
    assert cloth.tolist() == [[[False, True, False, False, True]]]
    assert person.tolist() == [[[False, True, True, True, True]]]


# ------------------------------------------------------------------------------------------ SCHP ONNX


def test_schp_mannequin_known_regions_and_bgr(root):
    p = SCHPParser(search_dirs=[root], providers=["CPUExecutionProvider"])
    assert p.label_set is ATR and p.input_size == (512, 512)
    f = mannequin_frame()
    r = p.parse(np.stack([f, f]), fill_holes=False)
    assert r.labels.shape == (2, 256, 128) and r.clothing_mask.dtype == bool
    # interiors get the exact labels (a swapped RGB/BGR order would exchange shirt and trousers)
    assert r.labels[0, 100, 64] == 4 and r.labels[0, 200, 64] == 6
    assert r.labels[0, 100, 20] == 14 and r.labels[0, 40, 64] == 14 and r.labels[0, 5, 5] == 0
    exp = expected_clothing()
    iou = (r.clothing_mask[0] & exp).sum() / (r.clothing_mask[0] | exp).sum()
    assert iou > 0.97
    assert not r.clothing_mask[0, 65:125, 12:28].any()  # bare arms are not clothing
    assert r.person_mask[0, 40, 64] and not r.person_mask[0, 5, 5]
    assert (r.masked_frames[0][~r.clothing_mask[0]] == 0).all()
    assert (r.masked_frames[0][r.clothing_mask[0]] == f[r.clothing_mask[0]]).all()


def test_schp_non_square_photo_and_accessory_groups(root):
    p = SCHPParser(root / "human_parsing" / "parsing_atr.onnx")
    img = skimage.data.astronaut()[:, 100:400]  # real photo, 512x300
    r = p.parse(img, groups=("upper", "hat"))
    assert r.labels.shape == (1, 512, 300)
    assert set(np.unique(r.labels)) <= {0, 2, 4, 6, 14}


def test_schp_lip_detected_from_classes(tmp_path):
    path = build_schp(tmp_path / "my_parser.onnx", num_classes=20, size=473,
                      colours={(255, 255, 255): 0, (200, 30, 30): 7})  # red -> Coat
    p = SCHPParser(path)
    assert p.label_set is LIP and p.input_size == (473, 473)
    r = p.parse(mannequin_frame())
    assert r.labels[0, 100, 64] == 7 and r.clothing_mask[0, 100, 64]


# ------------------------------------------------------------------------------------------ SegFormer


def test_segformer_folder_runner(root):
    s = SegformerClothesParser(search_dirs=[root])
    assert s.label_set is SEGFORMER_CLOTHES and s.input_size == (128, 128)
    r = s.parse(np.stack([mannequin_frame()] * 3), batch_size=2)
    assert r.labels.shape == (3, 256, 128)
    assert (r.labels == 4).all() and r.clothing_mask.all()  # classifier biased to Upper-clothes


def test_segformer_refuses_pickle_only_folder(tmp_path):
    d = tmp_path / "human_parsing" / "segformer_b2_clothes"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(MissingModelError, match="safetensors"):
        SegformerClothesParser(search_dirs=[tmp_path])


def test_load_parser_auto_and_missing(root, tmp_path):
    assert isinstance(load_parser(search_dirs=[root]), SegformerClothesParser)
    assert isinstance(load_parser("parsing_atr.onnx", search_dirs=[root]), SCHPParser)
    with pytest.raises(MissingModelError, match="parsing_atr.onnx"):
        load_parser(search_dirs=[tmp_path])


def test_parser_bad_inputs(root):
    p = SCHPParser(search_dirs=[root])
    with pytest.raises(ValueError, match="empty"):
        p.parse(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        p.parse(np.zeros((0, 8, 8, 3), np.uint8))
    gray = cv2.cvtColor(mannequin_frame(), cv2.COLOR_RGB2GRAY)
    assert p.parse(gray).labels.shape == (1, 256, 128)
    rgba = np.concatenate([mannequin_frame(), np.full((256, 128, 1), 255, np.uint8)], -1)
    assert (p.parse(rgba).labels == p.parse(mannequin_frame()).labels).all()
    assert p.parse(np.full((3, 3, 3), 255, np.uint8)).labels.shape == (1, 3, 3)  # tiny


# ------------------------------------------------------------------------------------------ masks


def test_fill_grow_feather():
    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    m[18:22, 18:22] = False  # hole
    assert mk.fill_holes(m)[20, 20] and not mk.fill_holes(m)[5, 5]
    g = mk.grow_mask(m, 3)  # exactly 3 px out along the sides; the elliptical kernel rounds the corners
    assert np.flatnonzero(g[:, 20]).tolist() == list(range(7, 33))
    assert np.flatnonzero(g[20]).tolist() == list(range(7, 33))
    assert not g[7, 7] and g[8, 8]
    s = mk.grow_mask(mk.fill_holes(m), -3)  # eroding the filled 20x20 square by 3 px leaves rows/cols 13..26
    expected = np.zeros((40, 40), bool)
    expected[13:27, 13:27] = True
    assert np.array_equal(s, expected)
    stack = mk.grow_mask(np.stack([m, np.zeros_like(m), m]), 3)  # (N, H, W) stacks: frame by frame
    assert stack.shape == (3, 40, 40) and np.array_equal(stack[0], g) and not stack[1].any()
    f = mk.feather_mask(mk.fill_holes(m), 4)
    assert f.dtype == np.float32 and f[20, 20] == pytest.approx(1.0, abs=1e-3) and f[0, 0] == 0
    # a blurred step with a symmetric kernel: mirror pixels about the edge sum to 1, and the edge is soft
    assert f[10, 20] + f[9, 20] == pytest.approx(1.0, abs=1e-5) and 0.55 < f[10, 20] < 0.8


def test_temporal_smoothing_removes_flicker():
    seq = np.zeros((5, 4, 4), bool)
    seq[:, 1:3, 1:3] = True
    seq[2] = False  # one-frame dropout
    seq[3, 0, 0] = True  # one-frame speck
    out = mk.temporal_smooth_masks(seq, 3)
    assert out[2, 1:3, 1:3].all() and not out[3, 0, 0]
    med = mk.temporal_smooth_masks(seq.astype(np.float32), 3, "median")
    assert med.dtype == np.float32 and med[2, 1, 1] == 1.0


def test_user_mask_sequence(tmp_path):
    d = tmp_path / "masks"
    d.mkdir()
    for i in range(3):
        m = np.zeros((20, 10), np.uint8)
        m[5:15, 2:8] = 255
        cv2.imwrite(str(d / f"{i:03d}.png"), m)
    seq = mk.load_mask_sequence(d, num_frames=3, size=(20, 10))
    assert seq.shape == (3, 20, 10) and seq.dtype == bool and seq[0, 10, 5] and not seq[0, 0, 0]
    big = mk.load_mask_sequence(d, size=(40, 20))  # resized with nearest: every pixel becomes a 2x2 block
    assert np.array_equal(big, np.kron(seq, np.ones((1, 2, 2), bool)))
    half = mk.load_mask_sequence(d, size=(10, 5))
    expected = np.zeros((3, 10, 5), bool)
    expected[:, 3:8, 1:4] = True  # OpenCV's nearest takes source pixel 2i: rows 5..14 -> 3..7, cols 2..7 -> 1..3
    assert np.array_equal(half, expected), half[0].astype(int)
    with pytest.raises(ValueError, match="3 frames but the video has 4"):
        mk.load_mask_sequence(d, num_frames=4)
    with pytest.raises(ValueError, match="WxH"):
        mk.load_mask_sequence(d, size=(40, 20), resize=False)
    single = mk.load_mask_sequence(d / "000.png", num_frames=5)
    assert single.shape == (5, 20, 10)
    np.save(tmp_path / "m.npy", np.ones((2, 4, 4), np.float32) * 0.7)
    assert mk.load_mask_sequence(tmp_path / "m.npy").all()
    assert mk.load_mask_sequence(np.zeros((4, 4), np.uint8)).shape == (1, 4, 4)
    with pytest.raises(FileNotFoundError):
        mk.load_mask_sequence(tmp_path / "nope")


def test_to_rgb_uint8_variants():
    assert mk.to_rgb_uint8(np.zeros((4, 5))).shape == (4, 5, 3)
    assert mk.to_rgb_uint8(np.ones((4, 5, 3), np.float32))[0, 0, 0] == 255
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0
    assert (mk.to_rgb_uint8(rgba) == 0).all()
    with pytest.raises(ValueError, match="empty"):
        mk.to_rgb_uint8(np.zeros((0, 0, 3)))
    with pytest.raises(ValueError, match="shape"):
        mk.to_rgb_uint8(np.zeros((4, 4, 5)))
