"""The CPU demo: synthetic mannequin/human clips, the shipped tiny VAE, and `m2h demo` (run.py).

Stand-ins for the training data and the full-size model's pretrained weights (our SD-1.5 + AnimateDiff
backbone; the paper names none) at a size a CPU trains in minutes; never imported by the inference path.
"""
