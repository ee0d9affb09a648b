"""Writes the pack's workflows from one description each, in both formats:

- UI format (drag and drop into ComfyUI; also served as the pack's templates) -> example_workflows/<title>.json
  (the template browser shows the file name as the title, and <title>.jpg / .webp as its thumbnail: made from a
  real render by tests/host/check_templates.py --thumbnails)
- API format (POST /prompt; used by tests/host/run_host_test.py)             -> workflows/api/<name>.json

Run `python workflows/build_workflows.py` after changing a node's inputs; tests/test_workflows.py fails when the
files on disk differ from what this script writes. Widget values are positional in the UI format: the order
comes from nodes/spec.py (the pack's nodes) and CORE_NODES below (ComfyUI's own nodes, checked against a real
server's /object_info by the host test).
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nodes import spec  # noqa: E402

UI_DIR = ROOT / "example_workflows"
API_DIR = ROOT / "workflows" / "api"


@dataclass(frozen=True)
class NodeType:
    """What a workflow needs to know about a node type: sockets, widgets (UI order), outputs."""

    name: str
    sockets: tuple[tuple[str, str, bool], ...]  # (name, type, optional)
    widgets: tuple[tuple[str, str], ...]  # (name, type) in widget order
    outputs: tuple[tuple[str, str], ...]  # (display name, type)
    defaults: dict = field(default_factory=dict)
    ui_extra: dict = field(default_factory=dict)  # widget name -> extra UI value stored after it
    output_node: bool = False


# ComfyUI core nodes the workflows use (comfy_extras/nodes_video.py, nodes.py, comfy_extras/nodes_mask.py).
CORE_NODES = {
    "LoadVideo": NodeType("LoadVideo", (), (("file", "COMBO"),), (("VIDEO", "VIDEO"),),
                          ui_extra={"file": "image"}),
    "GetVideoComponents": NodeType("GetVideoComponents", (("video", "VIDEO", False),), (),
                                   (("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT"))),
    "LoadImage": NodeType("LoadImage", (), (("image", "COMBO"),), (("IMAGE", "IMAGE"), ("MASK", "MASK")),
                          ui_extra={"image": "image"}),
    "CreateVideo": NodeType("CreateVideo", (("images", "IMAGE", False), ("audio", "AUDIO", True)),
                            (("fps", "FLOAT"),), (("VIDEO", "VIDEO"),), defaults={"fps": 30.0}),
    "SaveVideo": NodeType("SaveVideo", (("video", "VIDEO", False),),
                          (("filename_prefix", "STRING"), ("format", "COMBO"), ("codec", "COMBO")), (),
                          defaults={"filename_prefix": "video/ComfyUI", "format": "auto", "codec": "auto"},
                          output_node=True),
    "PreviewImage": NodeType("PreviewImage", (("images", "IMAGE", False),), (), (), output_node=True),
    "ImageToMask": NodeType("ImageToMask", (("image", "IMAGE", False),), (("channel", "COMBO"),),
                            (("MASK", "MASK"),), defaults={"channel": "red"}),
    "MarkdownNote": NodeType("MarkdownNote", (), (("text", "STRING"),), ()),
    "MaskToImage": NodeType("MaskToImage", (("mask", "MASK", False),), (), (("IMAGE", "IMAGE"),)),
}
UI_ONLY = {"MarkdownNote", "Note"}  # frontend-only nodes: not in the API format


def pack_node_type(s: spec.NodeSpec) -> NodeType:
    return NodeType(
        s.node_id,
        tuple((i.id, i.type, i.optional) for i in s.inputs if not i.is_widget),
        tuple((i.id, i.type) for i in s.inputs if i.is_widget),
        tuple((o.display_name or o.id, o.type) for o in s.outputs),
        defaults={i.id: i.default for i in s.inputs if i.is_widget},
        ui_extra={i.id: "fixed" for i in s.inputs if i.control_after_generate},
        output_node=s.output_node,
    )


NODE_TYPES: dict[str, NodeType] = {**CORE_NODES, **{s.node_id: pack_node_type(s) for s in spec.NODES}}


@dataclass
class Node:
    id: int
    type: NodeType
    widgets: dict[str, Any]
    pos: tuple[float, float]
    size: tuple[float, float]
    title: str | None = None
    links_in: dict[str, tuple["Node", str]] = field(default_factory=dict)


NOTE_X = 60  # notes start here (graph units): inside the first view, right of the sidebar
X_SHIFT = 600  # the other nodes sit right of the notes column


class Graph:
    def __init__(self, name: str, title: str, file_title: str):
        self.name, self.title, self.file_title = name, title, file_title
        self.nodes: list[Node] = []

    @property
    def uuid(self) -> str:
        """The workflow id: a UUID (the frontend's schema requires one), stable per workflow name."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/m2hvideo/ComfyUI-M2HVideo/{self.name}"))

    def add(self, type_name: str, pos, size=(320, 200), title=None, **widgets) -> Node:
        t = NODE_TYPES[type_name]
        unknown = set(widgets) - {w for w, _ in t.widgets}
        if unknown:
            raise KeyError(f"{type_name} has no widgets {unknown}")
        pos = (NOTE_X, pos[1]) if type_name in UI_ONLY else (pos[0] + X_SHIFT, pos[1])
        n = Node(len(self.nodes) + 1, t, {**t.defaults, **widgets}, pos, size, title)
        self.nodes.append(n)
        return n

    def link(self, src: Node, output: str, dst: Node, input_name: str) -> None:
        outs = [o for o, _ in src.type.outputs]
        if output not in outs:
            raise KeyError(f"{src.type.name} has no output {output!r} ({outs})")
        ins = [s for s, _, _ in dst.type.sockets] + [w for w, _ in dst.type.widgets]
        if input_name not in ins:
            raise KeyError(f"{dst.type.name} has no input {input_name!r}")
        dst.links_in[input_name] = (src, output)

    # -------------------------------------------------------------------------------------------- formats

    def _order(self) -> list[Node]:
        done: list[Node] = []
        seen: set[int] = set()

        def visit(n: Node):
            if n.id in seen:
                return
            seen.add(n.id)
            for src, _ in n.links_in.values():
                visit(src)
            done.append(n)

        for n in self.nodes:
            visit(n)
        return done

    def api(self) -> dict:
        out = {}
        for n in self.nodes:
            if n.type.name in UI_ONLY:
                continue
            inputs: dict[str, Any] = {}
            for w, _ in n.type.widgets:
                inputs[w] = n.widgets.get(w)
            for name, (src, output) in n.links_in.items():
                slot = [o for o, _ in src.type.outputs].index(output)
                inputs[name] = [str(src.id), slot]
            inputs = {k: v for k, v in inputs.items() if v is not None}
            out[str(n.id)] = {"class_type": n.type.name, "inputs": inputs,
                              "_meta": {"title": n.title or n.type.name}}
        return out

    def ui(self) -> dict:
        links = []
        out_links: dict[tuple[int, str], list[int]] = {}
        in_link: dict[tuple[int, str], int] = {}
        for n in self.nodes:
            for name, (src, output) in n.links_in.items():
                lid = len(links) + 1
                slot_out = [o for o, _ in src.type.outputs].index(output)
                inputs_order = self._ui_inputs(n)
                slot_in = [i["name"] for i in inputs_order].index(name)
                typ = dict(src.type.outputs)[output]
                links.append([lid, src.id, slot_out, n.id, slot_in, typ])
                out_links.setdefault((src.id, output), []).append(lid)
                in_link[(n.id, name)] = lid
        order = {n.id: i for i, n in enumerate(self._order())}
        nodes = []
        for n in self.nodes:
            inputs = []
            for entry in self._ui_inputs(n):
                e = dict(entry)
                e["link"] = in_link.get((n.id, e["name"]))
                inputs.append(e)
            outputs = []
            for slot, (o, typ) in enumerate(n.type.outputs):
                outputs.append({"name": o, "type": typ, "slot_index": slot, "links": out_links.get((n.id, o))})
            wv = []
            for w, _ in n.type.widgets:
                wv.append(n.widgets.get(w))
                if w in n.type.ui_extra:
                    wv.append(n.type.ui_extra[w])
            node = {"id": n.id, "type": n.type.name, "pos": list(n.pos), "size": list(n.size), "flags": {},
                    "order": order[n.id], "mode": 0, "inputs": inputs, "outputs": outputs,
                    "properties": {"Node name for S&R": n.type.name}, "widgets_values": wv}
            if n.title:
                node["title"] = n.title
            if n.type.name in UI_ONLY:
                node["color"], node["bgcolor"] = "#432", "#653"
            nodes.append(node)
        return {"id": self.uuid, "revision": 0, "last_node_id": len(self.nodes),
                "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [20, 100]}, "m2hvideo_workflow": self.name,
                          "m2hvideo_title": self.title},
                "version": 0.4}

    def _ui_inputs(self, n: Node) -> list[dict]:
        entries = []
        for name, typ, optional in n.type.sockets:
            e = {"name": name, "type": typ}
            if optional:
                e["shape"] = 7
            entries.append(e)
        for w, typ in n.type.widgets:
            if w in n.links_in:
                src, output = n.links_in[w]
                entries.append({"name": w, "type": dict(src.type.outputs)[output], "widget": {"name": w}})
        return entries


# ------------------------------------------------------------------------------------------ the workflows

MODELS_NOTE = """## M2HVideo: model files

Put each file in the ComfyUI folder shown (names are what the nodes look for; nothing is downloaded):

| node | file | folder |
| --- | --- | --- |
| M2H Model Loader | `m2hvideo_sd15.safetensors` (trained with this pack's `train/`) | `models/m2hvideo/` |
| M2H Model Loader | `v1-5-pruned-emaonly.safetensors` (SD-1.5, for its VAE) | `models/checkpoints/` |
| M2H Model Loader | `clip-vit-large-patch14.safetensors` (CLIP ViT-L/14 image encoder) | `models/clip_vision/` |
| M2H DWPose | `yolox_l.onnx`, `dw-ll_ucoco_384.onnx` | `models/dwpose/` |
| M2H Mannequin Segmentation | `segformer_b2_clothes/` folder, or `parsing_atr.onnx` / `parsing_lip.onnx` | `models/human_parsing/` |
| M2H Identity Photo | insightface `antelopev2/` (or `buffalo_l/`) folder | `models/insightface/models/` |

A self-contained M2H checkpoint (one that embeds its VAE and CLIP) needs base_model and clip_vision = none.
You may instead connect core **Load VAE** / **Load CLIP Vision** to the loader's optional vae / clip_vision inputs.
Missing insightface? `pip install --no-deps insightface` (see the README: its dependencies break onnxruntime).
insightface model packs are for non-commercial research use only.
"""

VIDEO_NOTE = """## Inputs

1. **Load Video**: the mannequin video (a short clip; every frame is used — trim long videos first).
2. **Load Image**: one clear photo of the person (face at least ~100 px wide).

The result keeps the source video's frame rate and sound (Get Video Components -> fps, audio -> Create Video)
and is saved to `output/video/`. Long videos are generated in overlapping windows (M2H Sampler: context_frames / overlap).
"""

MASKS_NOTE = """## Your own clothing masks

This version needs no human-parsing model: load a mask video (white = clothing, one frame per video frame, same
framing) as the second **Load Video**. Image To Mask turns it into a MASK; M2H Mannequin Segmentation only
cleans it up (fill holes, grow, feather).
"""

PREPROCESS_NOTE = """## Preprocess only

Runs the clothing segmentation and DWPose on the mannequin video and saves both as videos, so you can check
them before generating. Needs `models/human_parsing/` and `models/dwpose/` files (see the M2HVideo model table).
"""


def _front(g: Graph, with_identity: bool = True):
    video = g.add("LoadVideo", (40, 200), (300, 320), title="Mannequin video", file="m2h_mannequin.mp4")
    comps = g.add("GetVideoComponents", (380, 200), (220, 90))
    g.link(video, "VIDEO", comps, "video")
    ident = None
    if with_identity:
        ident = g.add("LoadImage", (40, 560), (300, 340), title="Identity photo", image="m2h_identity.png")
    return video, comps, ident


def _generate(g: Graph, comps: Node, ident: Node, clothing_mask_from: tuple[Node, str]) -> None:
    loader = g.add("M2HUNetLoader", (380, 600), (340, 180), m2h_checkpoint="m2hvideo_sd15.safetensors",
                   base_model="v1-5-pruned-emaonly.safetensors", clip_vision="clip-vit-large-patch14.safetensors")
    pose = g.add("M2HDWPose", (760, 380), (320, 300))
    g.link(comps, "images", pose, "frames")
    g.link(comps, "fps", pose, "fps")
    head = g.add("M2HHeadEncoder", (760, 720), (320, 220))
    g.link(ident, "IMAGE", head, "identity")
    g.link(loader, "model", head, "model")
    g.link(pose, "keypoints", head, "pose")
    sampler = g.add("M2HSampler", (1120, 200), (340, 420), seed=42)
    g.link(loader, "model", sampler, "model")
    g.link(comps, "images", sampler, "frames")
    g.link(clothing_mask_from[0], clothing_mask_from[1], sampler, "clothing_mask")
    g.link(pose, "pose_images", sampler, "pose_images")
    g.link(head, "head_cond", sampler, "head_cond")
    create = g.add("CreateVideo", (1500, 200), (270, 80))
    g.link(sampler, "images", create, "images")
    g.link(comps, "fps", create, "fps")
    g.link(comps, "audio", create, "audio")  # the source's sound (Create Video trims it to the frames generated)
    save = g.add("SaveVideo", (1500, 330), (400, 420), filename_prefix="video/M2HVideo")
    g.link(create, "VIDEO", save, "video")
    prev = g.add("PreviewImage", (1120, 680), (300, 300), title="Identity placement")
    g.link(head, "preview", prev, "images")


def mannequin_to_human() -> Graph:
    g = Graph("m2h_mannequin_to_human", "Mannequin video + identity photo -> human video",
              "M2HVideo - mannequin video to human video")
    g.add("MarkdownNote", (-520, 40), (520, 460), title="Model files", text=MODELS_NOTE)
    g.add("MarkdownNote", (-520, 540), (520, 300), title="How to use", text=VIDEO_NOTE)
    _, comps, ident = _front(g)
    seg = g.add("M2HMannequinSegmentation", (760, 40), (320, 300))
    g.link(comps, "images", seg, "frames")
    _generate(g, comps, ident, (seg, "clothing_mask"))
    return g


def user_masks() -> Graph:
    g = Graph("m2h_user_masks", "Mannequin video + your own clothing masks + identity photo -> human video",
              "M2HVideo - with your own clothing masks")
    g.add("MarkdownNote", (-520, 40), (520, 460), title="Model files", text=MODELS_NOTE)
    g.add("MarkdownNote", (-520, 540), (520, 260), title="Your own masks", text=MASKS_NOTE)
    _, comps, ident = _front(g)
    mvideo = g.add("LoadVideo", (40, 940), (300, 320), title="Clothing mask video", file="m2h_masks.mp4")
    mcomps = g.add("GetVideoComponents", (380, 940), (220, 90))
    g.link(mvideo, "VIDEO", mcomps, "video")
    to_mask = g.add("ImageToMask", (380, 1060), (220, 60), channel="red")
    g.link(mcomps, "images", to_mask, "image")
    seg = g.add("M2HMannequinSegmentation", (760, 40), (320, 300), temporal_window=1)
    g.link(comps, "images", seg, "frames")
    g.link(to_mask, "MASK", seg, "masks")
    _generate(g, comps, ident, (seg, "clothing_mask"))
    return g


def preprocess_preview() -> Graph:
    g = Graph("m2h_preprocess_preview", "Preprocess only: clothing segmentation + DWPose previews",
              "M2HVideo - preprocess preview (masks and poses)")
    g.add("MarkdownNote", (-520, 40), (520, 460), title="Model files", text=MODELS_NOTE)
    g.add("MarkdownNote", (-520, 540), (520, 200), title="Preprocess only", text=PREPROCESS_NOTE)
    _, comps, _ = _front(g, with_identity=False)
    seg = g.add("M2HMannequinSegmentation", (660, 40), (320, 300))
    g.link(comps, "images", seg, "frames")
    pose = g.add("M2HDWPose", (660, 400), (320, 300))
    g.link(comps, "images", pose, "frames")
    g.link(comps, "fps", pose, "fps")
    for i, (src, out, prefix) in enumerate(((seg, "clothing_image", "video/M2H_clothing"),
                                            (pose, "pose_images", "video/M2H_pose"))):
        create = g.add("CreateVideo", (1040, 40 + 420 * i), (270, 80))
        g.link(src, out, create, "images")
        g.link(comps, "fps", create, "fps")
        save = g.add("SaveVideo", (1340, 40 + 420 * i), (400, 380), filename_prefix=prefix)
        g.link(create, "VIDEO", save, "video")
    return g


ANY_GENERATOR_MODELS_NOTE = """## M2HVideo around any generator: model files

| node | file | folder |
| --- | --- | --- |
| M2H Regenerate Mask, M2H Composite | `segformer_b2_clothes/` folder, or `parsing_atr.onnx` / `parsing_lip.onnx` | `models/human_parsing/` |
| M2H DWPose | `yolox_l.onnx`, `dw-ll_ucoco_384.onnx` | `models/dwpose/` |

Nothing is downloaded. M2H Identity Photo (for the pack's own samplers in the middle) needs insightface:
`pip install --no-deps insightface` (see the README: its dependencies break onnxruntime).
"""

ANY_GENERATOR_NOTE = """## Any generator in the middle

1. **M2H Regenerate Mask** -> `regen_mask`: what to redraw (bare mannequin + head room, never the garment).
   Connect it to your generator's mask input: Wan2.2 Animate's / VACE's mask, an inpainting
   *Set Latent Noise Mask*, AnimateDiff inpainting. `preview` shows it (red) and the lock (green).
2. Your generator's **IMAGE** output -> **M2H Composite** `generated` (replace the second Load Video, which
   stands in for it here). `source` stays the mannequin video, `lock_mask` from step 1.
3. M2H Composite puts the real garment back, never over the new arms or hair (it parses the generated frames),
   at the generated frames' size; the source is centre-cropped and resized to it. See docs/any-generator.md.
"""


def any_generator() -> Graph:
    g = Graph("m2h_any_generator", "Garment lock and keep background around any generator",
              "M2HVideo - garment lock for any generator")
    g.add("MarkdownNote", (-520, 40), (520, 340), title="Model files", text=ANY_GENERATOR_MODELS_NOTE)
    g.add("MarkdownNote", (-520, 420), (520, 380), title="Wire your generator", text=ANY_GENERATOR_NOTE)
    _, comps, _ = _front(g, with_identity=False)
    pose = g.add("M2HDWPose", (660, 420), (320, 300))
    g.link(comps, "images", pose, "frames")
    g.link(comps, "fps", pose, "fps")
    regen = g.add("M2HRegenerateMask", (1020, 40), (340, 380))
    g.link(comps, "images", regen, "frames")
    g.link(pose, "keypoints", regen, "keypoints")
    gen_video = g.add("LoadVideo", (40, 760), (300, 320), title="Generated video (stands in for your generator)",
                      file="m2h_generated.mp4")
    gen = g.add("GetVideoComponents", (380, 760), (220, 90), title="Your generator's frames")
    g.link(gen_video, "VIDEO", gen, "video")
    comp = g.add("M2HComposite", (1020, 480), (340, 300))
    g.link(gen, "images", comp, "generated")
    g.link(comps, "images", comp, "source")
    g.link(regen, "lock_mask", comp, "lock_mask")
    as_image = g.add("MaskToImage", (1400, 40), (220, 60))
    g.link(regen, "regen_mask", as_image, "mask")
    for i, (src, out, prefix) in enumerate(((as_image, "IMAGE", "video/M2H_regen_mask"),
                                            (comp, "images", "video/M2H_composite"))):
        create = g.add("CreateVideo", (1660, 40 + 460 * i), (270, 80))
        g.link(src, out, create, "images")
        g.link(comps, "fps", create, "fps")
        if i == 1:
            g.link(comps, "audio", create, "audio")  # the source's sound
        save = g.add("SaveVideo", (1960, 40 + 460 * i), (400, 380), filename_prefix=prefix)
        g.link(create, "VIDEO", save, "video")
    prev = g.add("PreviewImage", (1400, 160), (220, 260), title="Regenerate (red) / lock (green)")
    g.link(regen, "preview", prev, "images")
    return g




ZERO_SHOT_NOTE = """## Zero-shot: public weights, no M2H checkpoint

| node | file | folder |
| --- | --- | --- |
| M2H Public Weights Loader | `v1-5-pruned-emaonly.safetensors` (any SD-1.5 checkpoint) | `models/checkpoints/` |
| M2H Public Weights Loader | `mm_sd_v15_v2.ckpt` or `v3_sd15_mm.ckpt` (AnimateDiff) | `models/animatediff_models/` |
| M2H Public Weights Loader | `control_v11p_sd15_openpose_fp16.safetensors` | `models/controlnet/` |
| M2H Public Weights Loader | `ip-adapter-faceid-plusv2_sd15.bin` (its LoRA is inside) | `models/ipadapter/` |
| M2H Public Weights Loader | `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors` (PlusV2 / Plus-Face) | `models/clip_vision/` |
| M2H DWPose | `yolox_l.onnx`, `dw-ll_ucoco_384.onnx` | `models/dwpose/` |
| M2H Mannequin Segmentation | `segformer_b2_clothes/` folder, or `parsing_atr.onnx` / `parsing_lip.onnx` | `models/human_parsing/` |
| M2H Identity Photo | insightface `antelopev2/` (or `buffalo_l/`) folder | `models/insightface/models/` |

Only the person is redrawn (M2H Regenerate Mask: the mannequin minus the garment, plus the head region from the
pose); garment and background are the source's. Identity is weaker than a trained M2H model's. FaceID files and
insightface packs are for non-commercial research use only. See docs/zero-shot.md.
Missing insightface? `pip install --no-deps insightface` (see the README).
"""


def zero_shot() -> Graph:
    g = Graph("m2h_zero_shot", "Zero-shot: mannequin video + identity photo -> human video from public weights",
              "M2HVideo - zero-shot with public weights (no M2H checkpoint)")
    g.add("MarkdownNote", (-520, 40), (520, 500), title="Model files (zero-shot)", text=ZERO_SHOT_NOTE)
    g.add("MarkdownNote", (-520, 580), (520, 300), title="How to use", text=VIDEO_NOTE)
    _, comps, ident = _front(g)
    seg = g.add("M2HMannequinSegmentation", (760, 40), (320, 300))
    g.link(comps, "images", seg, "frames")
    loader = g.add("M2HPublicLoader", (380, 600), (360, 260), base_model="v1-5-pruned-emaonly.safetensors",
                   motion_module="mm_sd_v15_v2.ckpt", controlnet_pose="control_v11p_sd15_openpose_fp16.safetensors",
                   ip_adapter="ip-adapter-faceid-plusv2_sd15.bin",
                   clip_vision="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    pose = g.add("M2HDWPose", (760, 560), (320, 300))
    g.link(comps, "images", pose, "frames")
    g.link(comps, "fps", pose, "fps")
    # fit_photo: the zero-shot model reads only the ArcFace embedding and the face crop, which is larger unmoved
    head = g.add("M2HHeadEncoder", (760, 900), (320, 220), placement="fit_photo")
    g.link(ident, "IMAGE", head, "identity")
    g.link(loader, "model", head, "model")
    g.link(pose, "keypoints", head, "pose")
    regen = g.add("M2HRegenerateMask", (1120, 760), (340, 380))
    g.link(comps, "images", regen, "frames")
    g.link(seg, "clothing_mask", regen, "clothing_mask")
    g.link(seg, "person_mask", regen, "person_mask")
    g.link(pose, "keypoints", regen, "keypoints")
    sampler = g.add("M2HZeroShotSampler", (1120, 200), (340, 520), seed=42)
    g.link(loader, "model", sampler, "model")
    g.link(comps, "images", sampler, "frames")
    g.link(regen, "regen_mask", sampler, "regen_mask")
    g.link(seg, "clothing_mask", sampler, "clothing_mask")
    g.link(pose, "pose_images", sampler, "pose_images")
    g.link(head, "head_cond", sampler, "head_cond")
    create = g.add("CreateVideo", (1500, 200), (270, 80))
    g.link(sampler, "images", create, "images")
    g.link(comps, "fps", create, "fps")
    save = g.add("SaveVideo", (1500, 330), (400, 420), filename_prefix="video/M2HVideo_zero_shot")
    g.link(create, "VIDEO", save, "video")
    return g


WORKFLOWS = (mannequin_to_human, user_masks, preprocess_preview, any_generator, zero_shot)


def render_all() -> dict[Path, str]:
    out = {}
    for make in WORKFLOWS:
        g = make()
        out[UI_DIR / f"{g.file_title}.json"] = json.dumps(g.ui(), indent=1) + "\n"
        out[API_DIR / f"{g.name}.json"] = json.dumps(g.api(), indent=1) + "\n"
    return out


def main() -> None:
    files = render_all()
    for stale in [*UI_DIR.glob("*.json"), *API_DIR.glob("*.json")]:
        if stale not in files:
            stale.unlink()
            print(f"removed {stale.relative_to(ROOT)} (renamed)")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
