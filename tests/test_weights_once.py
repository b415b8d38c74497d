"""Weights stored once in ONNX artifacts for attention, cross-attention, group-norm and linear layers:
initializer bytes constant in NFE and at most 1.05x the network's weight bytes."""

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
    stats = {}
    for nfe in (1, 2):
        m = compile_artifact(
            f"netfactories:{factory}",
            "dpm++2m",
            "onnx",
            tmp_path / f"a{nfe}",
            options=OPTIONS,
            nfe=nfe,
            max_batch=2,
            validate=nfe == 2,  # NFE 1 is here for its graph's statistics only
            log=lambda m: None,
        )
        stats[nfe] = m["graph"]
    assert m["validation"]["passed"]
    assert abs(stats[2]["initializer_bytes"] - stats[1]["initializer_bytes"]) < 1024  # only the solver's scalars
    assert stats[2]["initializer_bytes"] <= 1.05 * weight_bytes, (stats, weight_bytes)
    assert stats[2]["nodes"] > stats[1]["nodes"]
