"""Seconds to generate one synthetic clip (16 frames, 128x64), best of 3, one thread (the demo's data stage).

    python benchmarks/bench_synthetic.py
"""

from __future__ import annotations

import time

import torch

from m2h_core.demo.synthetic import generate_clip


def main() -> None:
    torch.set_num_threads(1)
    generate_clip(0, n_frames=2)  # warm up
    times = []
    for seed in range(3):
        t = time.perf_counter()
        generate_clip(seed, n_frames=16, height=128, width=64)
        times.append(time.perf_counter() - t)
    print(f"generate_clip 16 frames 128x64: best {min(times):.3f} s, mean {sum(times) / len(times):.3f} s")


if __name__ == "__main__":
    main()
