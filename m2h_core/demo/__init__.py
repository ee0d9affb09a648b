"""The CPU demo: synthetic mannequin/human clips, the shipped tiny VAE, and `m2h demo` (run.py).

Stand-ins for the paper's data and pretrained weights at a size a CPU trains in minutes; never imported by the
inference path.
"""
