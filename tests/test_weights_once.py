"""Weights stored once in ONNX artifacts for attention, cross-attention, group-norm and linear layers: at NFE 2,
which unrolls the network twice, the initializer bytes are at most 1.05x the network's weight bytes (a copy per
step would make them about 2x)."""

import pytest

from bns_export.compile.build import compile_artifact
from bns_export.loaders import ModelOptions

pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

OPTIONS = ModelOptions(prediction="eps", schedule="ddpm", time_input="index", shape=(1, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["attention_unet", "cross_attention_unet"])
def test_initializers_are_the_weights_once(factory, tmp_path):
    import netfactories

    net = getattr(netfactories, factory)()
    weight_bytes = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    m = compile_artifact(
        f"netfactories:{factory}", "dpm++2m", "onnx", tmp_path / "a", options=OPTIONS, nfe=2, max_batch=2,
        log=lambda m: None,
    )  # fmt: skip
    assert m["validation"]["passed"]
    assert 0.95 * weight_bytes <= m["graph"]["initializer_bytes"] <= 1.05 * weight_bytes, (m["graph"], weight_bytes)
