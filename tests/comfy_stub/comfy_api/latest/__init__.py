"""Stand-in of comfy_api.latest: `ComfyExtension` and the `io` namespace of the V3 node API (schema objects that
record what they were given; `NodeOutput(...).result` is the output tuple, as in ComfyUI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list:
        return []


@dataclass
class _Socket:
    io_type: str
    id: str
    options: dict = field(default_factory=dict)


def _type(io_type: str):
    class _T:
        def __init__(self):
            raise TypeError("use .Input / .Output")

        @staticmethod
        def Input(id: str, **kw: Any) -> _Socket:  # noqa: N802 - ComfyUI's name
            return _Socket(io_type, id, kw)

        @staticmethod
        def Output(id: str | None = None, **kw: Any) -> _Socket:  # noqa: N802
            return _Socket(io_type, id or io_type, kw)

    _T.io_type = io_type
    return _T


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    description: str = ""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    is_output_node: bool = False


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None):
        self.args = args
        self.ui = ui

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None


io = SimpleNamespace(
    Schema=Schema, ComfyNode=ComfyNode, NodeOutput=NodeOutput, Custom=_type,
    Image=_type("IMAGE"), Mask=_type("MASK"), Latent=_type("LATENT"), Vae=_type("VAE"),
    ClipVision=_type("CLIP_VISION"), Conditioning=_type("CONDITIONING"), Int=_type("INT"), Float=_type("FLOAT"),
    Boolean=_type("BOOLEAN"),
    String=_type("STRING"), Combo=_type("COMBO"),
)

__all__ = ["ComfyExtension", "io"]
