"""Stand-in of ComfyUI's `comfy` package for the pack's tests (see tests/comfy_stub/README.md)."""
