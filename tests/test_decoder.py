"""Latent models with the decoder in the graph: the artifact outputs images, parity covers latents and
images, decoder weights are stored once; a factory decoder and a diffusers folder's vae/."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from cliresult import one_line_error, run

from bns_export.cli import main
from bns_export.compile.build import compile_artifact
from bns_export.loaders import ModelOptions
from bns_export.runtime import load

TINY = ["-m", "netfactories:tiny", "--shape", "1,4,4"]


def test_factory_decoder_end_to_end(tmp_path):
    out = tmp_path / "art"
    r = CliRunner().invoke(
        main,
        [
            "compile", *TINY, "-s", "dpm++2m", "--nfe", "3", "--max-batch", "3",
            "--decoder", "netfactories:tiny_decoder", "-o", str(out), "--json",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in m["outputs"]] == ["sample", "image"]
    assert m["outputs"][1]["shape"] == ["batch", 3, 8, 8] and m["decoder"]["class"] == "TinyDecoder"
    cases = {c["case"] for c in m["validation"]["cases"]}
    assert {"batch 1: sample", "batch 1: image", "conformance vectors: image"} <= cases
    assert m["validation"]["passed"]
    runner = load(out)
    noise = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    image = runner(noise)
    both = runner.run(noise)
    assert image.shape == (2, 3, 8, 8) and isinstance(image, np.ndarray)
    assert list(both) == ["sample", "image"] and np.array_equal(both["image"], image)
    import netfactories

    with torch.no_grad():
        expect = netfactories.tiny_decoder()(torch.from_numpy(both["sample"])).numpy()
    assert np.abs(expect - image).max() < 1e-5
    as_torch = runner(torch.from_numpy(noise))  # torch in, torch out
    assert isinstance(as_torch, torch.Tensor) and torch.allclose(as_torch, torch.from_numpy(image), atol=1e-6)
    # the eager `sample` command decodes too
    npz = tmp_path / "s.npz"
    r = CliRunner().invoke(
        main,
        [
            "sample",
            *TINY,
            "-s",
            "dpm++2m",
            "--nfe",
            "3",
            "-n",
            "2",
            "--decoder",
            "netfactories:tiny_decoder",
            "-o",
            str(npz),
        ],
    )
    assert r.exit_code == 0, r.output
    d = np.load(npz)
    assert d["images"].shape == (2, 3, 8, 8) and d["samples"].shape == (2, 1, 4, 4)


@pytest.mark.parametrize(
    "decoder,message",
    [
        ("vae", "needs -m diffusers:PATH"),
        ("netfactories:nan_decoder", "NaN or inf"),
        ("netfactories:flat_decoder", "expected (2, C, H, W)"),
        ("netfactories:nope", "no callable 'nope'"),
        ("no_such_module_xyz:f", "ModuleNotFoundError"),
        ("not-a-folder", "not a folder"),
    ],
)
def test_bad_decoders_are_one_line(tmp_path, decoder, message):
    out = tmp_path / "art"
    r = CliRunner().invoke(main, ["compile", *TINY, "-s", "ddim", "--nfe", "2", "--decoder", decoder, "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and not out.exists()


diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from tiny_pipeline import build

    return build(tmp_path_factory.mktemp("pipe") / "tiny")


@pytest.mark.slow
def test_diffusers_vae_in_the_graph_weights_once(pipeline, tmp_path):
    """The worked example (docs/your-model.md): text-conditioned latent UNet + vae/ -> one ONNX graph, images out."""
    opts = ModelOptions(cond_set=str(pipeline / "prompts.safetensors"), decoder="vae")
    m = compile_artifact(
        f"diffusers:{pipeline}", "dpm++2m", "onnx", tmp_path / "a2",
        options=opts, nfe=2, guidance=3.0, max_batch=2, log=lambda m: None,
    )  # fmt: skip
    assert m["validation"]["passed"], m["validation"]
    assert m["decoder"]["class"] == "AutoencoderKL" and m["outputs"][1]["shape"] == ["batch", 3, 16, 16]
    # the UNet and the VAE stored once at NFE 2: a copy per step would put the ratio near 2 (tests/test_weights_once.py
    # checks the same for the UNets alone)
    assert m["graph"]["initializer_ratio"] <= 1.05, m["graph"]
    rows = {r["case"]: r for r in m["validation"]["cases"]}
    assert rows["batch 2: image"]["psnr_min"] >= 60 and rows["batch 2: sample"]["psnr_min"] >= 60
    # the worked example of docs/your-model.md, verbatim but for the paths, with torch made unimportable
    readme = (Path(__file__).resolve().parent.parent / "docs" / "your-model.md").read_text()
    code = readme.split("<!-- worked-example:python -->\n```python\n")[1].split("```")[0]
    code = code.replace('"tiny-sd-bns8/"', repr(str(tmp_path / "a2"))).replace(
        '"tiny-sd/prompts.safetensors"', repr(str(pipeline / "prompts.safetensors"))
    )
    guard = 'import sys\nsys.modules["torch"] = None\n'
    check = '\nassert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]\n'
    res = subprocess.run([sys.executable, "-c", guard + code + check], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "(2, 3, 16, 16) (2, 4, 8, 8)" in res.stdout


@pytest.mark.parametrize(
    "part,key,value,message",
    [
        ("vae", "scaling_factor", "abc", "scaling_factor must be a number"),
        ("vae", "scaling_factor", 0, "scaling_factor must be > 0"),
        ("scheduler", "num_train_timesteps", 10**12, "num_train_timesteps must be in 2..1000000"),
        ("scheduler", "beta_end", 1e-5, "beta_end 1e-05 is below beta_start"),
    ],
)
def test_config_values_are_checked_before_use(pipeline, tmp_path, part, key, value, message):
    import shutil

    folder = tmp_path / "p"
    shutil.copytree(pipeline, folder)
    cfg_path = folder / part / ("config.json" if part == "vae" else "scheduler_config.json")
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), key: value}))
    args = ["sample", "-m", f"diffusers:{folder}", "--cond-set", str(folder / "prompts.safetensors"), "-s", "euler"]
    one_line_error(*run(*args, "--nfe", "2", "-n", "1", "--decoder", "vae", "-o", tmp_path / "s.png"), needle=message)
    assert not (tmp_path / "s.png").exists()
