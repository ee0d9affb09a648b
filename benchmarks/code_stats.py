"""Code-shape figures for a newcomer's read of the repo: file and line counts, import cycles, longest functions.

Walks every `.py` file with `ast` (no imports run). Cycles are strongly connected components of the graph of
module-level and function-level `import` statements among the first-party packages (m2h_core, nodes, train).
Usage: python benchmarks/code_stats.py [--top 10]
"""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("m2h_core", "nodes", "train")
# (importer prefix, imported prefix) pairs DEVELOPERS.md rules out
LAYERS = (("m2h_core.inference", "m2h_core.training"), ("m2h_core.inference", "m2h_core.demo"),
          ("m2h_core.training", "m2h_core.demo"))
SKIP = {".git", ".venv", ".venv-comfy-cli", "__pycache__", "build"}


def python_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP and not d.endswith(".egg-info")]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(out)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """First-party modules `module` imports (relative imports resolved; `from pkg import mod` counts mod)."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph(files: list[Path] | None = None, trees: dict[Path, ast.AST] | None = None) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports (a package and its own submodules left out: an
    __init__ importing them is not a circle a reader has to untangle)."""
    files = python_files(ROOT) if files is None else files
    first_party = [f for f in files if f.relative_to(ROOT).parts[0] in PACKAGES]
    trees = trees or {}
    known = {module_name(f) for f in first_party}
    graph = {}
    for f in first_party:
        tree = trees.get(f) or ast.parse(f.read_text(encoding="utf-8"), str(f))
        deps = imported_modules(tree, module_name(f), f.name == "__init__.py", known)
        m = module_name(f)
        graph[m] = {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
    return graph


def against_layering(graph: dict[str, set[str]]) -> list[str]:
    """Imports DEVELOPERS.md rules out (LAYERS), as "importer -> imported"."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if any(m.startswith(low) and d.startswith(high) for low, high in LAYERS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    files = python_files(ROOT)
    lines = {f: len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    trees = {f: ast.parse(f.read_text(encoding="utf-8"), str(f)) for f in files}
    graph = import_graph(files, trees)
    funcs = []
    for f, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{f.relative_to(ROOT)}:{node.lineno} {node.name}"))
    groups = {}
    for f in files:
        top = f.relative_to(ROOT).parts[0] if len(f.relative_to(ROOT).parts) > 1 else "(root)"
        n, total = groups.get(top, (0, 0))
        groups[top] = (n + 1, total + lines[f])
    print(f"python files: {len(files)}, lines: {sum(lines.values())}")
    for top, (n, total) in sorted(groups.items()):
        print(f"  {top:12s} {n:4d} files {total:6d} lines")
    found = cycles(graph)
    print(f"import cycles among {', '.join(PACKAGES)}: {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    upward = against_layering(graph)
    print(f"imports against the layering (inference/training must not import training/demo): {len(upward)}")
    for edge in upward:
        print("  " + edge)
    print(f"functions: {len(funcs)}; longest {args.top}:")
    for n, where in sorted(funcs, reverse=True)[: args.top]:
        print(f"  {n:4d}  {where}")


if __name__ == "__main__":
    main()
