"""Stand-in of comfy.model_patcher.ModelPatcher: owns a torch module and moves it between devices.

Only the part ComfyUI's memory manager drives: `patch_model` / `load` (to the load device), `partially_load`,
`detach` / `unpatch_model` (back to the offload device), `clone`, `model_size`, `loaded_size`.
"""

from __future__ import annotations

from . import model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.weight_inplace_update = weight_inplace_update
        if not hasattr(self.model, "model_loaded_weight_memory"):
            self.model.model_loaded_weight_memory = 0
        if not hasattr(self.model, "device"):
            self.model.device = offload_device

    def model_size(self) -> int:
        if self.size > 0:
            return self.size
        self.size = model_management.module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def current_loaded_device(self):
        return self.model.device

    def model_dtype(self):
        return next(self.model.parameters()).dtype

    def clone(self):
        n = self.__class__.__new__(self.__class__)
        ModelPatcher.__init__(n, self.model, self.load_device, self.offload_device, self.size,
                              self.weight_inplace_update)
        return n

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size()

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if load_weights:
            self.load(device_to, lowvram_model_memory=lowvram_model_memory, force_patch_weights=force_patch_weights,
                      full_load=lowvram_model_memory == 0)
        return self.model

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        before = self.loaded_size()
        self.patch_model(device_to, load_weights=True, force_patch_weights=force_patch_weights)
        return self.loaded_size() - before

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights and device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
            self.model.model_loaded_weight_memory = 0

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model

