"""Identity from several photos (issue 16): averaged ArcFace embeddings, outliers dropped, a mixed set refused,
x_id / p_id from the most frontal, sharpest face; `--identity` with a folder through `m2h generate`.

The synthetic module's stand-in ArcFace embedding is a deterministic function of a person's look; a photo's
embedding is modelled as that of the look under the photo's lighting (skin / hair / eye colours jittered), so
averaging several photos should land nearer the person's own embedding than the worst single photo does."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from m2h_core.demo.synthetic import Identity, generate_clip, identity_embedding
from m2h_core.inference import inputs
from m2h_core.preprocess import face as fc

from .test_preprocess_builders import build_face_pack


def lit(person: Identity, rng: np.random.Generator, amount: int = 14) -> np.ndarray:
    """One photo's embedding: the person's colours under other lighting."""
    def j(c):
        return tuple(int(v) for v in np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255))

    return identity_embedding(replace(person, skin=j(person.skin), hair_color=j(person.hair_color),
                                      eye_color=j(person.eye_color)))


def person(seed: int) -> Identity:
    return Identity.random(np.random.default_rng(seed))


def test_averaging_photos_beats_the_worst_single_photo():
    for seed in range(5):
        p, rng = person(seed), np.random.default_rng(100 + seed)
        photos = np.stack([lit(p, rng) for _ in range(5)])
        truth = identity_embedding(p)
        res = fc.mean_embedding(photos)
        assert res.kept.all()
        assert np.linalg.norm(res.mean) == pytest.approx(1.0, abs=1e-5)
        single = photos @ truth
        assert float(res.mean @ truth) > single.min()
        assert float(res.mean @ truth) >= np.median(single) - 1e-6


def test_an_outlier_photo_is_dropped_and_the_rest_averaged():
    a, b = person(1), person(2)
    rng = np.random.default_rng(0)
    photos = np.stack([lit(a, rng) for _ in range(4)] + [identity_embedding(b)])
    res = fc.mean_embedding(photos)
    assert res.kept.tolist() == [True, True, True, True, False]
    assert res.similarity[4] < fc.OUTLIER_COSINE <= res.similarity[:4].min()
    expect = photos[:4].mean(0)
    np.testing.assert_allclose(res.mean, expect / np.linalg.norm(expect), atol=1e-5)


def test_frontal_score_and_sharpness():
    kps = np.array([[40, 50], [72, 50], [56, 70], [44, 90], [68, 90]], np.float32)
    assert fc.frontal_score(kps) == pytest.approx(1.0)
    turned = kps.copy()
    turned[2, 0] += 8  # nose a quarter of the eye distance off centre
    assert fc.frontal_score(turned) == pytest.approx(0.5)
    ang = np.deg2rad(25)  # roll does not count
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    assert fc.frontal_score(turned @ r.T) == pytest.approx(0.5, abs=1e-5)
    img = generate_clip(3, n_frames=1, height=224, width=112).identity_image[:112, :112]
    assert fc.sharpness(img) > 2 * fc.sharpness(cv2.GaussianBlur(img, (7, 7), 2))


# ------------------------------------------------------------------------------------------ with the face models


class SyntheticEmbeddings:
    """The real face analyser (detection, alignment, landmarks of the tiny real-format pack), with each photo's
    embedding replaced by the stand-in one of the synthetic person it shows (the tiny recogniser is a random
    projection that cannot tell people apart)."""

    def __init__(self, analyzer, embeddings: dict[bytes, np.ndarray]):
        self.analyzer, self.embeddings = analyzer, embeddings

    def analyze(self, photo):
        return replace(self.analyzer.analyze(photo), embedding=self.embeddings[photo.tobytes()[:4096]])


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    build_face_pack(d / "insightface" / "models" / "antelopev2")
    return fc.FaceAnalyzer("antelopev2", search_dirs=[d], providers=["CPUExecutionProvider"], det_size=(320, 320))


def photo_of(seed: int, blur: int = 0) -> np.ndarray:
    img = generate_clip(seed, n_frames=1, height=256, width=192).identity_image
    return cv2.GaussianBlur(img, (2 * blur + 1, 2 * blur + 1), blur) if blur else img


def face_result(kps: np.ndarray, aligned: np.ndarray) -> fc.FaceResult:
    z = np.zeros((4, 4, 3), np.uint8)
    return fc.FaceResult(np.ones(512, np.float32) / np.sqrt(512), np.array([0, 0, 4, 4], np.float32), 0.9, kps, None,
                         z, np.zeros((4, 4), bool), aligned)


def test_best_photo_is_the_most_frontal_then_the_sharpest():
    front = np.array([[40, 50], [72, 50], [56, 70], [44, 90], [68, 90]], np.float32)
    turned = front + np.array([[0, 0], [0, 0], [10, 0], [0, 0], [0, 0]], np.float32)
    sharp = cv2.resize(photo_of(3)[:128, 40:168], (112, 112), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(sharp, (7, 7), 2)
    faces = [face_result(turned, sharp), face_result(front, blurred), face_result(front, sharp)]
    best, why = fc.best_photo(faces, np.ones(3, bool))
    assert best == 2 and "frontal 1.00" in why and "sharpness 1.00" in why
    assert fc.best_photo(faces[:2], np.ones(2, bool))[0] == 1  # frontal first, even if less sharp
    assert fc.best_photo(faces, np.array([True, True, False]))[0] == 1  # dropped photos are never chosen
    strip = fc.faces_preview(faces, fc.mean_embedding(np.stack([f.embedding for f in faces])), best)
    assert strip.shape == (112, 336, 3)


def test_combine_photos_averages_the_embeddings_through_the_face_models(analyzer):
    p, rng = person(5), np.random.default_rng(1)
    photos = [photo_of(11, blur=3), photo_of(12), photo_of(13, blur=2)]
    embs = {ph.tobytes()[:4096]: lit(p, rng) for ph in photos}
    res = inputs.combine_photos(photos, SyntheticEmbeddings(analyzer, embs), ["a.png", "b.png", "c.png"])
    assert res.photo is photos[res.best] and all(res.kept)
    expect = np.stack([e / np.linalg.norm(e) for e in embs.values()]).mean(0)
    np.testing.assert_allclose(res.face.embedding, expect / np.linalg.norm(expect), atol=1e-5)
    assert any("identity from 3 of 3 photos" in n and f"x_id and p_id from {'abc'[res.best]}.png" in n
               for n in res.notes)
    assert res.preview.shape == (112, 3 * 112, 3) and res.preview.dtype == np.uint8
    ident, _ = inputs.place_identity(res.photo, res.face, 64, 32, placement="fit_photo")
    np.testing.assert_allclose(ident.arcface.numpy(), res.face.embedding, atol=1e-6)


def test_photos_of_different_people_are_refused(analyzer):
    a, b = person(7), person(8)
    rng = np.random.default_rng(2)
    photos = [photo_of(s) for s in (21, 22, 23, 24)]
    embs = dict(zip([ph.tobytes()[:4096] for ph in photos], [lit(a, rng), lit(a, rng), lit(b, rng), lit(b, rng)]))
    with pytest.raises(inputs.InputError, match=r"seem to show different people .mean pairwise face similarity "
                                                r"0\.\d+ < 0.25.*p1.png .*p4.png .*give photos of one person only"):
        inputs.combine_photos(photos, SyntheticEmbeddings(analyzer, embs), ["p1.png", "p2.png", "p3.png", "p4.png"])


def test_photo_paths_from_files_and_folders(tmp_path):
    d = tmp_path / "me"
    d.mkdir()
    for i in range(3):
        Image.fromarray(photo_of(i)).save(d / f"{i}.png")
    (d / "notes.txt").write_text("not a photo")
    assert inputs.identity_photo_paths(str(d)) == [str(d / f"{i}.png") for i in range(3)]
    assert inputs.identity_photo_paths([str(d / "0.png"), str(d / "2.png")]) == [str(d / "0.png"), str(d / "2.png")]
    for i in range(3, 9):
        Image.fromarray(photo_of(0)).save(d / f"{i}.png")
    with pytest.raises(inputs.InputError, match="9 identity photos given; use 1 to 8"):
        inputs.identity_photo_paths(str(d))
    (tmp_path / "empty").mkdir()
    with pytest.raises(inputs.InputError, match="empty: the identity folder holds no photos"):
        inputs.identity_photo_paths(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        inputs.identity_photo_paths([str(d / "0.png"), str(tmp_path / "nope.png")])


# ------------------------------------------------------------------------------------------ the Identity Photo node


def test_identity_node_uses_every_photo_of_the_batch(analyzer):
    """nodes.logic.encode_identity on an IMAGE batch: the same combine_photos as m2h generate, the preview batch
    is the placed photo followed by every face with its similarity to the mean."""
    import torch

    from m2h_core.frames import to_uint8
    from nodes import logic

    p, rng = person(5), np.random.default_rng(3)
    photos = [photo_of(31), photo_of(32, blur=2)]
    embs = {ph.tobytes()[:4096]: lit(p, rng) for ph in photos}
    batch = torch.from_numpy(np.stack(photos)).float() / 255
    stand_in = SyntheticEmbeddings(analyzer, {to_uint8(batch[i:i + 1])[0].tobytes()[:4096]: e
                                              for i, e in enumerate(embs.values())})
    cond, preview = logic.encode_identity(batch, stand_in, 64, 32, placement="fit_photo")
    expect = np.stack([e / np.linalg.norm(e) for e in embs.values()]).mean(0)
    np.testing.assert_allclose(cond.arcface.numpy(), expect / np.linalg.norm(expect), atol=1e-5)
    assert tuple(preview.shape) == (3, 64, 32, 3) and preview[1:].amax() > 0.2
    one, pv = logic.encode_identity(batch[:1], stand_in, 64, 32, placement="fit_photo")
    assert tuple(pv.shape) == (1, 64, 32, 3)
