#!/usr/bin/env python
"""Real-host test: the pack inside a real ComfyUI server, every API workflow queued over HTTP.

    python tests/host/run_host_test.py --comfyui /path/to/ComfyUI [--python /path/to/ComfyUI/.venv/bin/python]

Run it with a Python that has the pack's requirements (m2h_core, onnx) — normally ComfyUI's own venv. It:
1. writes tiny model files in the real formats into a temp models folder (a self-contained tiny M2H
   checkpoint embedding its VAE/CLIP, DWPose ONNX pair, SCHP parsing ONNX, an insightface-style pack) and a
   synthetic mannequin video, mask video and identity photo into a temp input folder;
2. starts `main.py --cpu --listen 127.0.0.1 --port <free>` with this pack in a temp custom_nodes folder given by
   `--extra-model-paths-config` (nothing is copied into the ComfyUI tree), temp input/output/user folders;
3. checks /object_info: the M2H nodes are registered with exactly the inputs of nodes/spec.py, and the
   core nodes used by the workflows have the inputs the workflows give them;
4. queues each workflows/api/*.json via POST /prompt (file names and the tiny model patched in, 2 steps),
   polls /history/<id>, and checks each saved video's frame count, size and fps;
5. ComfyUI-native checks (`native_checks`), on an M2H model with a full-size SD-1.5-shaped VAE (random weights,
   also written as models/vae/ for core Load VAE) and a ViT-L/14-shaped CLIP vision file for core Load CLIP Vision:
   the model is loaded once across two queued runs, then POST /free {"unload_models": true} gives its memory back
   (process RSS drops by at least the model's size) and the next run reads it again; core VAE Decode of the
   Sampler's LATENT equals the Sampler's images (mean abs diff <= 1/255); preview images arrive over the
   websocket during a run (--preview-method latent2rgb); a workflow taking VAE and CLIP_VISION from core loader
   nodes runs; ComfyUI's VAE / CLIP vision through the pack's encoder interface match the pack's own encoders on
   the same files (tests/host/encoder_equivalence.py, run with ComfyUI's Python); every traversal name given to a
   model input is refused;
6. optionally (`--quick-test`) runs `main.py --cpu --quick-test-for-ci` and fails on "IMPORT FAILED" for the pack.
Prints one line per check and exits non-zero when any fails.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import threading
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PACK_DIR_NAME = "ComfyUI-M2HVideo"
N_FRAMES = 8
FPS = Fraction(12, 1)
SRC_W, SRC_H = 96, 160  # source video (WxH); the tiny model works at 32x64


# ------------------------------------------------------------------------------------------ fixtures


def write_models(models: Path) -> dict:
    import torch

    from m2h_core.checkpoint import save_checkpoint
    from m2h_core.config import tiny
    from m2h_core.inference.encoders import FrozenEncoders
    from tests.fixtures import build_m2h_model
    from tests.test_preprocess_builders import build_dwpose_pair, build_face_pack, build_schp

    cfg = tiny()
    torch.manual_seed(0)
    model = build_m2h_model(cfg, seed=0)
    ckpt = models / "m2hvideo" / "m2h_tiny_host_test.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, ckpt, encoders=FrozenEncoders.random(cfg, seed=1))
    build_dwpose_pair(models / "dwpose")
    build_schp(models / "human_parsing" / "parsing_atr.onnx")
    build_face_pack(models / "insightface" / "models" / "antelopev2", "antelopev2")
    from tests.zero_shot_fixtures import write_tiny_public_files

    pub = write_tiny_public_files(models)  # the zero-shot template's public files, tiny, in their real formats
    public = {k: Path(getattr(pub, k)).name for k in ("base", "motion", "controlnet", "ip_adapter")}
    return {"checkpoint": ckpt.name, "height": cfg.height, "width": cfg.width, "public": public}


def native_config():
    """The tiny model with SD-1.5's interfaces: the full-size SD-1.5 VAE shape (4 channels, 8x, 0.18215) and
    768-wide cross-attention (CLIP ViT-L/14's projection), so core Load VAE / Load CLIP Vision files fit it."""
    from m2h_core.config import VAEConfig, tiny

    c = tiny()
    return dataclasses.replace(c, unet=dataclasses.replace(c.unet, cross_attention_dim=768), vae=VAEConfig(),
                               clip=dataclasses.replace(c.clip, projection_dim=768),
                               head=dataclasses.replace(c.head, pose_channels=(8, 16, 32, 64),
                                                        id_channels=(8, 16, 32, 64)))


def write_native_models(models: Path) -> dict:
    """An M2H checkpoint embedding a full-size SD-1.5-shaped VAE (random weights) and a small CLIP; the same VAE as
    models/vae/<file> (diffusers layout, which core Load VAE accepts); a ViT-L/14-shaped CLIP vision file (fp16)."""
    import torch

    from m2h_core.checkpoint import save_checkpoint
    from m2h_core.config import sd15
    from m2h_core.inference.encoders import FrozenEncoders
    from tests.fixtures import build_clip_vision, build_m2h_model, save_state_dict

    cfg = native_config()
    torch.manual_seed(0)
    enc = FrozenEncoders.random(cfg, seed=5)
    ckpt = models / "m2hvideo" / "m2h_native_host_test.safetensors"
    save_checkpoint(build_m2h_model(cfg, seed=0), ckpt, encoders=enc)
    vae = models / "vae" / "m2h_host_sd15_shaped_vae.safetensors"
    vae.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict({k: v.contiguous() for k, v in enc.vae.state_dict().items()}, vae)
    clip = models / "clip_vision" / "m2h_host_vit_l14.safetensors"
    clip.parent.mkdir(parents=True, exist_ok=True)
    big = build_clip_vision(dataclasses.replace(cfg, clip=sd15().clip), seed=7)
    save_state_dict({k: v.half().contiguous() for k, v in big.state_dict().items()}, clip)
    del big
    return {"checkpoint": ckpt.name, "vae": vae.name, "clip_vision": clip.name, "vae_path": str(vae),
            "clip_path": str(clip), "height": cfg.height, "width": cfg.width}


def write_inputs(inputs: Path) -> dict:
    import numpy as np

    from m2h_core.video_io import write_video
    from tests.test_preprocess_builders import PARSE_COLOURS

    colour = {v: k for k, v in PARSE_COLOURS.items()}
    frames, masks = [], []
    for i in range(N_FRAMES):
        f = np.full((SRC_H, SRC_W, 3), 255, np.uint8)
        dx = i - N_FRAMES // 2
        f[12:36, 36 + dx:60 + dx] = colour[14]  # head (bare mannequin)
        f[36:90, 28 + dx:68 + dx] = colour[4]  # upper clothes
        f[40:90, 16 + dx:28 + dx] = colour[14]  # arms
        f[40:90, 68 + dx:80 + dx] = colour[14]
        f[90:150, 30 + dx:66 + dx] = colour[6]  # pants
        m = np.zeros_like(f)
        m[36:150, 28 + dx:68 + dx] = 255
        frames.append(f)
        masks.append(m)
    inputs.mkdir(parents=True, exist_ok=True)
    write_video(inputs / "m2h_mannequin.mp4", np.stack(frames), FPS)
    write_video(inputs / "m2h_masks.mp4", np.stack(masks), FPS, crf=0)
    face = np.full((128, 128, 3), 180, np.uint8)
    face[32:96, 40:88] = (220, 180, 150)
    import cv2

    cv2.imwrite(str(inputs / "m2h_identity.png"), face[..., ::-1])
    return {"video": "m2h_mannequin.mp4", "masks": "m2h_masks.mp4", "identity": "m2h_identity.png"}


# ------------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Server:
    def __init__(self, comfyui: Path, python: str, work: Path, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = work / "comfyui.log"
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--extra-model-paths-config", str(work / "extra_model_paths.yaml"),
               "--input-directory", str(work / "input"), "--output-directory", str(work / "output"),
               "--temp-directory", str(work / "temp"), "--user-directory", str(work / "user"),
               "--database-url", "sqlite:///:memory:", "--preview-method", "latent2rgb"]
        (work / "user").mkdir(exist_ok=True)
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=comfyui, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; see {self.log_path}")
            try:
                http(self.url + "/system_stats", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise TimeoutError(f"ComfyUI did not answer in {timeout:.0f} s; see {self.log_path}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# ------------------------------------------------------------------------------------------ checks


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def check_object_info(info: dict, rep: Report) -> None:
    from nodes import spec
    from workflows.build_workflows import CORE_NODES, UI_ONLY

    for s in spec.NODES:
        node = info.get(s.node_id)
        if not rep.check(f"object_info has {s.node_id}", node is not None):
            continue
        order = node["input_order"].get("required", []) + node["input_order"].get("optional", [])
        rep.check(f"{s.node_id} inputs match nodes/spec.py", order == [i.id for i in s.inputs],
                  f"{order}")
        rep.check(f"{s.node_id} category/outputs", node["category"] == spec.CATEGORY
                  and node["output"] == [o.type for o in s.outputs], f"{node['category']} {node['output']}")
        tips = [v[1].get("tooltip") for sect in ("required", "optional") for v in node["input"].get(sect, {}).values()]
        rep.check(f"{s.node_id} every input has a tooltip", all(tips))
    for name, t in CORE_NODES.items():
        if name in UI_ONLY:
            continue
        node = info.get(name)
        if not rep.check(f"object_info has core node {name}", node is not None):
            continue
        have = node["input_order"].get("required", []) + node["input_order"].get("optional", [])
        want = [n for n, _, _ in t.sockets] + [w for w, _ in t.widgets]
        rep.check(f"core node {name} has the inputs the workflows use", set(want) <= set(have), f"{have}")


def patch_workflow(wf: dict, names: dict, model: dict) -> dict:
    wf = json.loads(json.dumps(wf))
    for n in wf.values():
        ct, inp = n["class_type"], n["inputs"]
        if ct == "LoadVideo":
            inp["file"] = names["masks"] if "mask" in inp["file"] else names["video"]
        elif ct == "LoadImage":
            inp["image"] = names["identity"]
        elif ct == "M2HUNetLoader":
            inp.update(m2h_checkpoint=model["checkpoint"], base_model="none", clip_vision="none", precision="fp32")
        elif ct == "M2HSampler":
            inp.update(steps=2, context_frames=4, context_overlap=2)
        elif ct == "M2HPublicLoader":
            pub = model["public"]
            inp.update(base_model=pub["base"], motion_module=pub["motion"], controlnet_pose=pub["controlnet"],
                       ip_adapter=pub["ip_adapter"], ip_lora="auto", clip_vision="none", precision="fp32")
        elif ct == "M2HZeroShotSampler":
            inp.update(steps=2, context_frames=4, context_overlap=2, parsing_model="parsing_atr.onnx")
        elif ct == "M2HMannequinSegmentation" and inp.get("model") == "auto":
            inp["model"] = "parsing_atr.onnx"
        elif ct == "SaveVideo":
            inp["filename_prefix"] = inp["filename_prefix"].replace("video/", "video/host_")
    return wf


def run_workflow(server: Server, wf: dict, timeout: float) -> dict:
    client = uuid.uuid4().hex
    try:
        res = http(server.url + "/prompt", {"prompt": wf, "client_id": client})
    except urllib.error.HTTPError as e:
        return {"error": f"/prompt refused the workflow: {e.read().decode()[:2000]}"}
    pid = res["prompt_id"]
    if res.get("node_errors"):
        return {"error": f"node errors: {res['node_errors']}"}
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = http(server.url + f"/history/{pid}")
        if pid in hist:
            h = hist[pid]
            status = h.get("status", {})
            if status.get("completed") or status.get("status_str") in ("success", "error"):
                if status.get("status_str") == "error":
                    msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    return {"error": json.dumps(msgs)[:3000]}
                return h
        time.sleep(1)
    return {"error": f"not finished after {timeout:.0f} s"}


class Websocket:
    """A minimal websocket reader (RFC 6455, stdlib only) for ComfyUI's /ws: collects binary frames in a thread."""

    def __init__(self, url: str, client_id: str):
        host, port = url.split("//")[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket handshake refused: {head[:200]!r}")
        self.binary: list[bytes] = []
        self.text: list[str] = []
        self.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _run(self) -> None:
        try:
            while True:
                b0, b1 = self._exact(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(self._exact(2), "big")
                elif n == 127:
                    n = int.from_bytes(self._exact(8), "big")
                mask = self._exact(4) if b1 & 0x80 else None
                data = self._exact(n)
                if mask:
                    data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
                op = b0 & 0x0F
                if op == 2:
                    self.binary.append(data)
                elif op == 1:
                    self.text.append(data.decode(errors="replace"))
                elif op == 8:
                    return
        except (OSError, ConnectionError, ValueError):
            return

    def previews(self) -> list[bytes]:
        """PREVIEW_IMAGE (1) / PREVIEW_IMAGE_WITH_METADATA (4) frames holding a JPEG or PNG."""
        out = []
        for d in self.binary:
            kind = int.from_bytes(d[:4], "big")
            if kind in (1, 4) and (b"\xff\xd8\xff" in d[:4096] or b"\x89PNG" in d[:4096]):
                out.append(d)
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def saved_images(hist: dict, node_id: str, out_dir: Path):
    import numpy as np
    from PIL import Image

    items = hist.get("outputs", {}).get(node_id, {}).get("images", [])
    paths = sorted(out_dir / it.get("subfolder", "") / it["filename"] for it in items)
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths]) if paths \
        else None


TRAVERSAL = ["/etc/passwd", "../../x.safetensors", "diffusers/../../../../etc", "..\\..\\x.onnx",
             "sub/../../x.safetensors", "~/.ssh/id_rsa"]
NAME_INPUTS = {"M2HUNetLoader": ("m2h_checkpoint", "base_model", "clip_vision", "motion_module"),
               "M2HDWPose": ("detector", "pose_model"), "M2HMannequinSegmentation": ("model",),
               "M2HHeadEncoder": ("face_model",)}


def native_checks(server: Server, comfyui: Path, python: str, work: Path, names: dict, model: dict, native: dict,
                  timeout: float, rep: Report) -> None:
    """ComfyUI-native behaviour (see the module docstring, item 5)."""
    import numpy as np

    base = patch_workflow(json.loads((ROOT / "workflows" / "api" / "m2h_user_masks.json").read_text()), names, model)
    ids = {n["class_type"]: k for k, n in base.items()}
    loader, sampler = ids["M2HUNetLoader"], ids["M2HSampler"]
    base[loader]["inputs"]["m2h_checkpoint"] = native["checkpoint"]
    base["100"] = {"class_type": "VAELoader", "inputs": {"vae_name": native["vae"]}}
    base["101"] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 1], "vae": ["100", 0]}}
    base["102"] = {"class_type": "SaveImage",
                   "inputs": {"images": [sampler, 0], "filename_prefix": "host_native_sampler"}}
    base["103"] = {"class_type": "SaveImage", "inputs": {"images": ["101", 0], "filename_prefix": "host_native_decode"}}
    loaded_line = "M2H Model Loader: loaded " + native["checkpoint"]
    before = server.log_text().count(loaded_line)

    # run 1 (websocket listening) and run 2 (another seed): one load, previews, VAE Decode == images
    client = uuid.uuid4().hex
    ws = Websocket(server.url, client)
    t0 = time.time()
    try:
        res = http(server.url + "/prompt", {"prompt": base, "client_id": client})
        hist = wait_history(server, res["prompt_id"], timeout)
        time.sleep(1)
    finally:
        ws.close()
    if not rep.check("native: SD-1.5-shaped VAE workflow ran", "error" not in hist,
                     hist.get("error", f"{time.time() - t0:.1f} s")):
        return
    n_prev = len(ws.previews())
    rep.check("native: preview images arrived over the websocket during the run", n_prev >= 2,
              f"{n_prev} preview frames (2 steps), {len(ws.binary)} binary messages")
    a, b = saved_images(hist, "102", work / "output"), saved_images(hist, "103", work / "output")
    ok = a is not None and b is not None and a.shape == b.shape and a.shape[0] == N_FRAMES
    diff = float(np.abs(a - b).mean()) if ok else float("nan")
    rep.check("native: core VAE Decode of the Sampler's LATENT equals its images (mean abs diff <= 1/255)",
              ok and diff <= 1 / 255, f"{None if a is None else a.shape} vs {None if b is None else b.shape}, "
              f"mean abs diff {diff * 255:.3f}/255, max {float(np.abs(a - b).max()) * 255 if ok else -1:.0f}/255")
    second = json.loads(json.dumps(base))
    second[sampler]["inputs"]["seed"] = int(second[sampler]["inputs"].get("seed", 0)) + 1
    hist2 = run_workflow(server, second, timeout)
    loads = server.log_text().count(loaded_line) - before
    rep.check("native: model loaded once across two queued runs", "error" not in hist2 and loads == 1,
              hist2.get("error", f"{loads} load(s)"))
    size_mb = float(re.findall(re.escape(loaded_line) + r".*\((\d+) MB\)", server.log_text())[-1])

    # POST /free: the memory comes back; the next run reads the model again
    rss0 = server.rss_mb()
    req = urllib.request.Request(server.url + "/free", data=json.dumps({"unload_models": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # answers 200 with an empty body
        r.read()
    t0 = time.time()
    while time.time() - t0 < 60 and "unloaded " + native["checkpoint"] not in server.log_text():
        time.sleep(0.5)
    time.sleep(3)
    rss1 = server.rss_mb()
    rep.check("native: POST /free {unload_models} gives the model's memory back", rss0 - rss1 >= size_mb,
              f"RSS {rss0:.0f} MB -> {rss1:.0f} MB (drop {rss0 - rss1:.0f} MB; model {size_mb:.0f} MB)")
    hist3 = run_workflow(server, second, timeout)
    rep.check("native: the next run reads the model again and runs", "error" not in hist3
              and "read m2h_native_host_test" in server.log_text(), hist3.get("error", ""))

    # VAE and CLIP_VISION from core loader nodes
    wired = json.loads(json.dumps(base))
    wired["104"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": native["clip_vision"]}}
    wired[loader]["inputs"].update(vae=["100", 0], clip_vision_model=["104", 0])
    wired["102"]["inputs"]["filename_prefix"] = "host_native_wired"
    del wired["101"], wired["103"]
    t0 = time.time()
    hist4 = run_workflow(server, wired, timeout)
    imgs = saved_images(hist4, "102", work / "output") if "error" not in hist4 else None
    rep.check("native: workflow with VAE and CLIP_VISION from core Load VAE / Load CLIP Vision runs",
              imgs is not None and imgs.shape[0] == N_FRAMES,
              hist4.get("error", f"{time.time() - t0:.1f} s, {None if imgs is None else imgs.shape}"))

    # the encoder interface: ComfyUI's objects vs the pack's own encoders on the same files
    out = subprocess.run([python, str(ROOT / "tests" / "host" / "encoder_equivalence.py"), "--comfyui", str(comfyui),
                          "--vae", native["vae_path"], "--clip-vision", native["clip_path"]],
                         capture_output=True, text=True, timeout=900)
    try:
        eq = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        rep.check("native: encoder interface equivalence ran", False, out.stderr[-2000:])
    else:
        rep.check("native: ComfyUI VAE == the pack's VAE on the same file (latents, decoded frames)",
                  eq["latent_rel"] < 1e-3 and eq["decode_max_abs"] < 2e-3, json.dumps(eq))
        rep.check("native: ComfyUI CLIP vision == the pack's CLIP on the same file (image embeddings)",
                  eq["clip_cosine_min"] > 0.999 and eq["clip_rel"] < 0.05, json.dumps(eq))

    # every traversal name refused by every model-name input
    accepted = []
    for ct, inputs in NAME_INPUTS.items():
        node = next((k for k, n in base.items() if n["class_type"] == ct), None)
        for inp in inputs:
            for name in TRAVERSAL:
                wf = json.loads(json.dumps(base))
                wf[node]["inputs"][inp] = name
                try:
                    res = http(server.url + "/prompt", {"prompt": wf, "client_id": "traversal"})
                    if not res.get("node_errors"):
                        accepted.append(f"{ct}.{inp}={name!r}")
                except urllib.error.HTTPError:
                    pass
    total = sum(len(v) for v in NAME_INPUTS.values()) * len(TRAVERSAL)
    rep.check("native: every traversal name refused by every model input", not accepted,
              f"{total - len(accepted)}/{total} refused; accepted: {accepted}")


def wait_history(server: Server, pid: str, timeout: float) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = http(server.url + f"/history/{pid}")
        if pid in hist:
            status = hist[pid].get("status", {})
            if status.get("completed") or status.get("status_str") in ("success", "error"):
                if status.get("status_str") == "error":
                    msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    return {"error": json.dumps(msgs)[:3000]}
                return hist[pid]
        time.sleep(1)
    return {"error": f"not finished after {timeout:.0f} s"}


def video_props(path: Path) -> tuple[int, int, int, Fraction]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.codec_context.width, s.codec_context.height, Fraction(s.average_rate)


def check_outputs(name: str, hist: dict, out_dir: Path, model: dict, rep: Report) -> None:
    saved = []
    for node_id, out in hist.get("outputs", {}).items():
        for item in out.get("images", []) if out.get("animated") else []:
            saved.append(out_dir / item.get("subfolder", "") / item["filename"])
    if not rep.check(f"{name}: saved videos", bool(saved), ", ".join(p.name for p in saved)):
        return
    for p in saved:
        n, w, h, fps = video_props(p)
        if any(k in p.name for k in ("clothing", "pose", "regen_mask", "composite")):  # at the source's size
            size = (SRC_W, SRC_H)
        else:
            size = (model["width"], model["height"])
        rep.check(f"{name}: {p.name}", n == N_FRAMES and (w, h) == size and fps == FPS,
                  f"{n} frames (want {N_FRAMES}), {w}x{h} (want {size[0]}x{size[1]}), {fps} fps (want {FPS})")


def quick_test(comfyui: Path, python: str, work: Path, rep: Report) -> None:
    out = subprocess.run([python, "main.py", "--cpu", "--quick-test-for-ci", "--extra-model-paths-config",
                          str(work / "extra_model_paths.yaml"), "--user-directory", str(work / "user"),
                          "--database-url", "sqlite:///:memory:"], cwd=comfyui, capture_output=True, text=True,
                         timeout=600)
    text = out.stdout + out.stderr
    (work / "quick_test.log").write_text(text)
    failed = [ln for ln in text.splitlines() if "IMPORT FAILED" in ln]
    ours = [ln for ln in failed if PACK_DIR_NAME in ln]
    loaded = any(PACK_DIR_NAME in ln and "seconds" in ln for ln in text.splitlines())
    rep.check("quick-test-for-ci: exit code 0", out.returncode == 0, str(out.returncode))
    rep.check("quick-test-for-ci: pack loaded, no IMPORT FAILED for it", loaded and not ours,
              f"other IMPORT FAILED lines (not this pack): {failed}" if failed else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True, type=Path, help="ComfyUI folder (with main.py)")
    ap.add_argument("--python", default=None, help="Python to run ComfyUI with (default: <comfyui>/.venv/bin/python "
                    "if present, else this Python)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per workflow")
    ap.add_argument("--quick-test", action="store_true", help="also run main.py --quick-test-for-ci")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (models, inputs, outputs, log)")
    ap.add_argument("--workflow", action="append", help="only these workflows/api/<name>.json (repeatable)")
    ap.add_argument("--skip-native", action="store_true", help="skip the ComfyUI-native checks (item 5)")
    args = ap.parse_args()
    comfyui = args.comfyui.resolve()
    python = args.python or (str(comfyui / ".venv/bin/python") if (comfyui / ".venv/bin/python").exists()
                             else sys.executable)
    if not (comfyui / "main.py").is_file():
        print(f"FAIL no main.py in {comfyui}")
        return 2
    if (comfyui / "custom_nodes" / PACK_DIR_NAME).exists():
        print(f"note: {comfyui / 'custom_nodes' / PACK_DIR_NAME} exists; it is ignored only if it is this repo "
              "(same pack loaded twice registers the same node ids)")
    work = Path(tempfile.mkdtemp(prefix="m2h_host_test_"))
    rep = Report()
    server = None
    try:
        (work / "custom_nodes").mkdir()
        (work / "user").mkdir()
        os.symlink(ROOT, work / "custom_nodes" / PACK_DIR_NAME)
        model = write_models(work / "models")
        native = None if args.skip_native else write_native_models(work / "models")
        names = write_inputs(work / "input")
        (work / "extra_model_paths.yaml").write_text(
            "m2h_host_test:\n"
            f"  base_path: {work / 'models'}\n"
            "  m2hvideo: m2hvideo\n  dwpose: dwpose\n  human_parsing: human_parsing\n  insightface: insightface\n"
            "  vae: vae\n  clip_vision: clip_vision\n"
            "  checkpoints: checkpoints\n  animatediff_models: animatediff_models\n  controlnet: controlnet\n"
            "  ipadapter: ipadapter\n  loras: loras\n"
            f"  custom_nodes: {work / 'custom_nodes'}\n")
        print(f"work folder: {work}", flush=True)
        if args.quick_test:
            quick_test(comfyui, python, work, rep)
        port = args.port or free_port()
        server = Server(comfyui, python, work, port)
        t0 = time.time()
        server.wait_ready(300)
        rep.check("server started", True, f"{server.url} in {time.time() - t0:.0f} s")
        check_object_info(http(server.url + "/object_info", timeout=120), rep)
        templates = http(server.url + "/workflow_templates")
        rep.check("example workflows served as templates",
                  sorted(templates.get(PACK_DIR_NAME, [])) == sorted(
                      p.stem for p in (ROOT / "example_workflows").glob("*.json")), json.dumps(templates))
        for path in sorted((ROOT / "workflows" / "api").glob("*.json")):
            if args.workflow and path.stem not in args.workflow:
                continue
            wf = patch_workflow(json.loads(path.read_text()), names, model)
            t0 = time.time()
            hist = run_workflow(server, wf, args.timeout)
            if not rep.check(f"{path.stem}: ran", "error" not in hist,
                             hist.get("error", f"{time.time() - t0:.1f} s")):
                continue
            check_outputs(path.stem, hist, work / "output", model, rep)
        if native is not None:
            native_checks(server, comfyui, python, work, names, model, native, args.timeout, rep)
    except Exception as e:  # noqa: BLE001 - report and fail
        rep.check("host test", False, f"{type(e).__name__}: {e}")
    finally:
        if server is not None:
            server.stop()
            log = server.log_path.read_text(errors="replace")
            lines = [ln for ln in log.splitlines() if "M2H" in ln or "Traceback" in ln or "Error" in ln]
            print("---- ComfyUI log lines mentioning M2H / errors ----")
            print("\n".join(lines[-60:]))
        if not args.keep and rep.failed == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
