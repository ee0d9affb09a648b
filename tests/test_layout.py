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



def test_no_import_cycles_and_training_imports_no_demo_code():
    """Every `import` statement of m2h_core, nodes and train (module level or inside functions, as
    benchmarks/code_stats.py reads them): no two modules import each other, directly or round a circle, and the
    trainer takes its synthetic data from its caller instead of importing the demo."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "code_stats.py"
    spec = importlib.util.spec_from_file_location("code_stats", path)
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    graph = stats.import_graph()
    assert stats.cycles(graph) == []
    assert stats.against_layering(graph) == []


def test_every_name_the_scripts_import_from_the_package_exists():
    """benchmarks/, train/ and tests/host/ are not collected by pytest and import much of the package inside their
    functions: a name moved by a refactor must not leave one of them failing only when someone runs it."""
    import ast
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    missing = []
    for f in sorted([*root.glob("benchmarks/*.py"), *root.glob("train/*.py"), *root.glob("tests/host/*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] in ("m2h_core", "nodes")):
                continue
            mod = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(mod, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{f.relative_to(root)}:{node.lineno} {node.module}.{alias.name}")
    assert missing == []
