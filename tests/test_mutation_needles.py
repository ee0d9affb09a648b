"""benchmarks/mutation_check.py stays fresh (issue 32): every mutant's needle still matches the code exactly once
and names test files that exist. The mutants themselves run outside CI (slow); this is the fast half."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "benchmarks" / "mutation_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_still_applies_and_has_its_tests():
    mc = load_mutation_check()
    stale = []
    for mu in mc.MUTANTS:
        variant, problem = mc.pick_variant(mu, ROOT)
        missing = [t for t in mu.tests if not (ROOT / t.split("::")[0]).exists()]
        if variant is None or missing:
            stale.append(f"{mu.name}: {problem} {'missing tests ' + ' '.join(missing) if missing else ''}")
        else:  # a patch that changes nothing would "survive" for the wrong reason
            assert all(needle != repl for _, needle, repl in variant), mu.name
    assert not stale, "update benchmarks/mutation_check.py:\n" + "\n".join(stale)
    assert len({mu.name for mu in mc.MUTANTS}) == len(mc.MUTANTS), "mutant names must be unique"
