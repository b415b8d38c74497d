"""Tensor conditioning (e.g. prompt embeddings): a text-conditioned diffusers UNet from a folder, a
conditioning set, classifier-free guidance against the null condition, through GT, distillation,
export, runtime checks, validation and Triton."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from netfactories import diffusers_text_unet  # noqa: E402

from bns_export.cli import main  # noqa: E402
from bns_export.compile.build import compile_artifact  # noqa: E402
from bns_export.distill import DistillConfig, distill  # noqa: E402
from bns_export.errors import BNSError  # noqa: E402
from bns_export.groundtruth import ground_truth  # noqa: E402
from bns_export.loaders import ModelOptions, load_model  # noqa: E402
from bns_export.runtime import load  # noqa: E402
from bns_export.solvers import NSSolver, sample  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("text")
    unet = diffusers_text_unet((8, 16), 4, context_dim=8, heads=4)
    unet.save_pretrained(root / "model" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "model" / "scheduler")
    g = torch.Generator().manual_seed(1)
    save_file(
        {"cond": torch.randn(6, 3, 8, generator=g), "null": torch.randn(3, 8, generator=g) * 0.1},
        str(root / "cond.safetensors"),
    )
    return root


def test_text_conditioned_model_end_to_end(folder, tmp_path):
    opts = ModelOptions(cond_set=str(folder / "cond.safetensors"))
    field = load_model(f"diffusers:{folder / 'model'}", opts, guidance=3.0)
    assert field.conditional and field.cond_shape == (3, 8) and field.num_classes is None
    train, val = ground_truth(field, 24, 1, rtol=1e-3, atol=1e-3), ground_truth(field, 16, 2, rtol=1e-3, atol=1e-3)
    assert train.labels.shape == (24, 3, 8)
    solver = distill(field, train, val, DistillConfig(nfe=2, iterations=10, batch_size=8), out=tmp_path / "s.json")
    assert solver.meta["val_psnr"] >= solver.meta["base_val_psnr"]
    out = tmp_path / "art"
    m = compile_artifact(
        f"diffusers:{folder / 'model'}",
        str(tmp_path / "s.json"),
        "onnx",
        out,
        options=opts,
        guidance=3.0,
        max_batch=4,
        log=lambda m: None,
    )
    assert m["validation"]["passed"] and m["cond_shape"] == [3, 8]
    assert {c["case"] for c in m["validation"]["cases"]} >= {"batch 4, unconditional", "conformance vectors"}
    runner = load(out)
    noise = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    cond = field.cond_set[:2].numpy()
    ref = sample(field, NSSolver.load(tmp_path / "s.json"), torch.from_numpy(noise), torch.from_numpy(cond)).numpy()
    assert np.abs(runner(noise, cond) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    for bad, message in [
        (None, "cond \\(B, 3, 8\\) is required"),
        (cond[:, :2], "expected \\(2, 3, 8\\)"),
        (np.full_like(cond, np.nan), "NaN"),
        (np.zeros((2, 3, 8), np.int64), "floating"),
    ]:
        with pytest.raises(BNSError, match=message):
            runner(noise, bad)
    r = CliRunner().invoke(main, ["triton", str(out), "--repo", str(tmp_path / "repo"), "--name", "text"])
    assert r.exit_code == 0, r.output
    assert 'name: "cond"' in (tmp_path / "repo" / "text" / "config.pbtxt").read_text()


def test_cli_needs_the_set_and_checks_it(folder, tmp_path):
    def run(*args):
        return CliRunner().invoke(main, ["eval", "-m", f"diffusers:{folder / 'model'}", *map(str, args)])

    r = run("-s", "ddim", "--nfe", 2, "-n", 2)
    assert r.exit_code == 2 and "--cond-set" in r.stderr
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    r = run("--cond-set", tmp_path / "bad.safetensors", "-s", "ddim", "--nfe", 2, "-n", 2)
    assert r.exit_code == 2 and "not a safetensors file" in r.stderr
    r = run("--cond-set", folder / "cond.safetensors", "-w", 2, "-s", "unipc", "--nfe", 4, "-n", 4, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["guidance"] == 2.0
