"""Every shipped workflow (UI format in example_workflows/, API format in workflows/api/) is checked against the
node table (nodes/spec.py + the core-node table of workflows/build_workflows.py): node ids, input names, widget
counts and values, link consistency, and that the files are what the generator writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes import spec
from workflows import build_workflows as bw

ROOT = Path(__file__).resolve().parents[1]
UI_FILES = sorted((ROOT / "example_workflows").glob("*.json"))
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
EXPECTED = {"m2h_mannequin_to_human", "m2h_user_masks", "m2h_preprocess_preview", "m2h_any_generator"}
UI_TITLES = {"M2HVideo - mannequin video to human video", "M2HVideo - with your own clothing masks",
             "M2HVideo - preprocess preview (masks and poses)", "M2HVideo - garment lock for any generator"}
EXPECTED |= {"m2h_zero_shot"}  # issue 28: zero-shot mode
UI_TITLES |= {"M2HVideo - zero-shot with public weights (no M2H checkpoint)"}


def _types(t: bw.NodeType) -> dict[str, str]:
    return {**{n: ty for n, ty, _ in t.sockets}, **dict(t.widgets)}


def _compatible(out_type: str, in_type: str) -> bool:
    return out_type == in_type or "*" in (out_type, in_type) or (in_type in ("FLOAT", "INT")
                                                                and out_type in ("FLOAT", "INT"))


def _check_widget_value(node_type: str, name: str, value) -> None:
    s = spec.BY_ID.get(node_type)
    if s is None:
        return
    i = s.input(name)
    if i.type == "COMBO" and i.options:
        assert value in i.options, f"{node_type}.{name}={value!r} not in {i.options}"
    elif i.type == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{node_type}.{name}={value!r}"
        assert (i.min is None or value >= i.min) and (i.max is None or value <= i.max)
    elif i.type == "FLOAT":
        assert isinstance(value, (int, float)) and i.min <= value <= i.max, f"{node_type}.{name}={value!r}"
    elif i.type == "BOOLEAN":
        assert isinstance(value, bool), f"{node_type}.{name}={value!r}"
    elif i.type == "STRING":
        assert isinstance(value, str)
    elif i.type == "COMBO":
        assert isinstance(value, str) and value


def test_all_workflows_are_present_in_both_formats():
    assert {p.stem for p in UI_FILES} == UI_TITLES
    assert {p.stem for p in API_FILES} == EXPECTED


def test_files_are_up_to_date_with_the_generator():
    for path, text in bw.render_all().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run python workflows/build_workflows.py"


def test_pack_node_types_come_from_the_spec():
    for s in spec.NODES:
        t = bw.NODE_TYPES[s.node_id]
        assert [w for w, _ in t.widgets] == [i.id for i in s.widgets]
        assert [n for n, _, _ in t.sockets] == [i.id for i in s.inputs if not i.is_widget]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow(path: Path):
    wf = json.loads(path.read_text())
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    links = {ln[0]: ln for ln in wf["links"]}
    assert len(links) == len(wf["links"]) and (not links or wf["last_link_id"] >= max(links))
    uses_pack = False
    notes = [n for n in nodes.values() if n["type"] in bw.UI_ONLY]
    assert notes and any("models/" in n["widgets_values"][0] for n in notes), "a Note must say where models go"
    for n in nodes.values():
        t = bw.NODE_TYPES.get(n["type"])
        assert t is not None, f"unknown node type {n['type']}"
        uses_pack |= n["type"] in spec.BY_ID
        # widgets: positional values, with the extra UI values (upload, control_after_generate) in place
        expected_len = len(t.widgets) + len(t.ui_extra)
        assert len(n["widgets_values"]) == expected_len, f"{n['type']} widgets_values {n['widgets_values']}"
        vals = iter(n["widgets_values"])
        for w, _ in t.widgets:
            v = next(vals)
            linked = any(i.get("widget", {}).get("name") == w and i.get("link") for i in n["inputs"])
            if not linked:
                _check_widget_value(n["type"], w, v)
            if w in t.ui_extra:
                extra = next(vals)
                assert extra in ("image", "fixed", "randomize", "increment", "decrement")
        names = _types(t)
        for slot, inp in enumerate(n["inputs"]):
            assert inp["name"] in names, f"{n['type']} has no input {inp['name']}"
            if inp.get("link") is not None:
                ln = links[inp["link"]]
                assert ln[3] == n["id"] and ln[4] == slot, f"link {ln} does not point at {n['type']}.{inp['name']}"
        # every required socket is connected
        connected = {i["name"] for i in n["inputs"] if i.get("link") is not None}
        for name, _, optional in t.sockets:
            if not optional:
                assert name in connected, f"{n['type']}.{name} is not connected in {path.name}"
        for slot, out in enumerate(n["outputs"]):
            assert (out["name"], out["type"]) == t.outputs[slot], f"{n['type']} output {slot}"
            for lid in out["links"] or []:
                assert links[lid][1] == n["id"] and links[lid][2] == slot
    for lid, src, sslot, dst, dslot, typ in wf["links"]:
        assert typ == nodes[src]["outputs"][sslot]["type"]
        assert lid in nodes[src]["outputs"][sslot]["links"]
        assert nodes[dst]["inputs"][dslot]["link"] == lid
        in_type = _types(bw.NODE_TYPES[nodes[dst]["type"]])[nodes[dst]["inputs"][dslot]["name"]]
        assert _compatible(typ, in_type), f"link {lid}: {typ} -> {in_type}"
    assert uses_pack


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow(path: Path):
    wf = json.loads(path.read_text())
    has_output = False
    for nid, n in wf.items():
        t = bw.NODE_TYPES.get(n["class_type"])
        assert t is not None and n["class_type"] not in bw.UI_ONLY, n["class_type"]
        has_output |= t.output_node
        names = _types(t)
        for name, v in n["inputs"].items():
            assert name in names, f"{n['class_type']} has no input {name}"
            if isinstance(v, list):
                src_id, slot = v
                assert src_id in wf, f"{nid}.{name} links to missing node {src_id}"
                src_t = bw.NODE_TYPES[wf[src_id]["class_type"]]
                assert 0 <= slot < len(src_t.outputs)
                assert _compatible(src_t.outputs[slot][1], names[name]), f"{nid}.{name}"
            else:
                _check_widget_value(n["class_type"], name, v)
        for name, _, optional in t.sockets:
            assert optional or name in n["inputs"], f"{n['class_type']}.{name} missing"
        for w, _ in t.widgets:
            assert w in n["inputs"], f"{n['class_type']}.{w} missing"
    assert has_output
    # acyclic
    state: dict[str, int] = {}

    def visit(k):
        assert state.get(k) != 1, "cycle"
        if state.get(k) == 2:
            return
        state[k] = 1
        for v in wf[k]["inputs"].values():
            if isinstance(v, list):
                visit(v[0])
        state[k] = 2

    for k in wf:
        visit(k)


def _ui_file(stem: str) -> Path:
    """The UI file of an API workflow (UI files carry a readable title as their name)."""
    for p in UI_FILES:
        if json.loads(p.read_text())["extra"]["m2hvideo_workflow"] == stem:
            return p
    raise FileNotFoundError(stem)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_ui_and_api_describe_the_same_graph(stem: str):
    ui = json.loads(_ui_file(stem).read_text())
    api = json.loads((ROOT / "workflows" / "api" / f"{stem}.json").read_text())
    ui_nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in bw.UI_ONLY}
    assert set(ui_nodes) == set(api)
    for nid, n in ui_nodes.items():
        assert n["type"] == api[nid]["class_type"]
        ui_links = {(n["inputs"][ln[4]]["name"], str(ln[1]), ln[2]) for ln in ui["links"] if str(ln[3]) == nid}
        api_links = {(k, v[0], v[1]) for k, v in api[nid]["inputs"].items() if isinstance(v, list)}
        assert ui_links == api_links, nid


def test_sampler_keeps_the_source_fps():
    for stem in EXPECTED:
        api = json.loads((ROOT / "workflows" / "api" / f"{stem}.json").read_text())
        for nid, n in api.items():
            if n["class_type"] == "CreateVideo":
                src = api[n["inputs"]["fps"][0]]
                assert src["class_type"] == "GetVideoComponents" and n["inputs"]["fps"][1] == 2


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_templates_open_clean(path: Path):
    """What the frontend checks or shows first: a UUID id (else the 'Invalid uuid' toast), notes inside the first
    view (right of the sidebar, at the saved offset/scale), a thumbnail next to the file, README's file names."""
    import uuid

    wf = json.loads(path.read_text())
    assert str(uuid.UUID(wf["id"])) == wf["id"]
    scale, (ox, oy) = wf["extra"]["ds"]["scale"], wf["extra"]["ds"]["offset"]
    notes = [n for n in wf["nodes"] if n["type"] in bw.UI_ONLY]
    assert notes
    for n in notes:
        x = (n["pos"][0] + ox) * scale
        title_y = (n["pos"][1] - 30 + oy) * scale  # the title bar is drawn above pos
        assert 48 <= x and x + n["size"][0] * scale <= 1280 and 80 <= title_y <= 600, (n.get("title"), x, title_y)
    for ext in ("jpg", "webp"):  # this frontend asks for <name>.jpg; template packs ship .webp
        thumb = path.with_suffix("." + ext)
        assert thumb.is_file() and 1000 < thumb.stat().st_size < 200_000, thumb
    text = path.read_text()
    assert "clip_vision_vit_l14" not in text and "--no-deps insightface" in text
