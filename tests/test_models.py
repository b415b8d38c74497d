"""Shipped models: they load from safetensors, keep their fingerprint, and distil."""

import json

import pytest
import torch

from bns_export.distill import DistillConfig, distill
from bns_export.groundtruth import ground_truth
from bns_export.loaders import list_models, load_model, models_dir

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


def _digits_copy(tmp_path, monkeypatch, **config) -> None:
    """models/digits (and the shared network code) copied under tmp_path with config.json changed."""
    import shutil

    shutil.copytree(models_dir() / "digits", tmp_path / "digits", ignore=shutil.ignore_patterns("*.png", "bns-*"))
    shutil.copy(models_dir() / "unet.py", tmp_path / "unet.py")
    cfg = json.loads((tmp_path / "digits" / "config.json").read_text())
    (tmp_path / "digits" / "config.json").write_text(json.dumps({**cfg, **config}))
    monkeypatch.setenv("BNS_EXPORT_MODELS", str(tmp_path))


def test_model_config_sets_the_ground_truth_tolerance(tmp_path, monkeypatch):
    from bns_export.groundtruth import gt_key

    _digits_copy(tmp_path, monkeypatch, gt_tolerance=1e-3)
    field = load_model("digits")
    assert field.gt_tolerance == 1e-3 and load_model("analytic:gmm").gt_tolerance == 1e-5
    gt = ground_truth(field, 2, 5, cache_dir=tmp_path / "gt")
    assert gt.key == gt_key(field, 2, 5, 1e-3, 1e-3, field.default_dtype)
    assert ground_truth(field, 2, 5, rtol=1e-4, atol=1e-4, cache_dir=tmp_path / "gt").key != gt.key


@pytest.mark.parametrize("bad", ["1e-6", 0.0, 1.0, float("nan")])
def test_bad_ground_truth_tolerance_in_config_is_one_error(tmp_path, monkeypatch, bad):
    from bns_export.errors import BNSError

    _digits_copy(tmp_path, monkeypatch, gt_tolerance=bad)
    with pytest.raises(BNSError, match="gt_tolerance"):
        load_model("digits")
