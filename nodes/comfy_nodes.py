"""The ComfyUI V3 nodes: schemas built from `nodes/spec.py`, each execute a few lines over `nodes/logic.py`.

Imported only inside ComfyUI (from `comfy_entrypoint`). Heavy and optional libraries (diffusers, onnxruntime,
insightface, transformers) are imported when a node runs, never at import time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
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
# spec options_source of a model-name input -> the folder kind files.resolve / check_name use
FILE_KINDS = {"m2hvideo": "m2hvideo", "base": "base", "clip_vision": "clip_vision",
              "animatediff_models": "animatediff_models", "dwpose_det": "dwpose", "dwpose_pose": "dwpose",
              "human_parsing": "human_parsing", "insightface": "insightface",
              "controlnet": "controlnet", "ipadapter": "ipadapter", "loras": "loras"}


# ------------------------------------------------------------------------------------------ schema from the table


def _input(i: spec.In):
    kw = dict(display_name=i.display_name, optional=i.optional, tooltip=i.tooltip)
    if i.type == "IMAGE":
        return io.Image.Input(i.id, **kw)
    if i.type == "MASK":
        return io.Mask.Input(i.id, **kw)
    if i.type == "VAE":
        return io.Vae.Input(i.id, **kw)
    if i.type == "CLIP_VISION":
        return io.ClipVision.Input(i.id, **kw)
    if i.type == "CONDITIONING":
        return io.Conditioning.Input(i.id, **kw)
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


def install_advice(missing: list[str]) -> str:
    """The README's install commands: insightface with --no-deps (its dependencies would replace onnxruntime and
    OpenCV builds), the rest plainly."""
    cmds = []
    plain = [m for m in missing if m != "insightface"]
    if plain:
        cmds.append(f"pip install {' '.join(plain)}")
    if "insightface" in missing:
        cmds.append("pip install --no-deps insightface")
    return " and ".join(cmds)


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
    def check_names(cls, **names) -> bool | str:
        """validate_inputs of the model-name inputs (at queue time): a name that could leave its kind's folders is
        refused with files.ModelNameError's message. ComfyUI 0.3.x does not check V3 combo values itself."""
        for i in cls.SPEC.inputs:
            kind = FILE_KINDS.get(i.options_source or "")
            value = names.get(i.id)
            if kind and isinstance(value, str):
                try:
                    files.check_name(kind, value)
                except files.ModelNameError as err:
                    return str(err)
        return True

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


_CACHE_LOCK = threading.Lock()
_PREPROCESSORS: dict[tuple, Any] = {}  # parsing / DWPose / face ONNX sessions (small; not ComfyUI models)


def _cached_preprocessor(key: tuple, make):
    with _CACHE_LOCK:
        if key not in _PREPROCESSORS:
            for k in [k for k in _PREPROCESSORS if k[0] == key[0]]:
                del _PREPROCESSORS[k]  # one model per kind
            _PREPROCESSORS[key] = make()
        return _PREPROCESSORS[key]


def _parser(name: str):
    """The human-parsing model `name` from models/human_parsing, kept between runs (segmentation, compositing)."""
    from m2h_core.preprocess.parsing import load_parser

    files.check_name("human_parsing", name)
    device = str(_mm().get_torch_device())
    return _cached_preprocessor(("parser", name, device), lambda: load_parser(
        name, search_dirs=files.search_dirs("human_parsing"), device=device))


def _latent_format(cfg):
    """ComfyUI's SD-1.5 latent format (its latent-to-RGB preview factors) for 4-channel models, else None."""
    if cfg.unet.latent_channels != 4:
        return None
    import comfy.latent_formats

    fmt = comfy.latent_formats.SD15()
    fmt.scale_factor = cfg.vae.scaling_factor
    return fmt


def load_m2h_model(checkpoint: str, base: str, clip_vision: str, motion: str, precision: str, vae=None,
                   clip_vision_model=None):
    """The loader node: an M2HModelPatcher (ComfyUI's memory manager owns it; ComfyUI's node cache reuses it
    while the inputs are unchanged). Weights are built on the offload device; nothing is moved here."""
    from m2h_core.inference.pipeline import load_pipeline

    from .comfy_encoders import ComfyClipVision, ComfyVAE
    from .model_patcher import M2HModelPatcher, M2HSource

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
    codec = ComfyVAE(vae) if vae is not None else None
    embedder = ComfyClipVision(clip_vision_model) if clip_vision_model is not None else None
    offload = mm.unet_offload_device()

    def build():
        return load_pipeline(device=offload, dtype=dtype, codec=codec, embedder=embedder, **paths)

    pipe = build()
    parts = [p for p, on in (("connected VAE", codec), ("connected CLIP vision", embedder)) if on is not None]
    desc = (f"{os.path.basename(paths['checkpoint'])} ({pipe.cfg.name}, {pipe.cfg.width}x{pipe.cfg.height}, "
            f"{str(dtype).replace('torch.', '')}{', ' + ', '.join(parts) if parts else ''})")
    patcher = M2HModelPatcher.from_pipeline(pipe, M2HSource(build, desc, dtype, codec, embedder), device, offload,
                                            _latent_format(pipe.cfg))
    log.info("M2H Model Loader: loaded %s (%.0f MB)", desc, patcher.model_size() / 2 ** 20)
    return patcher


def _is_oom(err: BaseException) -> bool:
    mm = _mm()
    return isinstance(err, mm.OOM_EXCEPTION) or "out of memory" in str(err).lower()


def _preview_callback(patcher, steps: int, frame: int):
    """ComfyUI's own previewer (latent_preview, the user's --preview-method) on one frame of the predicted x0,
    every step; also drives the progress bar."""
    import latent_preview

    if patcher.model.latent_format is None:
        bar = progress_bar(steps)
        return None, bar
    callback = latent_preview.prepare_callback(patcher, steps)

    def preview(step: int, total: int, x0: torch.Tensor) -> None:
        callback(step, x0[0, min(frame, x0.shape[1] - 1)][None].float(), None, total)

    return preview, None


def sample_with_host(patcher, video, head, settings, steps: int):
    """Load the model through ComfyUI (load_models_gpu: nothing moves if it is already there) and sample
    (logic.run_sampler); on out-of-memory retry once with logic.low_memory_retry's settings, for this run only."""
    mm = _mm()
    mm.load_models_gpu([patcher])
    pipe = patcher.pipeline
    frame = video.num_frames // 2

    def run(settings, pipe):
        preview, bar = _preview_callback(patcher, steps, frame)
        return logic.run_sampler(pipe, video, head, settings, progress=bar, cancel=cancel_check, preview=preview)

    try:
        return run(settings, pipe)
    except Exception as err:  # noqa: BLE001 - only out-of-memory is retried
        retry = logic.low_memory_retry(pipe, settings, video.num_frames) if _is_oom(err) else None
        if retry is None:
            raise
    mm.soft_empty_cache(True)
    smaller, smaller_pipe = retry
    log.warning("M2H Sampler: out of memory with context_frames=%d; retrying this run with context_frames=%d, "
                "context_overlap=%d, one window and one CFG pass per UNet call and VAE/CLIP chunks of %d (set "
                "context_frames lower to avoid this)", settings.for_video(pipe.cfg, video.num_frames)[0].context_frames,
                smaller.context_frames, smaller.context_overlap, smaller_pipe.encoders.chunk)
    return run(smaller, smaller_pipe)


# ------------------------------------------------------------------------------------------ nodes


class M2HMannequinSegmentation(_M2HNode):
    SPEC = spec.SEGMENTATION

    @classmethod
    def validate_inputs(cls, model):
        return cls.check_names(model=model)

    @classmethod
    def execute(cls, frames, model, clothing_classes, grow, feather, fill_holes, temporal_window, masks=None
                ) -> io.NodeOutput:
        cls.check_available()
        parser = None
        if masks is None:
            parser = _parser(model)
            log.info("M2H Segmentation: %s (%s)", getattr(parser, "path", model), parser.label_set.name)
        cloth, image, person = logic.segment(frames, parser, clothing_classes, grow=grow, feather=feather,
                                             fill_holes=fill_holes, temporal_window=temporal_window, masks=masks)
        return io.NodeOutput(cloth, image, person)


class M2HDWPose(_M2HNode):
    SPEC = spec.DWPOSE

    @classmethod
    def validate_inputs(cls, detector, pose_model):
        return cls.check_names(detector=detector, pose_model=pose_model)

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


class M2HIdentityPhoto(_M2HNode):
    SPEC = spec.IDENTITY_PHOTO

    @classmethod
    def validate_inputs(cls, face_model):
        return cls.check_names(face_model=face_model)

    @classmethod
    def execute(cls, identity, model, face_model, placement, reference_frame, face_scale, pose=None
                ) -> io.NodeOutput:
        cls.check_available()
        from m2h_core.preprocess.face import FaceAnalyzer

        files.check_name("insightface", face_model)
        dirs = files.search_dirs("insightface")
        analyzer = _cached_preprocessor(("face", face_model), lambda: FaceAnalyzer(face_model, dirs))
        log.info("M2H Identity Photo: %s from %s, providers %s", face_model, analyzer.folder,
                 ", ".join(analyzer.providers))
        cfg = model.cfg
        cond, preview = logic.encode_identity(identity, analyzer, cfg.height, cfg.width, placement=placement,
                                              pose=pose, reference_frame=reference_frame, face_scale=face_scale,
                                              identity_input=cfg.identity_input)
        return io.NodeOutput(cond, preview)


class M2HModelLoader(_M2HNode):
    SPEC = spec.MODEL_LOADER

    @classmethod
    def validate_inputs(cls, m2h_checkpoint, base_model, clip_vision, motion_module):
        return cls.check_names(m2h_checkpoint=m2h_checkpoint, base_model=base_model, clip_vision=clip_vision,
                               motion_module=motion_module)

    @classmethod
    def execute(cls, m2h_checkpoint, base_model, clip_vision, motion_module, precision, vae=None,
                clip_vision_model=None) -> io.NodeOutput:
        cls.check_available()
        return io.NodeOutput(load_m2h_model(m2h_checkpoint, base_model, clip_vision, motion_module, precision,
                                            vae=vae, clip_vision_model=clip_vision_model))


class M2HSampler(_M2HNode):
    SPEC = spec.SAMPLER

    @classmethod
    def validate_inputs(cls, parsing_model="auto"):
        return cls.check_names(parsing_model=parsing_model)

    @classmethod
    def execute(cls, model, frames, clothing_mask, pose_images, head_cond, seed, steps, cfg, scheduler,
                context_frames, context_overlap, resize, pose_strength, identity_strength, garment_lock,
                keep_background, parsing_model, **more) -> io.NodeOutput:
        cls.check_available()
        if getattr(model, "zero_shot", False):
            raise ValueError("this model is from M2H Public Weights Loader: connect it to M2H Zero-Shot Sampler")
        settings = logic.sampler_settings(seed=seed, steps=steps, cfg=cfg, scheduler=scheduler,
                                          context_frames=context_frames, context_overlap=context_overlap,
                                          pose_strength=pose_strength, identity_strength=identity_strength)
        video = logic.prepare_sampler_inputs(frames, clothing_mask, pose_images, model.cfg.height,
                                             model.cfg.width, resize)
        for note in video.notes:
            log.info("M2H Sampler: %s", note)
        images, latents = sample_with_host(model, video, head_cond, settings, steps)
        parser = _parser(parsing_model) if garment_lock or keep_background else None
        composited = logic.composite_frames(images, video, parser, garment_lock=garment_lock,
                                            keep_background=keep_background)
        # ComfyUI's LATENT is the VAE's raw latent (the model's latent_format scales it): undo the model's factor
        return io.NodeOutput(composited, logic.comfy_latent(latents, model.cfg.vae.scaling_factor))


class M2HRegenerateMask(_M2HNode):
    SPEC = spec.REGEN_MASK

    @classmethod
    def validate_inputs(cls, parsing_model="auto"):
        return cls.check_names(parsing_model=parsing_model)

    @classmethod
    def execute(cls, frames, parsing_model, clothing_classes, head_scale, hair_margin, grow_into_garment, feather,
                temporal_window, clothing_mask=None, person_mask=None, keypoints=None) -> io.NodeOutput:
        cls.check_available()
        parser = None if clothing_mask is not None and person_mask is not None else _parser(parsing_model)
        return io.NodeOutput(*logic.regenerate_mask(
            frames, parser, clothing_classes, head_scale=head_scale, hair_margin=hair_margin,
            grow_into_garment=grow_into_garment, feather=feather, temporal_window=temporal_window,
            clothing_mask=clothing_mask, person_mask=person_mask, pose=keypoints))


class M2HComposite(_M2HNode):
    SPEC = spec.COMPOSITE

    @classmethod
    def validate_inputs(cls, parsing_model="auto"):
        return cls.check_names(parsing_model=parsing_model)

    @classmethod
    def execute(cls, generated, source, garment_lock, keep_background, seam, parsing_model, lock_mask=None,
                mannequin_mask=None) -> io.NodeOutput:
        cls.check_available()
        parser = _parser(parsing_model) if garment_lock or keep_background else None
        return io.NodeOutput(logic.composite_any(generated, source, parser, garment_lock=garment_lock,
                                                 keep_background=keep_background, seam=seam, lock_mask=lock_mask,
                                                 mannequin_mask=mannequin_mask))


def load_public_model(base, motion, controlnet, ip_adapter, ip_lora, clip_vision, lora_strength, precision, vae=None):
    """M2H Public Weights Loader: the zero-shot pipeline from public files, owned by ComfyUI's memory manager."""
    from m2h_core.inference.zero_shot_loader import load_zero_shot

    from . import zero_shot
    from .comfy_encoders import ComfyVAE
    from .model_patcher import M2HSource
    from .zero_shot_patcher import ZeroShotPatcher

    mm = _mm()
    device = mm.get_torch_device()
    dtype = logic.precision_dtype(precision, fp16_ok=mm.should_use_fp16(device), bf16_ok=mm.should_use_bf16(device))
    paths = zero_shot.public_files(files.resolve, base, motion, controlnet, ip_adapter, ip_lora, clip_vision,
                                   lora_strength, none=files.NONE, lora_names=files.options("loras"))
    codec = ComfyVAE(vae) if vae is not None else None
    offload = mm.unet_offload_device()

    def build():
        return load_zero_shot(paths, device=offload, dtype=dtype, codec=codec)

    pipe = build()
    desc = (f"zero-shot {os.path.basename(paths.base)} + {os.path.basename(paths.ip_adapter)} "
            f"({pipe.cfg.width}x{pipe.cfg.height}, {str(dtype).replace('torch.', '')})")
    patcher = ZeroShotPatcher.from_pipeline(pipe, M2HSource(build, desc, dtype, codec), device, offload,
                                            _latent_format(pipe.cfg))
    log.info("M2H Public Weights Loader: loaded %s (%.0f MB)", desc, patcher.model_size() / 2 ** 20)
    return patcher


class M2HPublicLoader(_M2HNode):
    SPEC = spec.PUBLIC_LOADER

    @classmethod
    def validate_inputs(cls, base_model, motion_module, controlnet_pose, ip_adapter, ip_lora, clip_vision):
        return cls.check_names(base_model=base_model, motion_module=motion_module, controlnet_pose=controlnet_pose,
                               ip_adapter=ip_adapter, ip_lora=ip_lora, clip_vision=clip_vision)

    @classmethod
    def execute(cls, base_model, motion_module, controlnet_pose, ip_adapter, ip_lora, clip_vision, lora_strength,
                precision, vae=None) -> io.NodeOutput:
        cls.check_available()
        return io.NodeOutput(load_public_model(base_model, motion_module, controlnet_pose, ip_adapter, ip_lora,
                                               clip_vision, lora_strength, precision, vae=vae))


class M2HZeroShotSampler(_M2HNode):
    SPEC = spec.ZERO_SHOT_SAMPLER

    @classmethod
    def validate_inputs(cls, parsing_model="auto"):
        return cls.check_names(parsing_model=parsing_model)

    @classmethod
    def execute(cls, model, frames, regen_mask, clothing_mask, pose_images, head_cond, seed, steps, cfg, scheduler,
                context_frames, context_overlap, resize, pose_strength, identity_strength, mask_mode, garment_lock,
                keep_background, parsing_model, positive=None, negative=None) -> io.NodeOutput:
        cls.check_available()
        from m2h_core.frames import to_nhwc
        from m2h_core.inference.zero_shot import sample_zero_shot

        from . import zero_shot

        if not getattr(model, "zero_shot", False):
            raise ValueError("M2H Zero-Shot Sampler needs the model of M2H Public Weights Loader (an M2H checkpoint "
                             "goes to M2H Sampler)")
        video, regen = zero_shot.prepare_inputs(frames, regen_mask, clothing_mask, pose_images, model.cfg.height,
                                                model.cfg.width, resize)
        settings = logic.sampler_settings(seed=seed, steps=steps, cfg=cfg, scheduler=scheduler,
                                          context_frames=context_frames, context_overlap=context_overlap,
                                          pose_strength=pose_strength, identity_strength=identity_strength)
        _mm().load_models_gpu([model])
        pipe = model.pipeline
        text = zero_shot.prompt_tokens(positive, negative, pipe.model.text, model.cfg.unet.cross_attention_dim)
        preview, bar = _preview_callback(model, steps, video.num_frames // 2)
        res = sample_zero_shot(pipe, video, head_cond.at_size(video.height, video.width), regen, settings, mask_mode,
                               text=text, progress=bar, cancel=cancel_check, preview=preview)
        parser = _parser(parsing_model) if garment_lock or keep_background else None
        images = logic.composite_frames(to_nhwc(res.frames), video, parser, garment_lock=garment_lock,
                                        keep_background=keep_background)
        return io.NodeOutput(images, logic.comfy_latent(res.latents, model.cfg.vae.scaling_factor))


NODE_CLASSES = (M2HMannequinSegmentation, M2HDWPose, M2HIdentityPhoto, M2HModelLoader, M2HSampler, M2HRegenerateMask,
                M2HComposite, M2HPublicLoader, M2HZeroShotSampler)


class M2HExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        files.register_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        files.register_folders()
        for cls in NODE_CLASSES:
            missing = missing_dependencies(cls.SPEC.needs)
            cls.UNAVAILABLE = (f"missing optional dependency {', '.join(missing)} ({install_advice(missing)}; see "
                               "the README's Install section)") if missing else None
            if cls.UNAVAILABLE:
                log.warning("M2HVideo: node '%s' disabled: %s", cls.SPEC.display_name, cls.UNAVAILABLE)
        return list(NODE_CLASSES)
