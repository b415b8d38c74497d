"""Shared fixtures: a private GT cache per test session, analytic fields, small networks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for the netfactories test module


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """One GT cache for the run (shared by pytest-xdist's workers: its writes are atomic), and the cores split
    between the workers: one torch thread each, for the worker and the processes it starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if worker else root) / "gt-cache"
    cache.mkdir(exist_ok=True)
    os.environ["BNS_EXPORT_CACHE"] = str(cache)
    if worker:
        os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1 if worker else 2)
    yield
