"""Stand-in of comfy.model_management: one CPU device, a list of loaded models, cancel and out-of-memory.

As in ComfyUI, `load_models_gpu` loads a patcher through `partially_load` (nothing moves when it is already loaded)
and keeps it in `current_loaded_models`; `unload_all_models` detaches every loaded patcher (what POST /free does).
"""

from __future__ import annotations

import gc

import torch

OOM_EXCEPTION = torch.OutOfMemoryError


class InterruptProcessingException(Exception):
    pass


_interrupted = False


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupted
    _interrupted = value


def processing_interrupted() -> bool:
    return _interrupted


def throw_exception_if_processing_interrupted() -> None:
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return False


def soft_empty_cache(force: bool = False) -> None:
    gc.collect()


def module_size(module: torch.nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device

    def model_load(self) -> None:
        self.model.partially_load(self.device, 1e32)

    def model_unload(self, unpatch_weights: bool = True) -> None:
        self.model.detach(unpatch_weights)


current_loaded_models: list[LoadedModel] = []


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    for model in models:
        loaded = next((m for m in current_loaded_models if m.model is model), None)
        if loaded is None:
            loaded = LoadedModel(model)
            current_loaded_models.insert(0, loaded)
        loaded.model_load()


def unload_all_models() -> None:
    while current_loaded_models:
        current_loaded_models.pop().model_unload()
