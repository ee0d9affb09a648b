#!/usr/bin/env bash
# Install the pack the way users do, with ComfyUI-Manager's own command line, from a git URL of this repository,
# into a fresh copy of a ComfyUI install (without its custom_nodes), start it and find the five nodes.
#
#   tests/host/check_manager_install.sh /path/to/ComfyUI /path/to/venv-with-comfyui-manager
#
# The manager venv: python -m venv V && V/bin/pip install comfyui-manager aiohttp (the package imports aiohttp but
# does not declare it). cm-cli only accepts URLs with a host, so the repository's committed HEAD is served with
# `git daemon` on 127.0.0.1 (no network needed). cm-cli runs install.py with its own Python (the manager venv);
# --no-deps keeps it from pip-installing the pack's requirements there (the ComfyUI copy already has them).
set -euo pipefail
SRC=$(realpath "$1"); MGR=$(realpath "$2"); REPO=$(realpath "$(dirname "$0")/../..")
WORK=$(mktemp -d /tmp/m2h_manager_XXXX); PORT=${PORT:-8299}; GITPORT=${GITPORT:-9419}
echo "work: $WORK"
mkdir -p "$WORK/git" "$WORK/comfyui"
git clone -q --bare "$REPO" "$WORK/git/ComfyUI-M2HVideo.git"
(cd "$SRC" && tar --exclude=./custom_nodes -cf - .) | (cd "$WORK/comfyui" && tar xf -)
mkdir -p "$WORK/comfyui/custom_nodes"
git daemon --reuseaddr --base-path="$WORK/git" --export-all --listen=127.0.0.1 --port="$GITPORT" "$WORK/git" &
GITD=$!
trap 'kill $GITD 2>/dev/null || true; [ -n "${COMFY:-}" ] && kill $COMFY 2>/dev/null || true' EXIT
sleep 1
COMFYUI_PATH="$WORK/comfyui" "$MGR/bin/cm-cli" install "git://127.0.0.1:$GITPORT/ComfyUI-M2HVideo.git" \
    --mode local --no-deps 2>&1 | grep -E "Install|INSTALLED|ERROR|EXECUTE" || true
test -f "$WORK/comfyui/custom_nodes/ComfyUI-M2HVideo/pyproject.toml"
(cd "$WORK/comfyui" && exec .venv/bin/python main.py --cpu --listen 127.0.0.1 --port "$PORT" --disable-auto-launch \
    --database-url sqlite:///:memory: > "$WORK/comfyui.log" 2>&1) &
COMFY=$!
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$PORT/system_stats" > /dev/null && break; sleep 2; done
curl -sf "http://127.0.0.1:$PORT/object_info" | python3 -c '
import json, sys
info = json.load(sys.stdin)
ids = ["M2HMannequinSegmentation", "M2HDWPose", "M2HHeadEncoder", "M2HUNetLoader", "M2HSampler"]
found = [i for i in ids if i in info and info[i]["python_module"] == "custom_nodes.ComfyUI-M2HVideo"]
for i in found:
    off = " (UNAVAILABLE)" if info[i]["description"].startswith("UNAVAILABLE") else ""
    print("found", i + ":", info[i]["display_name"] + off)
print(f"{len(found)} passed, {len(ids) - len(found)} failed")
sys.exit(0 if len(found) == len(ids) else 1)'
