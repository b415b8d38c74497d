"""Image sizes: `--sizes` parsed once, shipped and diffusers UNets loaded at other sizes, graphs whose
spatial axes are dynamic over the declared set (checked by every runner, validated at each size), and the
TensorRT profiles and Triton dims that follow."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bns_export.backends.base import profile_strings
from bns_export.cli import main
from bns_export.compile.build import compile_artifact
from bns_export.errors import BNSError
from bns_export.loaders import ModelOptions, load_model
from bns_export.runtime import load, read_manifest
from bns_export.runtime.triton import config_pbtxt
from bns_export.sizes import SizeSet, concrete, parse_sizes
from bns_export.solvers import load_solver
from bns_export.solvers.sampler import ns_sample, solver_tensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # tiny_pipeline


def test_sizes_parse_as_a_list_or_a_range():
    s = parse_sizes("8x8, 12x12,16X8", (8, 8), 2)
    assert s.probes() == ((8, 8), (12, 12), (16, 8)) and (12, 12) in s and (10, 10) not in s
    assert s.bounds == ((8, 8), (16, 12))
    r = parse_sizes("8x8:16x16", (8, 8), 2)
    assert (10, 14) in r and (11, 14) not in r and (18, 8) not in r and r.bounds == ((8, 8), (16, 16))
    assert set(r.probes()) == {(8, 8), (16, 16), (8, 16), (16, 8)}
    for s in (parse_sizes("12x12", (8, 8), 2), r, parse_sizes("64x64:128x96", (8, 8), 2, scale=8)):
        assert SizeSet.from_json(json.loads(json.dumps(s.to_json()))) == s
    pixels = parse_sizes("64x64,96x64", (8, 8), 2, scale=8)  # image pixels with a decoder upsampling by 8
    assert pixels.probes() == ((8, 8), (12, 8)) and pixels.scale == 8


@pytest.mark.parametrize(
    "text, step, message",
    [
        ("12x13", 2, "not a multiple of 2"),
        ("12by12", 2, "expected HxW"),
        ("0x8", 2, "each side must be in"),
        ("16x16:8x8", 2, "must not exceed"),
        ("10x10:16x16", 2, "does not contain the size the solver runs at"),
        ("8x8:10x10:12x12", 2, "a range is HxW:HxW"),
        ("", 2, "expected HxW"),
        ("12x12", None, "runs at its own sample shape only"),
        (",".join(f"{2 * i}x8" for i in range(1, 70)), 2, "at most 64"),
    ],
)
def test_bad_sizes_are_one_line(text, step, message):
    with pytest.raises(BNSError, match=message):
        parse_sizes(text, (8, 8), step)


def test_symbolic_shapes_resolve_in_one_place():
    assert concrete(["batch", 4, "height", "width"], 3, (12, 8)) == (3, 4, 12, 8)
    assert concrete(["batch", 3, "image_height", "image_width"], 1, (12, 8), scale=8) == (1, 3, 96, 64)
    assert concrete(["batch", 6, 32], 2) == (2, 6, 32)


def test_shipped_unets_load_at_other_sizes_and_refuse_bad_ones():
    field = load_model("digits-text", ModelOptions(shape=(1, 12, 16)), guidance=3.0)
    assert field.sample_shape == (1, 12, 16) and field.size_step == 2
    assert field(torch.randn(2, 1, 12, 16), 0.5, field.cond_set[:2]).shape == (2, 1, 12, 16)
    assert load_model("mnist").size_step == 4
    assert load_model("analytic:gmm").size_step is None
    for shape, message in (((1, 30, 30), "not a multiple of 4"), ((2, 28, 28), "must keep its channels")):
        with pytest.raises(BNSError, match=message):
            load_model("mnist", ModelOptions(shape=shape))
    with pytest.raises(BNSError, match="--shape do"):
        load_model("analytic:gmm", ModelOptions(shape=(1, 8, 8)))


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    """digits-text at NFE 4, guidance 3, compiled to ONNX for 8x8 (its own), 12x12 and 16x8."""
    out = tmp_path_factory.mktemp("sized") / "a"
    r = CliRunner().invoke(
        main,
        ["compile", "-m", "digits-text", "-s", "midpoint", "--nfe", "4", "-w", "3", "--max-batch", "4"]
        + ["--sizes", "12x12,16x8", "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    return out


def test_a_sized_graph_runs_at_every_declared_size_and_matches_eager(sized):
    m = read_manifest(sized)
    assert m["inputs"][0]["shape"] == ["batch", 1, "height", "width"] == m["outputs"][0]["shape"]
    assert m["sizes"] == {"base": [8, 8], "step": 2, "scale": 1, "list": [[8, 8], [12, 12], [16, 8]]}
    cases = {r["case"]: r for r in m["validation"]["cases"]}
    assert cases["batch 4, size 12x12"]["psnr_min"] >= 60 and cases["batch 4, size 16x8"]["psnr_min"] >= 60
    runner = load(sized)
    field = load_model("digits-text", guidance=3.0)
    table = solver_tensors(load_solver(sized / "solver.json"), torch.float32, "cpu")
    cond = field.cond_set[:2]
    for size in ((12, 12), (16, 8)):
        noise = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(1))
        out = runner(noise, cond)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 1, *size)
        with torch.no_grad():
            ref = ns_sample(field, *table, field.start(noise), cond)
        assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    for shape, message in (((2, 1, 10, 10), "size 10x10"), ((2, 1, 8, 12), "size 8x12"), ((2, 2, 8, 8), "shape")):
        with pytest.raises(BNSError, match=message):
            runner(np.zeros(shape, np.float32), cond.numpy())


def test_triton_s_graph_refuses_undeclared_sizes(sized, tmp_path):
    """The written repository's graph in a bare ONNX Runtime session (Triton's backend, no bns-export checks): the
    declared sizes run; 12x8, 24x24 and 10x10 stop the run, naming the rule."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from bns_export.runtime.triton import write_repository

    repo = write_repository([sized], tmp_path / "repo", name="sized", gpu=False)
    session = ort.InferenceSession(str(repo / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    cond = load_model("digits-text", guidance=3.0).cond_set[:1].numpy()
    for size in ((8, 8), (12, 12), (16, 8)):
        noise = np.random.default_rng(0).standard_normal((1, 1, *size)).astype(np.float32)
        out = session.run(None, {"noise": noise, "cond": cond})[0]
        assert np.abs(out - load(sized)(noise, cond)).max() < 1e-6
    for size in ((12, 8), (24, 24), (10, 10)):
        with pytest.raises(Exception, match="noise size must be one this artifact was declared for: 8x8,12x12,16x8"):
            session.run(None, {"noise": np.zeros((1, 1, *size), np.float32), "cond": cond})


def test_an_unconditional_vp_model_takes_sizes(tmp_path):
    """digits (eps-prediction DDPM, no conditioning): its graph takes a range of sizes."""
    out = tmp_path / "a"
    r = CliRunner().invoke(
        main,
        ["compile", "-m", "digits", "-s", "euler", "--nfe", "2", "--max-batch", "2", "--sizes", "8x8:12x10"]
        + ["--no-validate", "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert (m["sizes"]["min"], m["sizes"]["max"], m["sizes"]["step"]) == ([8, 8], [12, 10], 2)
    runner, field = load(out), load_model("digits")
    table = solver_tensors(load_solver(out / "solver.json"), torch.float32, "cpu")
    for size in ((12, 10), (10, 8)):
        noise = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = ns_sample(field, *table, field.start(noise), None)
        assert torch.allclose(runner(noise), ref, atol=1e-4)
    with pytest.raises(BNSError, match="size 10x12"):
        runner(torch.zeros(2, 1, 10, 12))


def test_profiles_and_triton_dims_follow_the_sizes(sized):
    m = read_manifest(sized)
    lo, opt, hi = profile_strings(m)
    assert lo.startswith("noise:1x1x8x8,") and opt.startswith("noise:2x1x8x8,") and hi.startswith("noise:4x1x16x12,")
    text = config_pbtxt("digits", m, gpu=True, engine_cache="/models/digits/trt_engines")
    assert "dims: [ 1, -1, -1 ]" in text  # noise and sample: the spatial axes are dynamic
    assert 'key: "noise" value: { data_type: TYPE_FP32 dims: [ 1, 8, 8 ]' in text  # the warmup at the base size
    assert 'value: "noise:4x1x16x12,cond:4x6x32"' in text


def test_a_tampered_sizes_record_is_refused(sized):
    from bns_export.runtime.artifact import check_manifest

    m = read_manifest(sized)
    for bad, message in (
        ({**m, "sizes": {**m["sizes"], "base": [12, 12]}}, "sizes start from"),
        ({**m, "sizes": None}, "does not match sample_shape"),
        ({**m, "sizes": {**m["sizes"], "step": "2"}}, "manifest sizes must be"),
    ):
        with pytest.raises(BNSError, match=message):
            check_manifest(bad)


def test_sizes_refused_where_the_network_bakes_its_size(tmp_path):
    r = CliRunner().invoke(
        main,
        ["compile", "-m", "analytic:gmm", "-s", "euler", "--nfe", "2", "--sizes", "8x8", "-o", str(tmp_path / "a")],
    )
    assert r.exit_code == 2 and "runs at its own sample shape only" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a").exists()


def test_sd3_takes_sizes_its_position_embeddings_cover_and_pixart_none(tmp_path):
    from families import build_family

    folder, opts, guidance = build_family("sd3", tmp_path / "sd3")  # pos_embed_max_size 16 x patch 2: sides <= 32
    args = ["compile", "-m", f"diffusers:{folder}", *opts, "-s", "ddim", "--nfe", "2", "-w", str(guidance)]
    r = CliRunner().invoke(main, [*args, "--sizes", "8x8:40x40", "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "exceeds 32, the largest side" in r.output and not (tmp_path / "a").exists()
    r = CliRunner().invoke(main, [*args, "--max-batch", "2", "--sizes", "12x12,8x16", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    cases = {c["case"]: c["psnr_min"] for c in read_manifest(tmp_path / "a")["validation"]["cases"]}
    assert cases["batch 2, size 12x12"] >= 60 and cases["batch 2, size 8x16"] >= 60
    folder, opts, guidance = build_family("pixart", tmp_path / "pixart")  # its PatchEmbed checks one size
    args = ["compile", "-m", f"diffusers:{folder}", *opts, "-s", "ddim", "--nfe", "2", "--sizes", "16x16"]
    r = CliRunner().invoke(main, [*args, "-w", str(guidance), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "runs at its own sample shape only" in r.output, r.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_diffusers_unet_with_its_vae_takes_image_sizes(tmp_path_factory):
    """The tiny text-conditioned latent pipeline (8x8 latents, a VAE upsampling by 2): --sizes in image pixels."""
    from tiny_pipeline import build

    pipe = build(tmp_path_factory.mktemp("pipe") / "tiny")
    opts = ModelOptions(cond_set=str(pipe / "prompts.safetensors"), decoder="vae")
    out = tmp_path_factory.mktemp("sized-vae") / "a"
    with pytest.raises(BNSError, match="not a multiple of 4"):  # 2 (VAE) x 2 (the UNet's downsampling)
        compile_artifact(f"diffusers:{pipe}", "ddim", "onnx", out, options=opts, nfe=2, sizes="18x16", log=print)
    m = compile_artifact(
        f"diffusers:{pipe}", "ddim", "onnx", out, options=opts, nfe=2, guidance=3.0, max_batch=2,
        sizes="16x16:24x32", log=lambda m: None,
    )  # fmt: skip
    assert m["validation"]["passed"]
    assert m["outputs"][1]["shape"] == ["batch", 3, "image_height", "image_width"]
    assert m["sizes"]["min"] == [8, 8] and m["sizes"]["max"] == [12, 16] and m["sizes"]["scale"] == 2
    cases = {r["case"] for r in m["validation"]["cases"]}
    assert "batch 2, size 12x16: image" in cases and "batch 2, size 8x16: image" in cases
    from safetensors.numpy import load_file

    cond = load_file(str(pipe / "prompts.safetensors"))["cond"][:1]
    noise = np.random.default_rng(0).standard_normal((1, 4, 12, 10)).astype(np.float32)
    assert load(out)(noise, cond).shape == (1, 3, 24, 20)


def test_the_server_batches_each_size_apart(sized):
    from concurrent.futures import ThreadPoolExecutor

    from httpclient import serving

    cond = load_model("digits-text").cond_set[:1].numpy().astype(np.float32)
    sizes = [[8, 8], [12, 12], [16, 8], [12, 12]]
    noise = [np.random.default_rng(k).standard_normal((1, 1, *sizes[k])).astype(np.float32) for k in range(4)]
    with serving(sized) as srv:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda k: srv.infer(sized.name, {"noise": noise[k], "cond": cond}), range(4)))
        runner = load(sized)
        for k, (code, out) in enumerate(results):
            assert code == 200, out
            assert np.allclose(out["sample"], runner(noise[k], cond), atol=1e-5)
        bad = np.zeros((1, 1, 10, 10), np.float32)  # a size the artifact does not declare
        code, answer = srv.infer(sized.name, {"noise": bad, "cond": cond})
        assert code == 400 and "this artifact takes" in answer["error"] and "\n" not in answer["error"], answer
