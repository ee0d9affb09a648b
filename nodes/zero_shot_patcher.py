"""The zero-shot model as a ComfyUI-managed model: `M2HModelPatcher` (memory manager, CPU release/reload) whose
`pipeline` is the zero-shot one. Imported only inside ComfyUI."""

from __future__ import annotations

from .model_patcher import M2HModelPatcher


class ZeroShotPatcher(M2HModelPatcher):
    """The M2H_MODEL value of M2H Public Weights Loader (M2H Sampler refuses it; M2H Zero-Shot Sampler takes it)."""

    zero_shot = True

    @property
    def pipeline(self):
        from m2h_core.inference.zero_shot import ZeroShotEncoders, ZeroShotPipeline

        m = self.model
        codec = self.source.codec if self.source is not None else None
        return ZeroShotPipeline(m.m2h, ZeroShotEncoders(m.vae, m.clip, self.cfg.vae.scaling_factor, codec))
