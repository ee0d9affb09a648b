"""Run by ComfyUI Manager after requirements.txt: installs exactly ONE onnxruntime and ONE OpenCV distribution,
and insightface without its own (clashing) dependencies. Safe to run again; never removes anything."""

import importlib.metadata as md
import subprocess
import sys


def installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def pip(*args: str) -> None:
    print("[M2HVideo] pip install", *args)
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])


def main() -> None:
    ort = [n for n in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-silicon") if installed(n)]
    if len(ort) > 1:
        print(f"[M2HVideo] WARNING: several ONNX Runtime distributions are installed ({', '.join(ort)}); they "
              "overwrite each other. Uninstall all but one.")
    if not ort:
        try:
            import torch
            gpu = torch.cuda.is_available()
        except Exception:  # noqa: BLE001
            gpu = False
        pip("onnxruntime-gpu" if gpu else "onnxruntime")
    cv = [n for n in ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                      "opencv-contrib-python-headless") if installed(n)]
    if not cv:
        pip("opencv-python-headless")
    if not installed("insightface"):
        pip("--no-deps", "insightface")


if __name__ == "__main__":
    main()
