"""Training (paper Algorithm 1): config, model assembly, training state, the loop, data, mirror loss (Eq. 5-6).

`train/train.py` is the command; the demo reuses the same `Trainer`.
"""
