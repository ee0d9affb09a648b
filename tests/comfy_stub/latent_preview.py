"""Stand-in of ComfyUI's latent_preview: the sampler callback that drives the progress bar.

With ComfyUI's default --preview-method (none) no preview image is made; the callback only moves the bar.
"""

from __future__ import annotations

import comfy.utils


def prepare_callback(model, steps, x0_output_dict=None):
    pbar = comfy.utils.ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        pbar.update_absolute(step + 1, total_steps, None)

    return callback
