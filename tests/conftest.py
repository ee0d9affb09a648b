"""Shared pytest setup. Fixture builders live in `tests/fixtures.py` (import them from there)."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "slow: takes over a minute on a CPU; still part of CI (deselect with -m 'not slow')")


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Every test on one intra-op thread: the tiny models issue thousands of very small ops, and on a 2-core
    (possibly shared) CI machine OpenMP synchronisation dominates them (measured 5x slower with 2 threads; the
    sd15 forward test 92 s -> 36 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
