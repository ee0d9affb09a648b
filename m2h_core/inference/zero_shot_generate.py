"""`m2h generate --zero-shot`: mannequin video + identity photo(s) -> human video from public files (no M2H checkpoint).

The same order as `generate.generate` (checks without models first: output path, file headers, input files), then
human parsing (clothing + person masks), DWPose, face analysis, the regenerate mask (`regen_mask.regenerate_mask`:
the mannequin minus the garment plus the head region from the pose), the zero-shot sampler, and decoding + garment
lock + keep background chunk by chunk (`generate.write_output`). Garment lock and keep background are always on
here: they finish what the latent blend keeps (the source outside the regenerate mask) at pixel level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from . import inputs
from .generate import GenerateReport, GenerateRequest, Preprocessors, preprocess, read_sources, write_output
from .regen_mask import RegenMaskSettings, regenerate_mask
from .sampler import SamplerSettings
from .zero_shot import face_crop, sample_zero_shot, zero_shot_config
from .zero_shot_loader import PublicFiles, load_zero_shot
from ..frames import to_float, to_nchw
from ..video_io import check_output_path


def generate_zero_shot(files: PublicFiles, req: GenerateRequest, settings: SamplerSettings | None = None,
                       mask_mode: str = "latent_blend", device: str = "cpu", dtype: torch.dtype = torch.float32,
                       progress: Callable[[int, int], None] | None = None,
                       models: Preprocessors | None = None) -> GenerateReport:
    check_output_path(req.out, create=False)
    cfg = zero_shot_config(files.check())
    src = read_sources(req, (cfg.height, cfg.width))
    settings, notes = settings or SamplerSettings(), []
    models = models or Preprocessors(req.search_dirs)
    req = replace(req, garment_lock=True, keep_background=True)
    h, w = cfg.height, cfg.width
    pre = preprocess(src, req, cfg, notes, models, person_mask=True)  # the same preprocessing as `m2h generate`
    video, ident, chosen = pre.video, pre.identity, pre.photos
    cloth = video.clothing_masks.numpy() > 0.5
    masks = regenerate_mask(cloth, pre.person_mask | cloth, pre.keypoints, RegenMaskSettings.for_height(h))
    regen = masks.regen
    notes += masks.notes
    if not regen.any():
        raise inputs.InputError(f"{req.video}: no person region to redraw (the parser found no body outside the "
                                "garment and the pose no head)")
    pipe = load_zero_shot(files, device, dtype)
    photo = to_nchw(to_float(chosen.photo))  # the face crop from the photo
    res = sample_zero_shot(pipe, video, ident, torch.from_numpy(regen), settings, mask_mode, progress=progress,
                           decode=False, face=face_crop(photo, chosen.face.bbox))
    notes += res.notes
    written = write_output(res.latents, pipe.encoders, video, req, models, src.fps, notes)
    return GenerateReport(req.out, written, src.fps, w, h, src.notes + notes)
