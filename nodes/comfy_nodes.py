"""The ComfyUI V3 nodes: schemas built from `nodes/spec.py`, each execute a few lines over `nodes/logic.py`.

Imported only inside ComfyUI (from `comfy_entrypoint`). Heavy and optional libraries (diffusers, onnxruntime,
insightface, transformers) are imported when a node runs, never at import time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch
from typing_extensions import override

try:  # the numbered API module is steadier than `latest`
    from comfy_api.v0_0_2 import ComfyExtension, io
except ImportError:  # pragma: no cover - older/newer ComfyUI
    from comfy_api.latest import ComfyExtension, io

from . import files, logic, spec

log = logging.getLogger("M2HVideo")

CUSTOM = {t: io.Custom(t) for t in spec.CUSTOM_TYPES}


# ------------------------------------------------------------------------------------------ schema from the table


def _input(i: spec.In):
    kw = dict(display_name=i.display_name, optional=i.optional, tooltip=i.tooltip)
    if i.type == "IMAGE":
        return io.Image.Input(i.id, **kw)
    if i.type == "MASK":
        return io.Mask.Input(i.id, **kw)
    if i.type in CUSTOM:
        return CUSTOM[i.type].Input(i.id, **kw)
    if i.type == "INT":
        return io.Int.Input(i.id, default=i.default, min=i.min, max=i.max, step=i.step,
                            control_after_generate=i.control_after_generate or None, **kw)
    if i.type == "FLOAT":
        return io.Float.Input(i.id, default=i.default, min=i.min, max=i.max, step=i.step, **kw)
    if i.type == "BOOLEAN":
        return io.Boolean.Input(i.id, default=i.default, **kw)
    if i.type == "STRING":
        return io.String.Input(i.id, default=i.default, multiline=i.multiline, **kw)
    if i.type == "COMBO":
        opts = list(i.options) if i.options else files.options(i.options_source)
        default = i.default if i.default in opts else (opts[0] if opts else None)
        return io.Combo.Input(i.id, options=opts, default=default, **kw)
    raise TypeError(f"no V3 input for type {i.type}")


def _output(o: spec.Out):
    kw = dict(display_name=o.display_name or o.id, tooltip=o.tooltip)
    if o.type == "IMAGE":
        return io.Image.Output(o.id, **kw)
    if o.type == "MASK":
        return io.Mask.Output(o.id, **kw)
    if o.type == "LATENT":
        return io.Latent.Output(o.id, **kw)
    return CUSTOM[o.type].Output(o.id, **kw)


def missing_dependencies(needs: tuple[str, ...]) -> list[str]:
    """Optional modules that are not installed (checked without importing them)."""
    out = []
    for mod in needs:
        try:
            if importlib.util.find_spec(mod) is None:
                out.append(mod)
        except (ImportError, ValueError):
            out.append(mod)
    return out


def build_schema(s: spec.NodeSpec, unavailable: str | None = None):
    desc = s.description if not unavailable else f"UNAVAILABLE: {unavailable}\n\n{s.description}"
    return io.Schema(node_id=s.node_id, display_name=s.display_name, category=spec.CATEGORY, description=desc,
                     inputs=[_input(i) for i in s.inputs], outputs=[_output(o) for o in s.outputs],
                     is_output_node=s.output_node)


class _M2HNode(io.ComfyNode):
    SPEC: spec.NodeSpec
    UNAVAILABLE: str | None = None  # set at load time when an optional dependency is missing

    @classmethod
    def define_schema(cls):
        return build_schema(cls.SPEC, cls.UNAVAILABLE)

    @classmethod
    def check_available(cls) -> None:
        if cls.UNAVAILABLE:
            raise RuntimeError(f"{cls.SPEC.display_name} is disabled: {cls.UNAVAILABLE}")


# ------------------------------------------------------------------------------------------ ComfyUI runtime glue


def _mm():
    import comfy.model_management as mm

    return mm


def cancel_check() -> bool:
    """ComfyUI's cancel: raises InterruptProcessingException when the user pressed Cancel."""
    _mm().throw_exception_if_processing_interrupted()
    return False


def progress_bar(total: int):
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(1, int(total)))
    return lambda done, tot: bar.update_absolute(int(done), int(tot))


@dataclass
class M2HModelHandle:
    """The M2H_MODEL value: the loaded pipeline (kept on the offload device between runs) and where it came from."""

    pipeline: Any
    key: tuple
    dtype: torch.dtype
    description: str

    @property
    def cfg(self):
        return self.pipeline.cfg


_CACHE_LOCK = threading.Lock()
_PIPELINES: dict[tuple, M2HModelHandle] = {}  # at most one entry: the last loaded model
_PREPROCESSORS: dict[tuple, Any] = {}


def _cached_preprocessor(key: tuple, make):
    with _CACHE_LOCK:
        if key not in _PREPROCESSORS:
            for k in [k for k in _PREPROCESSORS if k[0] == key[0]]:
                del _PREPROCESSORS[k]  # one model per kind
            _PREPROCESSORS[key] = make()
        return _PREPROCESSORS[key]


def _mtime(path: str | None) -> float:
    try:
        return os.path.getmtime(path) if path else 0.0
    except OSError:
        return 0.0


def load_m2h_model(checkpoint: str, base: str, clip_vision: str, motion: str, precision: str) -> M2HModelHandle:
    from m2h_core.inference.pipeline import load_pipeline

    mm = _mm()
    device = mm.get_torch_device()
    dtype = logic.precision_dtype(precision, fp16_ok=mm.should_use_fp16(device),
                                  bf16_ok=mm.should_use_bf16(device))
    paths = dict(
        checkpoint=files.resolve("m2hvideo", checkpoint),
        base=None if base == files.NONE else files.resolve("base", base),
        clip_vision=None if clip_vision == files.NONE else files.resolve("clip_vision", clip_vision),
        motion_module=None if motion == files.NONE else files.resolve("animatediff_models", motion),
    )
    key = tuple((k, v, _mtime(v)) for k, v in paths.items()) + (("dtype", str(dtype)),)
    with _CACHE_LOCK:
        if key in _PIPELINES:
            log.info("M2H Model Loader: reusing the loaded model (%s)", os.path.basename(paths["checkpoint"]))
            return _PIPELINES[key]
        _PIPELINES.clear()
        offload = mm.unet_offload_device()
        pipe = load_pipeline(device=offload, dtype=dtype, **paths)
        desc = (f"{os.path.basename(paths['checkpoint'])} ({pipe.cfg.name}, {pipe.cfg.width}x{pipe.cfg.height}, "
                f"{str(dtype).replace('torch.', '')})")
        log.info("M2H Model Loader: loaded %s", desc)
        handle = M2HModelHandle(pipe, key, dtype, desc)
        _PIPELINES[key] = handle
        return handle


def _model_bytes(pipe) -> int:
    mods = [pipe.model, pipe.encoders.vae, pipe.encoders.clip]
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


def sample_on_device(handle: M2HModelHandle, video, head, settings, progress):
    """Move the pipeline to ComfyUI's torch device for the run (freeing ComfyUI's own models first), then back
    to the offload device. On out-of-memory, retry once with half the context window."""
    mm = _mm()
    device = mm.get_torch_device()
    offload = mm.unet_offload_device()
    pipe = handle.pipeline
    if device.type != "cpu":
        mm.free_memory(int(_model_bytes(pipe) * 1.2) + 2 * 1024 ** 3, device)
    try:
        pipe.to(device)
        try:
            return logic.run_sampler(pipe, video, head, settings, progress=progress, cancel=cancel_check)
        except mm.OOM_EXCEPTION:
            if settings.context_frames <= 2:
                raise
            mm.soft_empty_cache(True)
            settings.context_frames = max(2, settings.context_frames // 2)
            settings.context_overlap = min(settings.context_overlap, settings.context_frames - 1)
            pipe.encoders.chunk = max(1, pipe.encoders.chunk // 2)
            log.warning("M2H Sampler: out of GPU memory; retrying with context_frames=%d (set it lower to avoid "
                        "this)", settings.context_frames)
            return logic.run_sampler(pipe, video, head, settings, progress=progress, cancel=cancel_check)
    finally:
        pipe.to(offload)
        mm.soft_empty_cache()


# ------------------------------------------------------------------------------------------ nodes


class M2HMannequinSegmentation(_M2HNode):
    SPEC = spec.SEGMENTATION

    @classmethod
    def execute(cls, frames, model, clothing_classes, grow, feather, fill_holes, temporal_window, masks=None
                ) -> io.NodeOutput:
        cls.check_available()
        parser = None
        if masks is None:
            from m2h_core.preprocess.parsing import load_parser

            device = str(_mm().get_torch_device())
            parser = _cached_preprocessor(("parser", model, device), lambda: load_parser(
                model, search_dirs=files.search_dirs("human_parsing"), device=device))
            log.info("M2H Segmentation: %s (%s)", getattr(parser, "path", model), parser.label_set.name)
        cloth, image, person = logic.segment(frames, parser, clothing_classes, grow=grow, feather=feather,
                                             fill_holes=fill_holes, temporal_window=temporal_window, masks=masks)
        return io.NodeOutput(cloth, image, person)


class M2HDWPose(_M2HNode):
    SPEC = spec.DWPOSE

    @classmethod
    def execute(cls, frames, detector, pose_model, hands, face, feet, smoothing, fill_missing, fps
                ) -> io.NodeOutput:
        cls.check_available()
        from m2h_core.preprocess.dwpose import DWPoseDetector

        det = _cached_preprocessor(("dwpose", detector, pose_model), lambda: DWPoseDetector(
            files.resolve("dwpose", detector), files.resolve("dwpose", pose_model)))
        log.info("M2H DWPose: onnxruntime providers in use: %s", ", ".join(det.active_providers))
        seq = logic.estimate_poses(frames, det, smoothing=smoothing, fill_missing=fill_missing, fps=fps,
                                   progress=progress_bar(len(frames)))
        return io.NodeOutput(logic.render_pose_images(seq, hands=hands, face=face, feet=feet), seq)


class M2HHeadEncoder(_M2HNode):
    SPEC = spec.HEAD_ENCODER

    @classmethod
    def execute(cls, identity, model, face_model, placement, reference_frame, face_scale, pose=None
                ) -> io.NodeOutput:
        cls.check_available()
        from m2h_core.preprocess.face import FaceAnalyzer

        dirs = files.search_dirs("insightface")
        analyzer = _cached_preprocessor(("face", face_model), lambda: FaceAnalyzer(face_model, dirs))
        log.info("M2H Identity Photo: %s from %s, providers %s", face_model, analyzer.folder,
                 ", ".join(analyzer.providers))
        cfg = model.cfg
        cond, preview = logic.encode_identity(identity, analyzer, cfg.height, cfg.width, placement=placement,
                                              pose=pose, reference_frame=reference_frame, face_scale=face_scale,
                                              identity_input=cfg.identity_input)
        return io.NodeOutput(cond, preview)


class M2HUNetLoader(_M2HNode):
    SPEC = spec.UNET_LOADER

    @classmethod
    def execute(cls, m2h_checkpoint, base_model, clip_vision, motion_module, precision) -> io.NodeOutput:
        cls.check_available()
        return io.NodeOutput(load_m2h_model(m2h_checkpoint, base_model, clip_vision, motion_module, precision))


class M2HSampler(_M2HNode):
    SPEC = spec.SAMPLER

    @classmethod
    def execute(cls, model, frames, clothing_mask, pose_images, head_cond, seed, steps, cfg, scheduler,
                context_frames, context_overlap, resize) -> io.NodeOutput:
        cls.check_available()
        video = logic.prepare_sampler_inputs(frames, clothing_mask, pose_images, model.cfg.height,
                                             model.cfg.width, resize)
        for note in video.notes:
            log.info("M2H Sampler: %s", note)
        settings = logic.sampler_settings(model.cfg, video.num_frames, seed=seed, steps=steps, cfg=cfg,
                                          scheduler=scheduler, context_frames=context_frames,
                                          context_overlap=context_overlap)
        images, latents = sample_on_device(model, video, head_cond, settings, progress_bar(steps))
        return io.NodeOutput(images, {"samples": latents})


NODE_CLASSES = (M2HMannequinSegmentation, M2HDWPose, M2HHeadEncoder, M2HUNetLoader, M2HSampler)


class M2HExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        files.register_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        files.register_folders()
        for cls in NODE_CLASSES:
            missing = missing_dependencies(cls.SPEC.needs)
            cls.UNAVAILABLE = (f"missing optional dependency {', '.join(missing)} (pip install "
                               f"{' '.join(missing)}; see the README's Install section)") if missing else None
            if cls.UNAVAILABLE:
                log.warning("M2HVideo: node '%s' disabled: %s", cls.SPEC.display_name, cls.UNAVAILABLE)
        return list(NODE_CLASSES)
