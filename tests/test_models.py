"""Shipped models: they load from safetensors, keep their fingerprint, and distil."""

import json

import pytest
import torch

from bns_export.distill import DistillConfig, distill
from bns_export.groundtruth import ground_truth
from bns_export.models import list_models, load_model, models_dir

SHIPPED = [m["name"] for m in list_models() if m["kind"] == "shipped"]


def test_digits_is_shipped():
    assert "digits" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_is_deterministic(name):
    cfg = json.loads((models_dir() / name / "config.json").read_text())
    field = load_model(name)
    assert field.sample_shape == tuple(cfg["shape"]) and field.num_classes == cfg.get("num_classes")
    assert (models_dir() / name / "weights.safetensors").stat().st_size <= 10 * 2**20
    assert (models_dir() / name / "card.md").exists()
    assert field.fingerprint() == load_model(name).fingerprint()
    x = torch.randn(2, *field.sample_shape)
    labels = None if field.num_classes is None else torch.tensor([0, 1])
    with torch.no_grad():
        u = field(x, torch.tensor(0.5), labels)
    assert u.shape == x.shape and torch.isfinite(u).all()


@pytest.mark.parametrize("name", SHIPPED)
def test_short_distillation_on_shipped_model(name):
    field = load_model(name)
    guided = load_model(name, guidance=2.0) if field.num_classes else field
    train, val = ground_truth(guided, 24, 1, rtol=1e-4, atol=1e-4), ground_truth(guided, 24, 2, rtol=1e-4, atol=1e-4)
    solver = distill(guided, train, val, DistillConfig(nfe=4, base="auto", iterations=30, batch_size=12, val_every=5))
    assert solver.meta["val_psnr"] > solver.meta["base_val_psnr"]
