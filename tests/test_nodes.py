"""Node logic on tensors, without ComfyUI: conversions, checks, fitting, segmentation, poses, identity, sampling,
and the node table (spec) itself."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from m2h_core import identity
from nodes import logic, spec
from m2h_core.inference.inputs import InputError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the package


def test_pack_imports_without_comfyui_and_exports_only_the_entrypoint():
    name = "m2hvideo_pack_under_test"
    sp = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(sp)
    sys.modules[name] = mod
    before = set(sys.modules)
    try:
        sp.loader.exec_module(mod)
        assert callable(mod.comfy_entrypoint)
        assert not hasattr(mod, "NODE_CLASS_MAPPINGS"), "the loader would ignore comfy_entrypoint"
        new = {m.split(".")[0] for m in set(sys.modules) - before}
        assert not new & {"comfy", "comfy_api", "folder_paths", "onnxruntime", "insightface"}, new
    finally:
        sys.modules.pop(name, None)


def test_top_level_and_light_modules_import_nothing_heavy_at_module_level():
    """__init__.py, spec.py and files.py must import without torch/ComfyUI/onnxruntime/insightface."""
    heavy = {"torch", "onnxruntime", "insightface", "diffusers", "transformers", "comfy", "comfy_api",
             "folder_paths", "cv2"}
    for rel in ("__init__.py", "nodes/spec.py", "nodes/files.py", "nodes/__init__.py"):
        tree = ast.parse((ROOT / rel).read_text())
        for node in tree.body:  # module level only; imports inside functions are lazy by design
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                assert n.split(".")[0] not in heavy, f"{rel} imports {n} at module level"


def test_comfy_nodes_imports_optional_deps_lazily():
    tree = ast.parse((ROOT / "nodes/comfy_nodes.py").read_text())
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                assert m.split(".")[0] not in {"onnxruntime", "insightface", "diffusers", "transformers",
                                               "m2h_core"}, m


# ------------------------------------------------------------------------------------------ the node table


def test_spec_is_consistent():
    ids = [n.node_id for n in spec.NODES]
    assert len(ids) == len(set(ids)) == 9
    for n in spec.NODES:
        assert n.display_name.startswith("M2H ")
        names = [i.id for i in n.inputs] + [o.id for o in n.outputs]
        assert len(names) == len(set(names)), f"{n.node_id}: input/output ids must be unique"
        for i in n.inputs:
            assert i.tooltip and len(i.tooltip) > 10, f"{n.node_id}.{i.id} needs a tooltip"
            assert i.type in spec.WIDGET_TYPES | spec.SOCKET_TYPES
            if i.type == "COMBO":
                assert i.options or i.options_source, f"{n.node_id}.{i.id}"
                if i.options:
                    assert i.default in i.options
        # optional inputs come last so that positional widget values never shift
        flags = [i.optional for i in n.inputs]
        assert flags == sorted(flags), f"{n.node_id}: optional inputs must be last"
        for o in n.outputs:
            assert o.tooltip


def test_spec_matches_m2h_core():
    from m2h_core.inference.sampler import SCHEDULERS

    assert tuple(spec.SCHEDULERS) == tuple(SCHEDULERS)
    from m2h_core.preprocess.parsing import DEFAULT_CLOTHING

    default = spec.SEGMENTATION.input("clothing_classes").default
    assert logic.parse_clothing_classes(default) == tuple(DEFAULT_CLOTHING)


def test_execute_signatures_match_the_spec():
    """Each node's execute() takes exactly the spec's inputs (checked on the source, without ComfyUI)."""
    tree = ast.parse((ROOT / "nodes/comfy_nodes.py").read_text())
    specs = {k: v for k, v in vars(spec).items() if isinstance(v, spec.NodeSpec)}
    seen = set()
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        s = None
        for stmt in cls.body:
            if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "SPEC":
                s = specs[stmt.value.attr]
        if s is None:
            continue
        ex = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "execute")
        args = [a.arg for a in ex.args.args[1:]]
        assert args == [i.id for i in s.inputs], f"{cls.name}.execute args {args}"
        n_defaults = len(ex.args.defaults)
        optional = [i.id for i in s.inputs if i.optional]
        assert args[len(args) - n_defaults:] == optional, f"{cls.name}: optional inputs need defaults"
        seen.add(s.node_id)
    assert seen == {n.node_id for n in spec.NODES}


# ------------------------------------------------------------------------------------------ checks and fitting


def _video(n=6, h=80, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, h, w, 3, generator=g)
    masks = torch.zeros(n, h, w)
    masks[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    poses = torch.zeros(n, h, w, 3)
    poses[:, h // 2, :, 0] = 1
    return frames, masks, poses


def test_frame_count_mismatch_names_every_input():
    f, m, p = _video()
    with pytest.raises(InputError, match=r"6 clothing frames, 5 clothing masks and 6 pose images.*trim"):
        logic.prepare_sampler_inputs(f, m[:5], p, 64, 32)


def test_single_frame_batch_is_refused_with_a_fix():
    f, m, p = _video(n=1)
    with pytest.raises(InputError, match="single image.*Get Video Components.*Repeat Image Batch"):
        logic.prepare_sampler_inputs(f, m, p, 64, 32)


def test_size_not_multiple_of_8_in_keep_mode():
    f, m, p = _video(h=82, w=50)
    with pytest.raises(InputError, match=r"50x82.*multiple of 8.*48x80"):
        logic.prepare_sampler_inputs(f, m, p, 64, 32, resize="keep")
    out = logic.prepare_sampler_inputs(f, m, p, 64, 32, resize="crop_to_model")
    assert tuple(out.frames.shape) == (6, 3, 64, 32) and tuple(out.clothing_masks.shape) == (6, 64, 32)


def test_keep_mode_keeps_the_frames_size_and_resizes_masks_to_it():
    f, m, p = _video(h=80, w=48)
    m2 = torch.nn.functional.interpolate(m[:, None], size=(160, 96))[:, 0]
    out = logic.prepare_sampler_inputs(f, m2, p, 64, 32, resize="keep")
    assert (out.height, out.width) == (80, 48)
    assert tuple(out.clothing_masks.shape) == (6, 80, 48)
    assert torch.equal(out.frames, f.permute(0, 3, 1, 2))


def test_crop_to_model_logs_what_happened_and_keeps_alignment():
    f, m, p = _video(h=100, w=60)
    out = logic.prepare_sampler_inputs(f, m, p, 64, 32)
    assert any("cropped 10 px of width" in n for n in out.notes)
    # the mask is the central box; after the same crop it is still centred
    col = out.clothing_masks[0].sum(0)
    assert abs(int(col.nonzero().min()) - (31 - int(col.nonzero().max()))) <= 1


def test_empty_mask_is_refused():
    f, m, p = _video()
    with pytest.raises(InputError, match="clothing mask is empty"):
        logic.prepare_sampler_inputs(f, torch.zeros_like(m), p, 64, 32)


def test_input_normalisation():
    rgba = torch.rand(3, 8, 8, 4)
    assert logic.as_image_batch(rgba).shape == (3, 8, 8, 3)
    assert logic.as_image_batch(torch.rand(8, 8, 3)).shape == (1, 8, 8, 3)
    assert logic.as_mask_batch(torch.rand(8, 8)).shape == (1, 8, 8)
    assert logic.as_mask_batch(torch.rand(2, 1, 8, 8)).shape == (2, 8, 8)
    with pytest.raises(InputError):
        logic.as_image_batch(torch.rand(2, 8, 8, 5))
    with pytest.raises(InputError):
        logic.as_image_batch(torch.rand(0, 8, 8, 3))


def test_context_is_clamped_to_the_video_and_zero_means_the_models_frame_count():
    from m2h_core.config import tiny

    cfg = tiny()  # trained on 8 frames
    s = lambda n, cf, co: logic.sampler_settings(seed=0, steps=2, cfg=7.5, scheduler="ddim",  # noqa: E731
                                                 context_frames=cf, context_overlap=co).for_video(cfg, n)[0]
    assert (s(5, 16, 4).context_frames, s(5, 16, 4).context_overlap) == (5, 4)
    assert (s(40, 16, 20).context_frames, s(40, 16, 20).context_overlap) == (16, 15)
    assert (s(40, 16, 4).context_frames, s(40, 16, 4).context_overlap) == (16, 4)
    assert s(40, 0, 4).context_frames == cfg.num_frames
    with pytest.raises(InputError, match="scheduler"):  # checked where the widgets become settings
        logic.sampler_settings(seed=0, steps=2, cfg=7.5, scheduler="heun", context_frames=0, context_overlap=4)
    with pytest.raises(InputError, match="identity strength"):
        logic.sampler_settings(seed=0, steps=2, cfg=7.5, scheduler="ddim", context_frames=0, context_overlap=4,
                               identity_strength=-1)


def test_precision():
    assert logic.precision_dtype("auto") is torch.float32
    assert logic.precision_dtype("auto", fp16_ok=True) is torch.float16
    assert logic.precision_dtype("auto", bf16_ok=True) is torch.bfloat16
    assert logic.precision_dtype("bf16") is torch.bfloat16
    with pytest.raises(InputError):
        logic.precision_dtype("int8")


# ------------------------------------------------------------------------------------------ segmentation


def test_clothing_classes_parsing():
    assert logic.parse_clothing_classes("Upper ; pants,") == ("upper", "pants")
    with pytest.raises(InputError, match="body parts"):
        logic.parse_clothing_classes("upper, arms")
    with pytest.raises(InputError, match="unknown"):
        logic.parse_clothing_classes("upper, shirtt")
    with pytest.raises(InputError, match="empty"):
        logic.parse_clothing_classes(" , ")


def test_segment_with_user_masks_needs_no_parser():
    f, m, _ = _video()
    cloth, img, person = logic.segment(f, None, "upper", masks=m, fill_holes=True, grow=0, feather=0)
    assert torch.equal(cloth, m)
    assert torch.allclose(img, f * m[..., None])
    assert torch.equal(person, cloth)
    grown, _, _ = logic.segment(f, None, "upper", masks=m, grow=2)
    assert grown.sum() > m.sum()
    soft, _, _ = logic.segment(f, None, "upper", masks=m, feather=3)
    assert ((soft > 0) & (soft < 1)).any()


def test_segment_user_masks_one_for_all_and_other_size():
    f, m, _ = _video(h=80, w=48)
    big = torch.nn.functional.interpolate(m[:1, None], size=(160, 96))[:, 0]
    cloth, _, _ = logic.segment(f, None, "upper", masks=big)
    assert tuple(cloth.shape) == (6, 80, 48)
    assert torch.equal(cloth[0], cloth[5])
    with pytest.raises(InputError, match="frame counts differ"):
        logic.segment(f, None, "upper", masks=m[:4])


def test_segment_with_a_parser():
    from m2h_core.preprocess.parsing import ATR, HumanParser

    class BoxParser(HumanParser):
        label_set = ATR

        def parse_labels(self, frames):
            out = np.zeros((len(frames),) + frames[0].shape[:2], np.uint8)
            out[:, 10:40, 8:40] = ATR.labels.index("Upper-clothes")
            out[:, 40:70, 8:40] = ATR.labels.index("Left-leg")  # bare mannequin: never clothing
            return out

    f, _, _ = _video(h=80, w=48)
    cloth, img, person = logic.segment(f, BoxParser(), "upper, pants", temporal_window=3)
    assert cloth[:, 10:40, 8:40].min() == 1 and cloth[:, 40:70].max() == 0
    assert person[:, 40:70, 8:40].min() == 1
    assert img[:, 50, 20].abs().sum() == 0


def test_segment_without_parser_or_masks():
    f, _, _ = _video()
    with pytest.raises(InputError, match="human_parsing"):
        logic.segment(f, None, "upper")


# ------------------------------------------------------------------------------------------ poses


def _pose(w=48, h=80, dx=0.0, head=True):
    from m2h_core.pose_render import PoseFrame

    body = np.zeros((18, 3), np.float32)
    pts = {1: (24, 25), 2: (16, 26), 5: (32, 26), 3: (14, 38), 6: (34, 38), 8: (19, 50), 11: (29, 50),
           9: (19, 62), 12: (29, 62), 10: (19, 74), 13: (29, 74)}
    if head:
        pts.update({0: (24, 14), 14: (22, 12), 15: (26, 12), 16: (20, 13), 17: (28, 13)})
    for k, (x, y) in pts.items():
        body[k] = (x + dx, y, 0.9)
    return PoseFrame(body=body, width=w, height=h)


class FakeDetector:
    def __init__(self, missing=()):
        self.missing = set(missing)
        self.calls = 0

    def detect(self, frames, progress=None):
        from m2h_core.preprocess.dwpose import PoseResult

        self.calls += 1
        assert frames.dtype == np.uint8 and frames.ndim == 4
        out = []
        for i in range(len(frames)):
            p = None if i in self.missing else _pose(dx=i * 0.5)
            out.append(PoseResult(p, [p] if p else [], status="ok" if p else "no_person", width=48, height=80))
        if progress:
            progress(len(frames), len(frames))
        return out


def test_estimate_poses_fills_gaps_and_renders_at_the_frames_size():
    f, _, _ = _video(n=6)
    seen = []
    seq = logic.estimate_poses(f, FakeDetector(missing={2}), fps=25, progress=lambda d, t: seen.append((d, t)))
    assert len(seq) == 6 and all(p is not None for p in seq.poses)
    assert seen == [(6, 6)]
    imgs = logic.render_pose_images(seq)
    assert tuple(imgs.shape) == (6, 80, 48, 3) and imgs.max() > 0.5
    raw = logic.estimate_poses(f, FakeDetector(missing={2}), smoothing="none", fill_missing="none")
    assert raw.poses[2] is None
    assert logic.render_pose_images(raw)[2].max() == 0


def test_estimate_poses_no_person_anywhere():
    f, _, _ = _video(n=3)
    with pytest.raises(InputError, match="no person"):
        logic.estimate_poses(f, FakeDetector(missing={0, 1, 2}))


def test_head_position_from_pose_with_and_without_a_head():
    cx, cy, hw = identity.head_box_from_pose(_pose(), 80, 48)
    assert 20 < cx < 28 and 8 < cy < 18 and 4 < hw < 12
    cx2, cy2, hw2 = identity.head_box_from_pose(_pose(head=False), 80, 48)  # headless mannequin
    assert abs(cx2 - 24) < 1 and cy2 < 25 and hw2 == pytest.approx(16 * identity.HEAD_FROM_SHOULDERS)
    # poses made at another size are rescaled
    cx3, cy3, _ = identity.head_box_from_pose(_pose(), 160, 96)
    assert cx3 == pytest.approx(2 * cx) and cy3 == pytest.approx(2 * cy)
    empty = _pose()
    empty.body[:, 2] = 0
    assert identity.head_box_from_pose(empty, 80, 48) is None


# ------------------------------------------------------------------------------------------ identity


class FakeFaceAnalyzer:
    """Returns a FaceResult-like object for a face box at a known place of the photo."""

    def __init__(self, bbox=(40, 30, 80, 80), fail=False):
        self.bbox = np.array(bbox, np.float32)
        self.fail = fail

    def analyze(self, rgb):
        from m2h_core.preprocess.face import NoFaceError

        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
        if self.fail:
            raise NoFaceError("no face found in the identity image; use a clear, front-facing photo")
        x1, y1, x2, y2 = self.bbox
        kps = np.array([[x1 + 12, y1 + 18], [x2 - 12, y1 + 18], [(x1 + x2) / 2, y1 + 28],
                        [x1 + 14, y2 - 10], [x2 - 14, y2 - 10]], np.float32)
        emb = np.random.default_rng(0).normal(size=512).astype(np.float32)
        return SimpleNamespace(embedding=emb / np.linalg.norm(emb), bbox=self.bbox, kps=kps, landmarks=None,
                               num_faces=1)


def test_encode_identity_fit_photo():
    photo = torch.rand(1, 120, 120, 3)
    cond, preview = logic.encode_identity(photo, FakeFaceAnalyzer(), 64, 32, placement="fit_photo")
    assert tuple(cond.image.shape) == (3, 64, 32) and tuple(cond.landmarks.shape) == (3, 64, 32)
    assert cond.arcface.shape == (512,) and cond.landmarks.max() > 0.5
    assert tuple(preview.shape) == (1, 64, 32, 3)
    # box mapped through the centre crop (120x120 -> 60x120 crop x0=30, scale 32/60)
    x1, y1, x2, y2 = cond.face_box
    assert x1 == pytest.approx((40 - 30 + 0.5) * 32 / 60 - 0.5, abs=1e-3)


def test_encode_identity_head_from_pose_places_the_face_on_the_head():
    photo = torch.rand(1, 120, 120, 3)
    seq = logic.PoseSequence([_pose(), _pose(head=False)], 48, 80)
    cond, _ = logic.encode_identity(photo, FakeFaceAnalyzer(), 80, 48, placement="head_from_pose", pose=seq)
    x1, y1, x2, y2 = cond.face_box
    cx, cy, hw = identity.head_box_from_pose(seq.poses[0], 80, 48)
    assert (x1 + x2) / 2 == pytest.approx(cx, abs=0.01) and (y1 + y2) / 2 == pytest.approx(cy, abs=0.01)
    assert x2 - x1 == pytest.approx(hw, rel=1e-3)
    # landmark dots sit inside the placed face box
    ys, xs = np.nonzero(cond.landmarks[0].numpy() > 0.5)
    assert xs.min() >= x1 - 2 and xs.max() <= x2 + 2 and ys.min() >= y1 - 2 and ys.max() <= y2 + 2


def test_encode_identity_preview_dims_what_a_head_only_model_does_not_see():
    photo = torch.full((1, 120, 120, 3), 0.8)
    seq = logic.PoseSequence([_pose()], 48, 80)
    full, pv_full = logic.encode_identity(photo, FakeFaceAnalyzer(), 80, 48, pose=seq)
    head, pv_head = logic.encode_identity(photo, FakeFaceAnalyzer(), 80, 48, pose=seq, identity_input="head")
    assert torch.equal(full.image, head.image)  # the model masks x_id itself
    m, found = identity.head_region(head.landmarks[None])
    inside = m[0, 0] > 0.5
    assert found.all() and 0 < inside.float().mean() < 0.5
    plain = ((pv_full[0] - 0.8).abs() < 0.01).all(-1)  # photo pixels, not the drawn box / landmarks
    assert (plain & ~inside).sum() > 100
    assert (pv_head[0][plain & ~inside] < 0.8 * 0.5).all()
    x1, y1, x2, y2 = (int(round(v)) for v in head.face_box)
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    assert inside[cy, cx] and torch.equal(pv_head[0, cy, cx], pv_full[0, cy, cx])


def test_encode_identity_errors():
    photo = torch.rand(1, 64, 64, 3)
    from m2h_core.preprocess.face import NoFaceError

    with pytest.raises(NoFaceError, match="no face"):
        logic.encode_identity(photo, FakeFaceAnalyzer(fail=True), 64, 32, placement="fit_photo")
    with pytest.raises(InputError, match="needs the pose input"):
        logic.encode_identity(photo, FakeFaceAnalyzer(), 64, 32, placement="head_from_pose", pose=None)
    # no usable pose anywhere: falls back to fitting the photo
    empty = _pose()
    empty.body[:, 2] = 0
    cond, _ = logic.encode_identity(photo, FakeFaceAnalyzer(), 64, 32, pose=logic.PoseSequence([empty], 48, 80))
    assert tuple(cond.image.shape) == (3, 64, 32)


def test_head_conditioning_resizes_for_keep_mode():
    photo = torch.rand(1, 64, 64, 3)
    cond, _ = logic.encode_identity(photo, FakeFaceAnalyzer((10, 10, 40, 50)), 64, 32, placement="fit_photo")
    other = cond.at_size(128, 64)
    assert tuple(other.image.shape) == (3, 128, 64) and other.arcface is cond.arcface
    assert cond.at_size(64, 32) is cond
    # the face box follows (the zero-shot model crops the face for CLIP with it): same aspect, twice the size
    assert cond.face_box is not None
    x1, y1, x2, y2 = cond.face_box
    np.testing.assert_allclose(other.face_box, (2 * x1 + 0.5, 2 * y1 + 0.5, 2 * x2 + 0.5, 2 * y2 + 0.5), atol=1e-6)


# ------------------------------------------------------------------------------------------ sampling


@pytest.fixture(scope="module")
def tiny_pipeline():
    from m2h_core.config import tiny
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.models.m2h import M2HModel
    from m2h_core.inference.pipeline import M2HPipeline

    cfg = tiny()
    torch.manual_seed(0)
    return M2HPipeline(M2HModel(cfg).eval(), FrozenEncoders.random(cfg))


def test_run_sampler_end_to_end_tiny(tiny_pipeline):
    from m2h_core.inference.sampler import SamplerSettings

    cfg = tiny_pipeline.cfg
    f, m, p = _video(n=5, h=100, w=60)
    fitted = logic.prepare_sampler_inputs(f, m, p, cfg.height, cfg.width)
    cond, _ = logic.encode_identity(torch.rand(1, 96, 96, 3), FakeFaceAnalyzer((30, 20, 60, 60)), cfg.height,
                                    cfg.width, placement="fit_photo")
    steps = []
    settings = SamplerSettings(steps=2, guidance_scale=2.0, scheduler="ddim", seed=3, context_frames=4,
                               context_overlap=2)
    images, latents = logic.run_sampler(tiny_pipeline, fitted, cond, settings,
                                        progress=lambda s, t: steps.append((s, t)))
    assert tuple(images.shape) == (5, cfg.height, cfg.width, 3)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert latents.shape[0] == 5
    assert steps == [(1, 2), (2, 2)]
    again, _ = logic.run_sampler(tiny_pipeline, fitted, cond, settings)
    assert torch.equal(images, again), "same seed, same video"


def test_run_sampler_cancel(tiny_pipeline):
    from m2h_core.inference.sampler import SamplerSettings, SamplingCancelled

    cfg = tiny_pipeline.cfg
    f, m, p = _video(n=3, h=cfg.height, w=cfg.width)
    fitted = logic.prepare_sampler_inputs(f, m, p, cfg.height, cfg.width)
    cond, _ = logic.encode_identity(torch.rand(1, 64, 64, 3), FakeFaceAnalyzer((10, 10, 40, 50)), cfg.height,
                                    cfg.width, placement="fit_photo")

    class Interrupted(Exception):
        pass

    def cancel():  # ComfyUI's check raises instead of returning True
        raise Interrupted()

    with pytest.raises((Interrupted, SamplingCancelled)):
        logic.run_sampler(tiny_pipeline, fitted, cond, SamplerSettings(steps=2, context_frames=2,
                                                                       context_overlap=1), cancel=cancel)


def test_display_names_say_what_the_nodes_do_and_ids_are_unchanged():
    """Workflows store node ids; display names may change: the loader loads VAE and CLIP too, and the identity
    node places the photo (H runs inside the model)."""
    assert spec.MODEL_LOADER.node_id == "M2HUNetLoader" and spec.MODEL_LOADER.display_name == "M2H Model Loader"
    assert "VAE and CLIP" in spec.MODEL_LOADER.description
    assert spec.IDENTITY_PHOTO.node_id == "M2HHeadEncoder" and spec.IDENTITY_PHOTO.display_name == "M2H Identity Photo"
    assert "runs inside the model" in spec.IDENTITY_PHOTO.description
    text = " ".join(i.tooltip for n in spec.NODES for i in n.inputs) + " ".join(n.description for n in spec.NODES)
    assert "UNet Loader" not in text and "Head Encoder" not in text


def test_sampler_widgets_default_to_the_one_set_of_defaults():
    from m2h_core.inference.sampler import SamplerSettings

    s, d = spec.SAMPLER, SamplerSettings()
    assert (s.input("steps").default, s.input("cfg").default, s.input("scheduler").default) == \
        (d.steps, d.guidance_scale, d.scheduler)
    assert (s.input("context_frames").default, s.input("context_overlap").default) == \
        (d.context_frames, d.context_overlap)
    assert s.input("context_frames").min == 0  # 0 = the model's trained frame count


def test_sampler_latent_output_is_comfyuis_raw_vae_latent():
    """ComfyUI's LATENT is the VAE's raw latent: decoding the node's LATENT with the VAE alone (as core VAE Decode
    does) gives the sampler's images. A model whose VAE scaling factor is not 1 makes a scaled LATENT fail."""
    import dataclasses

    from m2h_core.config import tiny
    from m2h_core.inference.encoders import FrozenEncoders
    from m2h_core.inference.pipeline import M2HPipeline
    from m2h_core.inference.sampler import SamplerSettings
    from m2h_core.models.m2h import M2HModel

    cfg = dataclasses.replace(tiny(), vae=dataclasses.replace(tiny().vae, scaling_factor=0.18215))
    torch.manual_seed(0)
    pipe = M2HPipeline(M2HModel(cfg).eval(), FrozenEncoders.random(cfg))
    f, m, p = _video(n=3, h=cfg.height, w=cfg.width)
    fitted = logic.prepare_sampler_inputs(f, m, p, cfg.height, cfg.width)
    cond, _ = logic.encode_identity(torch.rand(1, 64, 64, 3), FakeFaceAnalyzer((10, 10, 40, 50)), cfg.height,
                                    cfg.width, placement="fit_photo")
    images, latents = logic.run_sampler(pipe, fitted, cond, SamplerSettings(steps=1, guidance_scale=1.0))
    latent = logic.comfy_latent(latents, cfg.vae.scaling_factor)
    with torch.no_grad():
        decoded = ((pipe.encoders.vae.decode(latent["samples"]).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert latent["samples"].shape == (3, 4, cfg.height // cfg.vae.downscale, cfg.width // cfg.vae.downscale)
    assert float((decoded - images).abs().mean()) <= 1 / 255


def test_native_comfyui_inputs_and_strength_knobs_in_the_spec():
    from m2h_core.inference import defaults

    vae, clip = spec.MODEL_LOADER.input("vae"), spec.MODEL_LOADER.input("clip_vision_model")
    assert (vae.type, vae.optional, clip.type, clip.optional) == ("VAE", True, "CLIP_VISION", True)
    for name in ("pose_strength", "identity_strength"):
        i = spec.SAMPLER.input(name)
        assert i.type == "FLOAT" and i.default == 1.0 and i.min == 0.0 and i.max == defaults.STRENGTH_MAX
    assert spec.SAMPLER.input("steps").default == defaults.STEPS == 50
    assert "raw" in spec.SAMPLER.outputs[1].tooltip


def test_missing_insightface_advice_follows_the_readme():
    src = (ROOT / "nodes/comfy_nodes.py").read_text()
    assert "pip install --no-deps insightface" in src
    assert "--no-deps insightface" in (ROOT / "README.md").read_text()


def test_every_model_name_input_is_validated_at_queue_time():
    """ComfyUI 0.3.x does not check V3 combo values: each node's validate_inputs takes exactly its model-name
    inputs (those with a file list), and the kinds it checks them as are the ones files.resolve knows."""
    tree = ast.parse((ROOT / "nodes/comfy_nodes.py").read_text())
    specs = {k: v for k, v in vars(spec).items() if isinstance(v, spec.NodeSpec)}
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        s = next((specs[st.value.attr] for st in cls.body if isinstance(st, ast.Assign)
                  and getattr(st.targets[0], "id", "") == "SPEC"), None)
        if s is None:
            continue
        names = [i.id for i in s.inputs if i.options_source]
        fn = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "validate_inputs"), None)
        if not names:
            assert fn is None
            continue
        assert fn is not None, f"{cls.name} has model-name inputs {names} but no validate_inputs"
        assert [a.arg for a in fn.args.args[1:]] == names and fn.args.kwarg is None, cls.name
    kinds = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "FILE_KINDS")
    mapping = ast.literal_eval(kinds.value)
    assert {i.options_source for n in spec.NODES for i in n.inputs if i.options_source} <= set(mapping)
