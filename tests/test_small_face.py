"""A small face in the identity photo (issue 32): one line with its width and what the several-photos rule does.

The analyser is a stand-in returning prepared `FaceResult`s (box, keypoints, aligned crop): what is under test is
`combine_photos`' choice and its note, which the CLI prints and the node logs as a warning."""

import logging

import cv2
import numpy as np
import torch

from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import inputs
from m2h_core.preprocess import face as fc

FRONT = np.array([[40, 50], [72, 50], [56, 70], [44, 90], [68, 90]], np.float32)
TURNED = FRONT + np.array([[0, 0], [0, 0], [10, 0], [0, 0], [0, 0]], np.float32)


class Prepared:
    """analyze(photo) -> the FaceResult prepared for that photo (keyed by its first pixel value)."""

    def __init__(self, faces: dict[int, fc.FaceResult]):
        self.faces = faces

    def analyze(self, photo):
        return self.faces[int(photo[0, 0, 0])]


def face(width: float, kps: np.ndarray = FRONT, seed: int = 0) -> fc.FaceResult:
    crop = cv2.resize(generate_clip(seed, n_frames=1, height=256, width=192).identity_image[:128, 40:168], (112, 112),
                      interpolation=cv2.INTER_AREA)
    e = np.ones(512, np.float32) / np.sqrt(512)
    return fc.FaceResult(e, np.array([10, 10, 10 + width, 10 + 1.2 * width], np.float32), 0.9, kps * width / 112,
                         None, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool), crop)


def photos(n: int) -> list[np.ndarray]:
    return [np.full((200, 160, 3), i, np.uint8) for i in range(n)]


def test_one_small_photo_is_used_with_a_warning_naming_its_width():
    res = inputs.combine_photos(photos(1), Prepared({0: face(40)}), ["me.jpg"])
    note = [n for n in res.notes if n.startswith("small face")]
    assert len(note) == 1 and "me.jpg is 40 px wide" in note[0] and "upscaled 2.8x" in note[0]
    assert "several photos" in note[0] and "most frontal, sharpest" in note[0]
    assert not any(n.startswith("small face") for n in inputs.combine_photos(photos(1), Prepared({0: face(100)}),
                                                                              ["me.jpg"]).notes)
    assert any("99 px" in n for n in inputs.combine_photos(photos(1), Prepared({0: face(99)}), ["me.jpg"]).notes)


def test_several_photos_name_the_small_ones_the_one_used_and_the_largest():
    """a.png is small but the most frontal (so it is used); b.png has the largest face; c.png is small too."""
    faces = {0: face(40, FRONT), 1: face(150, TURNED), 2: face(90, TURNED * 1.02)}
    res = inputs.combine_photos(photos(3), Prepared(faces), ["a.png", "b.png", "c.png"])
    assert res.best == 0
    note = [n for n in res.notes if n.startswith("small face")]
    assert len(note) == 1
    assert "a.png 40 px, c.png 90 px wide" in note[0] and "b.png 150" not in note[0]
    assert "x_id / p_id come from a.png (face 40 px wide" in note[0]
    assert "the largest face is in b.png (150 px)" in note[0]
    # the largest face chosen anyway: no "largest" clause
    faces = {0: face(40, TURNED), 1: face(150, FRONT)}
    note = [n for n in inputs.combine_photos(photos(2), Prepared(faces), ["a.png", "b.png"]).notes
            if n.startswith("small face")]
    assert "x_id / p_id come from b.png (face 150 px" in note[0] and "largest" not in note[0]


def test_the_node_logs_it_as_a_warning(caplog):
    from nodes.logic import encode_identity

    img = torch.zeros(1, 200, 160, 3)
    with caplog.at_level(logging.INFO, logger="M2HVideo"):
        encode_identity(img, Prepared({0: face(40)}), 64, 32, placement="fit_photo")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "40 px wide" in warned[0].getMessage()
