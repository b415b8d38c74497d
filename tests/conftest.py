"""Shared fixtures: a private GT cache per test session, analytic fields, small networks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for the netfactories test module


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    import os

    os.environ["BNS_EXPORT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(2)
    yield
