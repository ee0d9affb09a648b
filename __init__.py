"""ComfyUI-M2HVideo: mannequin video + one identity photo -> a video of that person wearing the clothes.

ComfyUI loads this file as the custom-node package. It exports only `comfy_entrypoint` (the V3 API): if
`NODE_CLASS_MAPPINGS` were exported too, ComfyUI would use it and ignore the entrypoint.

Importing this module never fails ComfyUI's start and needs nothing but the standard library: the nodes (and
through them torch, m2h_core and the optional onnxruntime / insightface) are imported when ComfyUI calls the
entrypoint, and a node whose optional dependency is missing is disabled with the reason logged.
"""

import logging
import os
import sys

__version__ = "0.1.0"

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)  # `import m2h_core` (appended: never shadows ComfyUI's own modules)

log = logging.getLogger("M2HVideo")


async def comfy_entrypoint():
    """Called by ComfyUI's loader; returns the extension listing the pack's nodes."""
    from .nodes.comfy_nodes import M2HExtension

    return M2HExtension()


__all__ = ["comfy_entrypoint"]
