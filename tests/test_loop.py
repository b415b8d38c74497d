"""The loop format (onnx-loop): one graph holds the network once inside an ONNX Loop and serves several solver
tables and NFEs, chosen per sample by its `table` input; every table matches its own eager sampler, a batch may
mix them, and an index the graph does not hold is refused by the runtime and by the graph itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from cliresult import one_line_error, run

from bns_export.compile.build import compile_artifact
from bns_export.errors import BNSError
from bns_export.loaders import ModelOptions, ModelSpec, load_model
from bns_export.runtime import load
from bns_export.solvers import parse_spec, resolve_solver, sample

GUIDANCE = 2.0


@pytest.fixture(scope="module")
def tables():
    field = load_model(ModelSpec("digits-text", ModelOptions()), guidance=GUIDANCE)
    return field, [
        resolve_solver(parse_spec("dpm++2m"), field, 4),
        resolve_solver(parse_spec("euler:uniform"), field, 2),
    ]


@pytest.fixture(scope="module")
def art(tmp_path_factory, tables):
    out = tmp_path_factory.mktemp("loop") / "text"
    _, solvers = tables
    compile_artifact(
        "digits-text", solvers, "onnx-loop", out, guidance=GUIDANCE, max_batch=3, max_nfe=5, log=lambda m: None
    )
    return out


def test_each_table_and_a_mixed_batch_match_their_eager_samplers(art, tables):
    field, solvers = tables
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["format"] == "onnx-loop" and manifest["nfe"] == 5
    assert [(t["file"], t["nfe"]) for t in manifest["tables"]] == [("solver.json", 4), ("solver-1.json", 2)]
    assert manifest["validation"]["passed"]
    cases = {c["case"] for c in manifest["validation"]["cases"]}
    assert {"batch 3, table 1 euler:uniform (NFE 2)", "batch 3, tables mixed"} <= cases
    runner = load(art)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn((3, *field.sample_shape), generator=g)
    cond = field.cond_set[torch.tensor([0, 5, 9])].float()
    cond[-1] = field.null_cond
    for table in ([0, 0, 0], [1, 1, 1], [1, 0, 1]):
        want = torch.stack(
            [sample(field, solvers[k], noise[i : i + 1], cond[i : i + 1])[0] for i, k in enumerate(table)]
        )
        got = runner(noise.numpy(), cond.numpy(), table=np.array(table))
        assert np.abs(got - want.numpy()).max() < 1e-4, table
    assert np.array_equal(runner(noise, cond).numpy(), runner(noise, cond, table=0).numpy())  # table 0 unless told


def test_the_weights_are_stored_once_inside_the_loop(art):
    graph = json.loads((art / "manifest.json").read_text())["graph"]
    assert graph["initializer_ratio"] < 1.1 and graph["weight_bytes"] <= graph["module_bytes"]
    model = onnx.load(str(art / "model.onnx"))
    loops = [n for n in model.graph.node if n.op_type == "Loop"]
    assert len(loops) == 1 and not any(n.op_type == "Conv" for n in model.graph.node)  # the network is in the body
    body = loops[0].attribute[0].g
    assert sum(n.op_type == "Conv" for n in body.node) > 0
    held = {i.name for i in body.initializer}  # the weights live in the body, where ONNX Runtime prepacks them
    assert any(name.startswith("field.") for name in held) and not any(name.startswith("tables.") for name in held)
    trt = json.loads((art / "manifest.json").read_text())["validation"]["tensorrt_support"]
    assert {"Loop", "Conv"} <= set(trt["ops"])  # the parser check walks the loop's body


@pytest.mark.parametrize(
    "table, needle",
    [(2, "table must be in 0..1"), (-1, "table must be in 0..1"), ([0.5, 0, 0], "must be integers"), ([0, 1], "shape")],
)
def test_a_table_the_artifact_lacks_is_one_line(art, table, needle):
    runner = load(art)
    noise = np.zeros((3, *runner.sample_shape), np.float32)
    cond = np.zeros((3, *runner.cond_shape), np.float32)
    with pytest.raises(BNSError, match=needle):
        runner(noise, cond, table=table)


def test_the_graph_itself_refuses_a_table_it_lacks(art):
    """Where no bns-export runtime checks the inputs (Triton's ONNX Runtime backend)."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    runner = load(art)
    feed = {
        "noise": np.zeros((2, *runner.sample_shape), np.float32),
        "cond": np.zeros((2, *runner.cond_shape), np.float32),
    }
    assert session.run(None, {**feed, "table": np.array([0, 1])})[0].shape[0] == 2
    for bad in ([0, -1], [2, 0]):
        with pytest.raises(Exception, match="table must index one of the artifact's tables"):
            session.run(None, {**feed, "table": np.array(bad)})


def test_a_triton_repository_serves_every_table_from_one_model(art, tmp_path):
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (test-only) is not installed")
    text_format = pytest.importorskip("google.protobuf.text_format")
    code, out, err = run("triton", art, "--repo", tmp_path / "repo", "--name", "text", "--cpu")
    assert code == 0, err
    cfg = text_format.Parse((tmp_path / "repo" / "text" / "config.pbtxt").read_text(), mc.ModelConfig())
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs) == ["noise", "cond", "table"] and inputs["table"].data_type == mc.TYPE_INT64
    assert list(inputs["table"].dims) == [1] and list(inputs["table"].reshape.shape) == []


def test_several_tables_need_the_loop_format(tmp_path):
    one_line_error(*run("compile", "-m", "digits", "-s", "euler", "-s", "heun", "-o", tmp_path / "a"), "onnx-loop")
    args = ("compile", "-m", "digits", "-s", "euler", "-s", "heun", "--nfe", "4")
    one_line_error(*run(*args, "--format", "onnx-loop", "--max-nfe", "3", "-o", tmp_path / "b"), "below the largest")
    one_line_error(*run("compile", "-m", "digits", "-s", "euler", "--max-nfe", "3", "-o", tmp_path / "c"), "onnx-loop")
    trt = run(*args, "--format", "tensorrt-loop", "-o", tmp_path / "d")  # an ILoop engine, where TensorRT is
    one_line_error(*trt, "TensorRT", expected_code=3)  # installed (never here): exit 3, nothing written
    assert not any(tmp_path.iterdir())


def test_an_unrolled_artifact_takes_no_table(tmp_path):
    out = tmp_path / "gmm"
    compile_artifact("analytic:gmm", "euler", "onnx", out, nfe=2, max_batch=2, log=lambda m: None)
    with pytest.raises(BNSError, match="bakes one solver table"):
        load(out)(np.zeros((1, *load(out).sample_shape), np.float32), table=0)


def test_the_server_takes_the_table_input(art):
    pytest.importorskip("uvicorn", reason="uvicorn (the serve extra) is not installed")
    from httpclient import serving

    runner = load(art)
    noise = np.random.default_rng(0).standard_normal((1, *runner.sample_shape)).astype(np.float32)
    cond = np.random.default_rng(1).standard_normal((1, *runner.cond_shape)).astype(np.float32)
    with serving(art) as srv:
        code, answer = srv.infer("text", {"noise": noise, "cond": cond, "table": np.array([1])}, binary=False)
        assert code == 200 and np.allclose(answer["sample"], runner(noise, cond, table=1), atol=1e-5)
        code, answer = srv.infer("text", {"noise": noise, "cond": cond, "table": np.array([7])})
        assert code == 400 and "table must be in 0..1" in answer["error"]


def test_a_fine_tune_refits_into_the_loop_graph_for_every_table(art, tables, tmp_path, monkeypatch):
    """refit puts new weights into the one graph; each table then samples what its eager sampler of the new
    weights samples."""
    import shutil

    from safetensors.torch import load_file, save_file

    from bns_export.loaders.shipped import models_dir

    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(models_dir() / "unet.py", root / "unet.py")
    shutil.copytree(models_dir() / "digits-text", root / "digits-text")
    tuned = shutil.copytree(models_dir() / "digits-text", root / "digits-text-ft")
    weights = load_file(str(tuned / "weights.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file(
        {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in weights.items()},
        str(tuned / "weights.safetensors"),
    )
    monkeypatch.setenv("BNS_EXPORT_MODELS", str(root))
    code, _, err = run("refit", art, "-m", "digits-text-ft", "-o", tmp_path / "refit")
    assert code == 0, err
    manifest = json.loads((tmp_path / "refit" / "manifest.json").read_text())
    assert manifest["validation"]["passed"] and [t["nfe"] for t in manifest["tables"]] == [4, 2]
    field = load_model(ModelSpec("digits-text-ft", ModelOptions()), guidance=GUIDANCE)
    noise = torch.randn((2, *field.sample_shape), generator=g)
    cond = field.cond_set[:2].float()
    refitted = load(tmp_path / "refit")
    for k, solver in enumerate(tables[1]):
        want = sample(field, solver, noise, cond).numpy()
        assert np.abs(refitted(noise.numpy(), cond.numpy(), table=k) - want).max() < 1e-4
    assert np.abs(refitted(noise.numpy(), cond.numpy()) - load(art)(noise.numpy(), cond.numpy())).max() > 1e-3


def test_new_tables_replace_the_old_without_another_export(art, tables, tmp_path):
    """refit --solver: other tables (here one, of another NFE) in the same graph; the guard counts them anew."""
    field, _ = tables
    out = tmp_path / "retabled"
    code, stdout, err = run("refit", art, "-s", "heun:uniform", "--nfe", 4, "-o", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(t["name"], t["nfe"]) for t in manifest["tables"]] == [("heun:uniform", 4)] and manifest["nfe"] == 5
    assert manifest["validation"]["passed"] and "refit_from" not in manifest
    runner = load(out)
    noise = torch.randn((2, *field.sample_shape), generator=torch.Generator().manual_seed(5))
    cond = field.cond_set[:2].float()
    want = sample(field, resolve_solver(parse_spec("heun:uniform"), field, 4), noise, cond).numpy()
    assert np.abs(runner(noise.numpy(), cond.numpy()) - want).max() < 1e-4
    with pytest.raises(BNSError, match="table must be in 0..0"):
        runner(noise.numpy(), cond.numpy(), table=1)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="table must index one of the artifact's tables"):
        session.run(None, {"noise": noise.numpy(), "cond": cond.numpy(), "table": np.array([0, 1])})
    one_line_error(*run("refit", art, "-s", "euler", "--nfe", 6, "-o", tmp_path / "x"), "above this graph's maximum 5")
    assert not (tmp_path / "x").exists()


def test_new_tables_need_a_loop_artifact(tmp_path):
    out = tmp_path / "gmm"
    compile_artifact("analytic:gmm", "euler", "onnx", out, nfe=2, max_batch=2, log=lambda m: None)
    one_line_error(*run("refit", out, "-s", "heun", "-o", tmp_path / "x"), "loop graph")
    one_line_error(*run("refit", out, "-o", tmp_path / "y"), "needs new weights")
