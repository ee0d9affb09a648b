"""Inference: frozen encoders, loading a pipeline from files, the sampler and `m2h generate` (paper Fig. 2b).

Imports nothing from `m2h_core.training` or `m2h_core.demo`: ComfyUI's nodes load only this side.
"""
