"""The pack's guarantees for any generator (issue 29): M2H Regenerate Mask (inference/regen_mask.py) and M2H
Composite (compositing.composite_generated), on synthetic clips whose answers are known pixel by pixel.

`synthetic.ExactParser` is a human parser (the `HumanParser` interface the nodes and the CLI use) that returns labels
made from the clip's exact masks for the frames it was given, so what the lock must keep and leave is exact."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from m2h_core.demo.synthetic import ExactParser, generate_clip
from m2h_core.inference import compositing as cp
from m2h_core.inference import regen_mask as rm
from m2h_core.preprocess.masks import grow_mask
from m2h_core.video_io import center_crop_resize, crop_resize_masks


@pytest.fixture(scope="module")
def clip():
    return generate_clip(7, n_frames=6, height=128, width=64, motion="sway")


def _generated(c, arm: np.ndarray):
    """The new person as a generator redraws them (blurred, colour-shifted), with an arm painted across the
    garment: the case the lock must never paste over."""
    gen = np.stack([cv2.GaussianBlur(f, (5, 5), 1.2) for f in c.human.astype(np.float32) / 255]) * 0.9 + 0.06
    gen[arm] = np.float32([0.8, 0.6, 0.5])
    return gen.astype(np.float32)


def _arm(c) -> np.ndarray:
    arm = np.zeros(c.clothing_mask.shape, bool)
    arm[:, 50:56, 10:54] = True  # a forearm across the chest
    arm &= grow_mask(c.clothing_mask, 2)
    assert (arm & c.clothing_mask).sum() > 100
    return arm


# ------------------------------------------------------------------------------------------ regenerate mask


def test_regen_mask_is_the_bare_mannequin_plus_head_and_never_the_garment(clip):
    s = rm.RegenMaskSettings.for_height(128, temporal_window=1)
    r = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses, s)
    regen = r.regen > 0.5
    body = clip.mannequin_mask & ~clip.clothing_mask
    assert regen[body].all()  # every bare mannequin pixel is redrawn
    inside = regen & clip.clothing_mask  # ...and the garment only in a band of grow_into_garment px at its edge
    assert inside.any() and not (inside & ~grow_mask(body | r.head, s.grow_into_garment)).any()
    assert not (regen & r.lock).any()  # never both
    assert not (r.lock & ~grow_mask(clip.clothing_mask, -s.lock_erode)).any()
    assert r.lock.sum() > 0.5 * clip.clothing_mask.sum()
    # the head region from the pose covers the new person's head and hair, which the bald mannequin does not
    new_head = clip.person_mask & ~clip.clothing_mask & ~clip.mannequin_mask
    assert new_head.sum() > 50 and regen[new_head].mean() > 0.85  # (long hair of a turned head: 88%)
    no_pose = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, None, s)
    assert "no keypoints" in no_pose.notes[0] and (no_pose.regen > 0.5)[new_head].mean() < 0.5
    soft = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses, rm.RegenMaskSettings(feather=3,
                                                                                                        temporal_window=1))
    assert ((soft.regen > 0.02) & (soft.regen < 0.98)).sum() > 100  # feathered as asked


def test_regen_mask_is_steady_on_a_still_clip_with_a_flickering_parser(clip):
    """A still clip (frame 0 held) whose masks flip at random along their edges frame to frame, as a parser's do:
    the temporal vote removes most of the flicker (measured: mask_flicker, 1 - IoU of neighbouring frames)."""
    n = 10
    cloth, mann = np.repeat(clip.clothing_mask[:1], n, 0), np.repeat(clip.mannequin_mask[:1], n, 0)
    poses = [clip.poses[0]] * n
    exact = rm.regenerate_mask(cloth, mann, poses)
    assert rm.mask_flicker(exact.regen) == 0.0 and rm.mask_flicker(exact.lock) == 0.0
    rng = np.random.default_rng(0)

    def jitter(m):
        edge = grow_mask(m, 1) & ~grow_mask(m, -1)
        return m ^ (edge & (rng.random(m.shape) < 0.3))

    noisy_c, noisy_m = jitter(cloth), jitter(mann)
    raw = rm.regenerate_mask(noisy_c, noisy_m, poses, rm.RegenMaskSettings(temporal_window=1))
    steady = rm.regenerate_mask(noisy_c, noisy_m, poses, rm.RegenMaskSettings(temporal_window=5))
    f_raw, f_steady = rm.mask_flicker(raw.regen), rm.mask_flicker(steady.regen)
    assert f_raw > 0.03 and f_steady < 0.35 * f_raw, (f_raw, f_steady)  # measured 0.25 -> 0.074
    assert rm.mask_flicker(steady.lock) < 0.35 * rm.mask_flicker(raw.lock)


def test_regen_mask_checks_its_inputs(clip):
    with pytest.raises(ValueError, match="must both be"):
        rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask[:2])
    with pytest.raises(ValueError, match="keypoint frames"):
        rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses[:2])
    with pytest.raises(ValueError, match="head_scale"):
        rm.RegenMaskSettings(head_scale=0)


# ------------------------------------------------------------------------------------------ composite


def _parser_for(c, gen, arm, src=None):
    p = ExactParser()
    p.add(gen, c.clothing_mask & ~arm, c.person_mask | arm)
    if src is not None:
        p.add(src, c.clothing_mask, c.mannequin_mask)
    return p


def test_composite_keeps_the_garment_exactly_and_the_new_arms_generated(clip):
    arm = _arm(clip)
    gen, src = _generated(clip, arm), clip.mannequin.astype(np.float32) / 255
    masks = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses,
                               rm.RegenMaskSettings.for_height(128, temporal_window=1))
    s = cp.CompositeSettings.for_height(128, garment_lock=True)
    out, notes = cp.composite_generated(gen, src, _parser_for(clip, gen, arm), s, lock=masks.lock)
    take = masks.lock & ~arm
    assert take.sum() > 1000
    np.testing.assert_array_equal(out[take], src[take])  # the real garment, bit for bit
    np.testing.assert_array_equal(out[arm], gen[arm])  # the arm over it stays generated
    far = ~grow_mask(masks.lock, s.harmonise_px + 1)
    np.testing.assert_array_equal(out[far], gen[far])
    assert "garment lock: erode 0" in notes[-1]  # the lock mask is taken as it is


def test_composite_finds_the_garment_on_the_source_without_a_lock_mask(clip):
    arm = _arm(clip)
    gen, src = _generated(clip, arm), clip.mannequin.astype(np.float32) / 255
    s = cp.CompositeSettings.for_height(128, garment_lock=True)
    out, _ = cp.composite_generated(gen, src, _parser_for(clip, gen, arm, src), s)
    take = grow_mask(clip.clothing_mask, -s.erode_px) & ~arm
    np.testing.assert_array_equal(out[take], src[take])
    np.testing.assert_array_equal(out[arm], gen[arm])


def test_composite_fits_the_source_to_generated_frames_of_another_size_and_count(clip):
    """The rule: the result has the generated frames' size and count; the source is centre-cropped to their aspect
    and resized (as the generator's input was); counts differ -> the first min(N, M) frames, noted."""
    arm = np.zeros(clip.clothing_mask.shape, bool)
    src = clip.mannequin.astype(np.float32) / 255
    small, info = center_crop_resize(src, 80, 32)  # another size and aspect ratio (2.5:1 against 2:1)
    small_cloth = crop_resize_masks(clip.clothing_mask, info)
    small_person = crop_resize_masks(clip.person_mask, info)
    gen = (small[:5] * 0.8 + 0.1).astype(np.float32)  # and one frame fewer
    p = ExactParser()
    p.add(gen, small_cloth[:5], small_person[:5])
    lock = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses).lock  # at the source's size
    out, notes = cp.composite_generated(gen, src, p, cp.CompositeSettings(garment_lock=True, erode_px=0), lock=lock)
    assert out.shape == (5, 80, 32, 3)
    assert "5 frames and the source 6" in notes[0] and "centre-cropped to 51x128 and resized" in notes[1]
    fitted_lock = crop_resize_masks(lock.astype(np.float32), info)[:5] > 0.5
    take = fitted_lock & ~(small_person[:5] & ~small_cloth[:5])
    assert take.sum() > 200
    np.testing.assert_array_equal(out[take], small[:5][take])
    del arm


def test_composite_refuses_without_a_parser_and_passes_through_when_off(clip):
    gen = clip.human.astype(np.float32) / 255
    src = clip.mannequin.astype(np.float32) / 255
    with pytest.raises(ValueError, match="human-parsing model"):
        cp.composite_generated(gen, src, None, cp.CompositeSettings(garment_lock=True))
    out, notes = cp.composite_generated(gen, src, None, cp.CompositeSettings())
    assert out is gen and "both off" in notes[0]
    with pytest.raises(ValueError, match="mask sequence has 2 frames"):
        cp.match_source(gen, src, clip.clothing_mask[:2])


# ------------------------------------------------------------------------------------------ the nodes


def test_regenerate_mask_node_with_your_own_masks_and_keypoints(clip):
    """nodes.logic.regenerate_mask (what M2H Regenerate Mask executes): your masks -> no parser; one mask for all
    frames and masks of another size are fitted; the outputs are what regen_mask computes."""
    import torch

    from nodes import logic, spec

    frames = torch.from_numpy(clip.mannequin.astype(np.float32) / 255)
    pose = logic.PoseSequence(list(clip.poses), 64, 128)
    regen, lock, prev = logic.regenerate_mask(frames, None, "upper", clothing_mask=torch.from_numpy(
        clip.clothing_mask.astype(np.float32)), person_mask=torch.from_numpy(clip.mannequin_mask.astype(np.float32)),
        pose=pose)
    want = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses,
                              rm.RegenMaskSettings.for_height(128, grow_into_garment=4))  # the widget's pixels
    np.testing.assert_array_equal(regen.numpy(), want.regen)
    np.testing.assert_array_equal(lock.numpy() > 0.5, want.lock)
    assert prev.shape == frames.shape and float((prev - frames).abs().amax()) > 0.1
    with pytest.raises(logic.M2HInputError, match="human-parsing model"):
        logic.regenerate_mask(frames, None, "upper")
    with pytest.raises(logic.M2HInputError, match="frame counts differ"):
        logic.regenerate_mask(frames, None, "upper", pose=logic.PoseSequence(list(clip.poses[:2]), 64, 128))
    assert set(spec.COMPOSITE.input("seam").options) == set(cp.SEAMS)


def test_composite_node_keeps_the_garment_and_the_arms(clip):
    import torch

    from nodes import logic

    arm = _arm(clip)
    gen, src = _generated(clip, arm), clip.mannequin.astype(np.float32) / 255
    lock = rm.regenerate_mask(clip.clothing_mask, clip.mannequin_mask, clip.poses).lock
    out = logic.composite_any(torch.from_numpy(gen), torch.from_numpy(src), _parser_for(clip, gen, arm),
                              lock_mask=torch.from_numpy(lock.astype(np.float32))).numpy()
    take = lock & ~arm
    np.testing.assert_array_equal(out[take], src[take])
    np.testing.assert_array_equal(out[arm], gen[arm])
    with pytest.raises(logic.M2HInputError, match="human-parsing model"):
        logic.composite_any(torch.from_numpy(gen), torch.from_numpy(src), None)
