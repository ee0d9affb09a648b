"""Garment lock and keep-background (m2h_core/inference/compositing.py) on synthetic clips with exact masks.

The synthetic module renders the same clip as a mannequin (the source video) and as a person (the ground truth)
with identical garment pixels, so what the lock must do is checkable pixel by pixel."""

from functools import partial

import cv2
import numpy as np
import pytest

from m2h_core.demo.synthetic import generate_clip
from m2h_core.inference import compositing as cp
from m2h_core.metrics import masked_psnr
from m2h_core.preprocess.masks import grow_mask

psnr = partial(masked_psnr, pooled=True)  # one PSNR over all the mask's pixels


@pytest.fixture(scope="module")
def clip():
    return generate_clip(7, n_frames=4, height=128, width=64, motion="sway")


def frames(c):
    """(generated stand-in, source, ground truth): the person blurred and colour-shifted as a model re-draws it."""
    gt = c.human.astype(np.float32) / 255
    gen = np.stack([cv2.GaussianBlur(f, (5, 5), 1.2) for f in gt]) * np.float32(0.9) + np.float32(0.06)
    return gen.astype(np.float32), c.mannequin.astype(np.float32) / 255, gt


def test_lock_keeps_garment_pixels_exact_and_never_touches_body_parts(clip):
    gen, src, _ = frames(clip)
    body = clip.person_mask & ~clip.clothing_mask  # skin, hair, face of the generated person
    parsed = np.stack([grow_mask(m, 2) for m in clip.clothing_mask]) & clip.mannequin_mask  # overshoots onto arms
    assert (parsed & body).any()  # the case that matters: the mask reaches over body parts
    s = cp.CompositeSettings(garment_lock=True, erode_px=2, feather_px=2, harmonise_px=4)
    out = cp.garment_lock(gen, src, parsed, body, s)
    region = cp.lock_region(parsed, body, 2)
    assert region.sum() > 500 and region.sum() < grow_mask(parsed, -2).sum()  # body parts cut out of it
    np.testing.assert_array_equal(out[region], src[region])  # the product's own pixels, exactly
    np.testing.assert_array_equal(out[body], gen[body])  # never garment over arms / hair / face
    far = ~grow_mask(region, s.harmonise_px + 1)
    np.testing.assert_array_equal(out[far], gen[far])  # nothing changes away from the seam
    seam = ~region & ~body & ~far
    assert np.abs(out[seam] - gen[seam]).max() > 0.01  # and the seam is blended


def test_lock_after_uint8_is_bit_exact(clip):
    gen, src, _ = frames(clip)
    out = cp.garment_lock(gen, src, clip.clothing_mask, None, cp.CompositeSettings(garment_lock=True))
    region = cp.lock_region(clip.clothing_mask, None, 3)
    u8 = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(u8[region], clip.mannequin[region])


@pytest.mark.parametrize("seam", ["harmonise", "poisson"])
def test_harmonised_seam_removes_a_colour_offset(clip, seam):
    """Generated = source + 0.2 everywhere: just outside the taken region a plain feather keeps most of the 0.2
    step; harmonisation / Poisson bring the generated side to the source's colour there."""
    _, src, _ = frames(clip)
    gen = np.clip(src * 0.7 + 0.2, 0, 1).astype(np.float32)
    m = clip.clothing_mask
    ring = np.stack([grow_mask(r, 2) & ~r for r in cp.lock_region(m, None, 2)])
    plain = cp.garment_lock(gen, src, m, None, cp.CompositeSettings(True, erode_px=2, feather_px=1, seam="feather"))
    blended = cp.garment_lock(gen, src, m, None, cp.CompositeSettings(True, erode_px=2, feather_px=1,
                                                                      harmonise_px=6, seam=seam))
    step_plain = np.abs(plain[ring] - src[ring]).mean()
    step = np.abs(blended[ring] - src[ring]).mean()
    assert step < 0.5 * step_plain


def test_lock_improves_clothing_psnr_and_adds_no_seam(clip):
    """The seam score (gradient energy around M_c's edge) stays at or below the ground truth's (+10%) and nearer
    to it than the blurred generated frames' (bench_compositing measures the ratio on VAE outputs: 0.96)."""
    gen, src, gt = frames(clip)
    body = clip.person_mask & ~clip.clothing_mask
    s = cp.CompositeSettings.for_height(128, garment_lock=True)
    out = cp.garment_lock(gen, src, clip.clothing_mask, body, s)
    assert psnr(out, gt, clip.clothing_mask) > psnr(gen, gt, clip.clothing_mask) + 6
    band = cp.edge_band(clip.clothing_mask, 2)
    e_out, e_gen, e_gt = (cp.seam_energy(x, band) for x in (out, gen, gt))
    assert e_out < 1.1 * e_gt and abs(e_out - e_gt) < abs(e_gen - e_gt)


def test_keep_background_takes_the_shop_and_leaves_the_mannequin_generated(clip):
    gen, src, _ = frames(clip)
    src = src.copy()
    src[~clip.mannequin_mask] = np.float32(0.3)  # a shop background unlike the generated one
    mann = clip.mannequin_mask.copy()
    mann[:, 20:, 52:62] = True  # the mannequin's stand, which the new person does not cover
    assert not (mann[:, 20:, 52:62] & clip.person_mask[:, 20:, 52:62]).any()
    src[:, 20:, 52:62] = np.float32(0.8)
    s = cp.CompositeSettings(keep_background=True, grow_px=2, feather_px=2, harmonise_px=3)
    out = cp.keep_background(gen, src, clip.person_mask, mann, s)
    take = cp.background_region(clip.person_mask, mann, 2)
    np.testing.assert_array_equal(out[take], src[take])
    np.testing.assert_array_equal(out[clip.person_mask], gen[clip.person_mask])
    # the mannequin's own pixels outside the new person (its bald head, a bare arm) stay generated, not pasted back
    leftover = mann & ~grow_mask(clip.person_mask, 2)
    inner = leftover & ~grow_mask(take, s.harmonise_px + 1)
    assert inner.sum() > 50
    np.testing.assert_array_equal(out[inner], gen[inner])


def test_composite_needs_its_masks_and_matching_shapes(clip):
    gen, src, _ = frames(clip)
    with pytest.raises(ValueError, match="person"):
        cp.composite(gen, src, cp.CompositeSettings(keep_background=True))
    with pytest.raises(ValueError, match="clothing mask"):
        cp.composite(gen, src, cp.CompositeSettings(garment_lock=True))
    with pytest.raises(ValueError, match="must both be"):
        cp.garment_lock(gen[:2], src, clip.clothing_mask, None, cp.CompositeSettings(True))
    with pytest.raises(ValueError, match="seam"):
        cp.CompositeSettings(seam="magic")
    off = cp.composite(gen, src, cp.CompositeSettings())
    np.testing.assert_array_equal(off, gen)


def test_settings_scale_with_the_frame_height():
    big, small = cp.CompositeSettings.for_height(512, True), cp.CompositeSettings.for_height(64, True)
    assert (big.erode_px, big.feather_px, big.harmonise_px) == (3, 6, 12)
    assert (small.erode_px, small.feather_px, small.harmonise_px) == (1, 2, 4)


def test_sampler_node_compositing_with_a_parser(tmp_path, clip):
    """nodes.logic.composite_frames: the real (tiny) parsing model on the generated frames; this one labels every
    pixel upper clothes, so no body part is protected and the whole eroded mask is locked."""
    import torch

    from m2h_core.inference.inputs import prepare_video
    from m2h_core.preprocess.parsing import load_parser
    from nodes import logic

    from .test_preprocess_builders import build_segformer

    build_segformer(tmp_path / "segformer_b2_clothes", constant_label=4)
    parser = load_parser(str(tmp_path / "segformer_b2_clothes"))
    video = prepare_video(clip.mannequin, clip.clothing_mask, clip.pose_images, 128, 64)
    gen, _, _ = frames(clip)
    images = torch.from_numpy(gen)
    assert logic.composite_frames(images, video, None) is images  # off: untouched, no parser needed
    with pytest.raises(logic.M2HInputError, match="need a human-parsing model"):
        logic.composite_frames(images, video, None, garment_lock=True)
    out = logic.composite_frames(images, video, parser, garment_lock=True).numpy()
    region = grow_mask(clip.clothing_mask, -cp.CompositeSettings.for_height(128).erode_px)
    np.testing.assert_array_equal(out[region], video.frames.permute(0, 2, 3, 1).numpy()[region])
