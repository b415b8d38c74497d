"""Shared fixtures: a private GT cache per test session, analytic fields, small networks."""

from __future__ import annotations

import os

# one OpenMP/BLAS thread, set before torch and numpy start their pools, here and in the CLI processes tests
# start: on 2 cores torch's pool beside ONNX Runtime's and a second process oversubscribe them (the suite took
# 450 s with OMP_NUM_THREADS=1 in the environment, 600 s without)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for the netfactories test module


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    import os

    os.environ["BNS_EXPORT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(1)
    yield
