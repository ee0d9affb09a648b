"""Shared pytest setup. Fixture builders live in `tests/fixtures.py` (import them from there)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes over a minute on a CPU; still part of CI (deselect with -m 'not slow')")
