"""Pytest set-up shared by the unit tests and the doctests of ``skicon``.

Kept at the repository root so that ``--doctest-modules skicon`` picks it up too.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    """Keep torch to the two cores of the CI machines and make runs repeatable."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
