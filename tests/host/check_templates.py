#!/usr/bin/env python
"""Open every template of the pack in a real headless browser against a real ComfyUI, as a user would.

    python tests/host/check_templates.py --comfyui /path/to/ComfyUI --python /path/to/ComfyUI/.venv/bin/python \
        [--out DIR] [--thumbnails]

Needs selenium in the Python running this script and Debian's `chromium` + `chromium-driver` (apt-get install -y
chromium chromium-driver). It starts ComfyUI (this pack in a temp custom_nodes folder), opens the frontend at
1280x800, loads each example_workflows/*.json through the frontend's own loader (app.loadGraphData, as the
template browser does) and checks: no toast (e.g. "Invalid workflow against zod schema"), no missing-node dialog
and every node type registered, every note inside the first view (right of the sidebar). It saves a screenshot
per template in --out; with --thumbnails it also writes <template>.jpg / .webp (the template browser's
thumbnails) next to each template, cropped from that screenshot. Prints `N passed, N failed`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.host.run_host_test import PACK_DIR_NAME, Report, Server, free_port  # noqa: E402

W, H = 1280, 800
TOP_BARS = 80  # px: the menu bar and the workflow tabs cover the canvas above this


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={W},{H}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


STATE_JS = """
const app = window.app || (window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app);
const canvas = app.canvas;
const rect = canvas.canvas.getBoundingClientRect();
const side = document.querySelector('.side-tool-bar-container');
const sideRight = side ? side.getBoundingClientRect().right : 0;
const nodes = app.graph._nodes.map(n => {
  const p = canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - 30]);
  const q = canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + 60]);
  return {type: n.type, title: n.title, x0: p[0] + rect.left, y0: p[1] + rect.top, x1: q[0] + rect.left,
          y1: q[1] + rect.top, registered: !!LiteGraph.registered_node_types[n.type]};
});
const toasts = [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText);
const dialogs = [...document.querySelectorAll('.p-dialog')].map(e => e.innerText.slice(0, 300));
return {nodes, toasts, dialogs, sideRight, width: window.innerWidth, height: window.innerHeight};
"""


def wait_app(drv, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        ok = drv.execute_script("const a = window.app || (window.comfyAPI && window.comfyAPI.app && "
                                "window.comfyAPI.app.app); return !!(a && a.graph && a.canvas && "
                                "window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 50);")
        if ok:
            return
        time.sleep(1)
    raise TimeoutError("the ComfyUI frontend did not load")


def clear_ui(drv):
    drv.execute_script("document.querySelectorAll('.p-toast-message, .p-dialog-mask').forEach(e => e.remove());")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", required=True, type=Path)
    ap.add_argument("--python", default=None)
    ap.add_argument("--out", type=Path, default=None, help="folder for the screenshots (default: a temp folder)")
    ap.add_argument("--thumbnails", action="store_true", help="write example_workflows/<template>.jpg and .webp")
    ap.add_argument("--dir", type=Path, default=ROOT / "example_workflows", help="templates to open (default: "
                    "the pack's example_workflows/)")
    args = ap.parse_args()
    comfyui = args.comfyui.resolve()
    python = args.python or str(comfyui / ".venv/bin/python")
    work = Path(tempfile.mkdtemp(prefix="m2h_templates_"))
    out = args.out or work / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report()
    server = drv = None
    try:
        (work / "custom_nodes").mkdir()
        os.symlink(ROOT, work / "custom_nodes" / PACK_DIR_NAME)
        for d in ("input", "output", "temp", "models"):
            (work / d).mkdir()
        (work / "extra_model_paths.yaml").write_text(
            f"m2h_templates:\n  base_path: {work / 'models'}\n  custom_nodes: {work / 'custom_nodes'}\n")
        server = Server(comfyui, python, work, free_port())
        server.wait_ready(300)
        drv = browser()
        drv.get(server.url)
        wait_app(drv)
        time.sleep(3)
        clear_ui(drv)
        for path in sorted(args.dir.glob("*.json")):
            wf = json.loads(path.read_text())
            clear_ui(drv)
            drv.execute_script("const a = window.app || window.comfyAPI.app.app; "
                               "return a.loadGraphData(arguments[0], true, true, arguments[1]);", wf, path.stem)
            time.sleep(3)
            st = drv.execute_script(STATE_JS)
            shot = out / f"{path.stem}.png"
            drv.save_screenshot(str(shot))
            name = path.stem
            rep.check(f"{name}: no toast", not st["toasts"], json.dumps(st["toasts"]))
            missing = [n["type"] for n in st["nodes"] if not n["registered"]]
            rep.check(f"{name}: no missing node types", not missing and not any(
                "missing" in d.lower() for d in st["dialogs"]), f"{missing} {st['dialogs']}")
            notes = [n for n in st["nodes"] if n["type"] in ("MarkdownNote", "Note")]
            outside = [n["title"] for n in notes if not (n["x0"] >= st["sideRight"] and n["y0"] >= TOP_BARS
                                                         and n["x1"] <= st["width"] and n["y0"] < st["height"])]
            rep.check(f"{name}: notes visible in the first view", bool(notes) and not outside,
                      f"{len(notes)} notes, outside: {outside}; sidebar ends at x={st['sideRight']:.0f}")
            if args.thumbnails:
                from PIL import Image

                img = Image.open(shot).convert("RGB")
                left = int(st["sideRight"])
                img = img.crop((left, 40, min(img.width, left + 1200), min(img.height, 40 + 675)))
                img.thumbnail((512, 288))
                img.save(path.with_suffix(".jpg"), quality=80)
                img.save(path.with_suffix(".webp"), quality=70)
                print(f"thumbnail {path.with_suffix('.webp').name}: {img.size}", flush=True)
        print(f"screenshots: {out}")
    except Exception as e:  # noqa: BLE001
        rep.check("template check", False, f"{type(e).__name__}: {e}")
    finally:
        if drv is not None:
            drv.quit()
        if server is not None:
            server.stop()
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
