#!/usr/bin/env python
"""The pytest runtime tests (tests/test_comfy_runtime.py) against a real ComfyUI instead of tests/comfy_stub/.

    python tests/host/run_runtime_tests.py --comfyui /path/to/ComfyUI [--python /path/to/ComfyUI/.venv/bin/python]

Runs `pytest tests/test_comfy_runtime.py` with ComfyUI's Python and M2H_COMFYUI set: the test module then imports
ComfyUI's own `comfy`, `comfy_api`, `folder_paths` and `latent_preview` (as `main.py --cpu` on a machine without
CUDA) and runs the same node, out-of-memory and model-patcher tests. A test that passes on the stand-in and fails
here means the stand-in drifted from ComfyUI: fix tests/comfy_stub/. Exits with pytest's status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", required=True, type=Path, help="the ComfyUI folder (holds main.py and comfy/)")
    ap.add_argument("--python", default=sys.executable, help="ComfyUI's Python (with the pack's requirements)")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments, e.g. -k out_of_memory")
    a = ap.parse_args()
    comfyui = a.comfyui.resolve()
    if not (comfyui / "comfy" / "model_management.py").is_file():
        ap.error(f"{comfyui} is not a ComfyUI folder (no comfy/model_management.py)")
    env = {**os.environ, "M2H_COMFYUI": str(comfyui)}
    # the test module puts ComfyUI first on sys.path itself (before the pack is loaded), so ComfyUI's own top-level
    # modules (its `nodes.py`, `folder_paths.py`, ...) win over the repository's `nodes/` package
    cmd = [a.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_comfy_runtime.py", *a.pytest_args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
