"""The M2H model as a ComfyUI-managed model: `M2HModelPatcher`, a small subclass of comfy's ModelPatcher.

ComfyUI's memory manager (load_models_gpu / free_memory / "Unload models" / POST /free / --lowvram, --highvram,
--gpu-only) sees and moves every weight of the pipeline (UNet + motion modules + adapter + encoders E_pose, E_id,
H, and the pack's own VAE/CLIP when the loader uses them). There is no module-level cache: ComfyUI's node cache
keeps the loader's output while its inputs are unchanged.

On a CPU-only host "unloading" cannot move the weights anywhere: there, when ComfyUI unloads the model (POST /free
{"unload_models": true}, or to make room for another model), its weights are released and read again from the same
files on the next run (logged both times), so /free gives the memory back as it does for GPU memory.
Imported only inside ComfyUI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from comfy.model_patcher import ModelPatcher

log = logging.getLogger("M2HVideo")


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so the process would not shrink)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class M2HModules(torch.nn.Module):
    """Every weight of the pipeline in one module tree (what ModelPatcher sizes and moves). ``latent_format`` is
    what ComfyUI's latent_preview reads (SD-1.5's latent-to-RGB factors for 4-channel models)."""

    def __init__(self, pipeline, latent_format: Any = None):
        super().__init__()
        self.latent_format = latent_format
        self.set_pipeline(pipeline)

    def set_pipeline(self, pipeline) -> None:
        self.m2h = pipeline.model
        self.vae = pipeline.encoders.vae  # None when a host VAE is used
        self.clip = pipeline.encoders.clip  # None when a host CLIP_VISION is used


@dataclass
class M2HSource:
    """How the loader built the model: enough to build it again after a release, and to describe it."""

    build: Callable[[], Any]  # () -> M2HPipeline on the offload device, in the model dtype
    description: str
    dtype: torch.dtype
    codec: Any = None  # a host VAE (VAECodec) given to the loader, else None
    embedder: Any = None  # a host CLIP_VISION (ImageEmbedder), else None


class M2HModelPatcher(ModelPatcher):
    """The M2H_MODEL value. `pipeline` gives an M2HPipeline over the current weights."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False, source=None):
        super().__init__(model, load_device, offload_device, size=size, weight_inplace_update=weight_inplace_update)
        self.source: M2HSource | None = source
        self.cfg = model.m2h.cfg
        self.released = False
        self.loads = 0  # times the weights were read from files (1 + reloads after releases)

    @classmethod
    def from_pipeline(cls, pipeline, source: M2HSource, load_device, offload_device, latent_format=None):
        p = cls(M2HModules(pipeline, latent_format), load_device, offload_device, source=source)
        p.loads = 1
        return p

    def clone(self):
        n = super().clone()
        n.source, n.cfg, n.released, n.loads = self.source, self.cfg, self.released, self.loads
        return n

    @property
    def description(self) -> str:
        return self.source.description if self.source else self.cfg.name

    @property
    def pipeline(self):
        from m2h_core.inference.encoders import FrozenEncoders
        from m2h_core.inference.pipeline import M2HPipeline

        m = self.model
        src = self.source or M2HSource(lambda: None, "", torch.float32)
        return M2HPipeline(m.m2h, FrozenEncoders(m.vae, m.clip, self.cfg, codec=src.codec, embedder=src.embedder))

    # -- CPU hosts: unloading releases the weights, the next load reads them again -----------------------------
    def _release(self) -> None:
        if self.released or self.source is None or self.load_device.type != "cpu":
            return
        size = self.model_size()
        self.model.to("meta")
        self.released = True
        _return_freed_memory()
        log.info("M2H: ComfyUI unloaded %s; its weights were released (%.0f MB) and are read again from the files "
                 "on the next run", self.description, size / 2 ** 20)

    def _reload(self) -> None:
        if not self.released:
            return
        pipe = self.source.build()
        self.model.set_pipeline(pipe)
        self.model.device = self.offload_device
        self.released = False
        self.loads += 1
        log.info("M2H: read %s again from its files", self.description)

    def detach(self, unpatch_all=True):
        out = super().detach(unpatch_all)
        self._release()
        return out

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        self._reload()
        return super().patch_model(device_to, lowvram_model_memory, load_weights, force_patch_weights)

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        """Always a full load: M2H's layers are plain torch modules (not comfy.ops casts), so a partial load would
        leave some on the offload device. In --lowvram mode the sampler offloads by stage instead."""
        self._reload()
        return super().load(device_to, 0, force_patch_weights, True)

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        self._reload()
        if self.model.model_loaded_weight_memory >= self.model_size():
            return 0
        self.load(device_to, force_patch_weights=force_patch_weights, full_load=True)
        return self.model_size()

    def partially_unload(self, device_to, memory_to_free=0):
        return 0  # all or nothing (see load); ComfyUI then unloads it whole
