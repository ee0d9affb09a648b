"""m2h_core: the M2HVideo library (mannequin video + identity photo -> human video).

Pure PyTorch / diffusers / onnxruntime. Never imports ComfyUI.
"""

__version__ = "0.1.0"
