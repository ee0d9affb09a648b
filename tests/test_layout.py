"""The package layout is the architecture: the inference side loads no training or demo code."""

import subprocess
import sys


def test_inference_imports_no_training_or_demo_code():
    code = ("import sys, m2h_core.inference.generate, m2h_core.inference.pipeline, m2h_core.inference.sampler, "
            "m2h_core.inference.inputs, m2h_core.inference.compositing, m2h_core.inference.batch, "
            "m2h_core.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('m2h_core.training', 'm2h_core.demo'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

