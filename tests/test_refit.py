"""`bns-export refit`: an ONNX artifact's graph with a fine-tune's weights, no second export: the refitted artifact
validates against the eager sampler of the new weights and samples what a fresh compile of them samples; an
architecture that differs, a base that is not the artifact's, and non-ONNX formats are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from cliresult import run as cli  # noqa: E402
from families import build_family  # noqa: E402
from forged import as_tensorrt  # noqa: E402

from bns_export.runtime import load  # noqa: E402


def _fine_tune(folder, out, scale: float = 0.02, seed: int = 1):
    """A copy of a diffusers folder with every weight moved a little (a stand-in for further training)."""
    shutil.copytree(folder, out)
    sub = out / "unet"
    model = diffusers.UNet2DConditionModel.from_pretrained(sub)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(sub)
    return out


def _samples(*artifacts) -> list[np.ndarray]:
    """Each artifact's samples for the same seeded noise and conditions."""
    runners = [load(a) for a in artifacts]
    first = runners[0]
    noise = np.random.default_rng(0).standard_normal((2, *first.sample_shape)).astype(np.float32)
    rng = np.random.default_rng(1)
    cond = {n: rng.standard_normal((2, *first.condition_shapes[n])).astype(np.float32) for n in first.condition_names}
    return [r(noise, cond) for r in runners]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    folder, opts, _ = build_family("sd", root / "sd")
    model = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():  # a trained network has no two equal weights (a fresh one's norms are all ones)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(folder / "unet")
    art = root / "art"
    code, _, err = cli("compile", "-m", f"diffusers:{folder}", *opts, "-w", 3, "-s", "dpm++2m", "--nfe", 2,
                       "--max-batch", 2, "-o", art)  # fmt: skip
    assert code == 0, err
    return root, folder, opts, art


def test_a_fine_tune_refits_into_the_same_graph(base, tmp_path):
    root, folder, opts, art = base
    tuned = _fine_tune(folder, tmp_path / "tuned")
    out = tmp_path / "refit"
    code, stdout, err = cli("refit", art, "-m", f"diffusers:{tuned}", "-o", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["refit_from"] == json.loads((art / "manifest.json").read_text())["model_fingerprint"]
    assert manifest["validation"]["passed"] and manifest["model_spec"]["model"] == f"diffusers:{tuned}"
    code, _, err = cli("validate", out)  # an independent check, conformance vectors included
    assert code == 0, err
    fresh = tmp_path / "fresh"  # the yardstick: only its samples are compared, so its own parity check is skipped
    code, _, err = cli("compile", "-m", f"diffusers:{tuned}", *opts, "-w", 3, "-s", "dpm++2m", "--nfe", 2,
                       "--max-batch", 2, "--no-validate", "-o", fresh)  # fmt: skip
    assert code == 0, err
    refitted, compiled, old = _samples(out, fresh, art)
    assert np.abs(refitted - compiled).max() < 1e-4
    assert np.abs(refitted - old).max() > 1e-3  # the weights did change


def test_another_architecture_or_base_is_one_line(base, tmp_path):
    from families import _unet_kw

    root, folder, opts, art = base
    other = tmp_path / "deeper"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("unet"))  # the scheduler and conditions
    diffusers.UNet2DConditionModel(**{**_unet_kw(), "layers_per_block": 2}, cross_attention_dim=32).save_pretrained(
        other / "unet"
    )  # the same inputs, another architecture
    code, _, err = cli("refit", art, "-m", f"diffusers:{other}", "-o", tmp_path / "x")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error:") and "architecture" in last and not (tmp_path / "x").exists()
    tuned = _fine_tune(folder, tmp_path / "tuned")
    code, _, err = cli("refit", art, "-m", f"diffusers:{tuned}", "--base", f"diffusers:{tuned}", "-o", tmp_path / "y")
    assert code == 2 and "is not the one this artifact was built from" in err and not (tmp_path / "y").exists()
    code, _, err = cli("refit", tmp_path / "nosuch", "-m", f"diffusers:{tuned}", "-o", tmp_path / "z")
    assert code == 2 and "Traceback" not in err


def _tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return True
    return False


def test_a_tensorrt_engine_refits_only_when_built_refittable(base, tmp_path):
    """An engine built without --refittable is one line before any model is loaded; a refittable one needs TensorRT
    (exit 3 here, nothing written); aoti is refused at compile; engines stay code (no trust, no open)."""
    root, folder, opts, art = base
    fixed = as_tensorrt(art, tmp_path / "fixed")
    new = ("-m", f"diffusers:{folder}", "--trust-engine-code")
    code, _, err = cli("refit", fixed, *new, "-o", tmp_path / "x")
    assert code == 2 and "built without --refittable" in err and "Traceback" not in err
    code, _, err = cli("refit", fixed, "-m", f"diffusers:{folder}", "-o", tmp_path / "x")
    assert code == 2 and "runs native code" in err
    gmm = ("compile", "-m", "analytic:gmm", "-s", "euler", "--refittable", "-o", tmp_path / "y")
    if _tensorrt_missing():
        refittable = as_tensorrt(art, tmp_path / "refittable", engine_refittable=True)
        code, _, err = cli("refit", refittable, *new, "-o", tmp_path / "x")
        assert code == 3 and "TensorRT is not installed" in err and len(err.strip().splitlines()) == 1
        assert cli(*gmm, "--format", "tensorrt")[0] == 3
    code, _, err = cli(*gmm, "--format", "aoti")
    assert code == 2 and "--refittable applies to onnx, onnx-loop, tensorrt, tensorrt-loop builds, not aoti" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _lora(folder, out, seed: int = 3):
    """A LoRA file for the folder's UNet (rank 4 on the attention projections, random weights), as diffusers
    saves one (save_lora_adapter)."""
    pytest.importorskip("peft", reason="peft (test-only, for LoRA files) is not installed")
    from peft import LoraConfig

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    unet.save_lora_adapter(out, weight_name="lora.safetensors")
    return out / "lora.safetensors"


def test_the_base_with_a_lora_refits_and_compiles_alike(base, tmp_path):
    root, folder, opts, art = base
    lora = _lora(folder, tmp_path / "lora")
    out, fresh = tmp_path / "refit", tmp_path / "fresh"
    code, _, err = cli("refit", art, "-m", f"diffusers:{folder}", "--lora", f"{lora}:0.8", "-o", out)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["model_spec"]["options"]["loras"] == [f"{lora}:0.8"]
    code, _, err = cli("validate", out)  # rebuilds the reference with the LoRA its manifest names
    assert code == 0, err
    code, _, err = cli("compile", "-m", f"diffusers:{folder}", "--lora", f"{lora}:0.8", *opts, "-w", 3, "-s",
                       "dpm++2m", "--nfe", 2, "--max-batch", 2, "--no-validate", "-o", fresh)  # fmt: skip
    assert code == 0, err
    refitted, compiled, old = _samples(out, fresh, art)
    assert np.abs(refitted - compiled).max() < 1e-4
    assert np.abs(refitted - old).max() > 1e-4  # the LoRA did change the weights
    for bad, needle in [(f"{lora}:x9", "not a .safetensors"), (f"{lora}:1e9", "scale"), (str(art / "manifest.json"),
                        "not a .safetensors")]:  # fmt: skip
        code, _, err = cli("refit", art, "-m", f"diffusers:{folder}", "--lora", bad, "-o", tmp_path / "bad")
        assert code == 2 and needle in err and not (tmp_path / "bad").exists(), err
