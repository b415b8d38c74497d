"""The compiler: unrolled module, ONNX artifact, torch-free runtime, manifest, validator, bad input."""

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import onnx
import pytest
import torch
from cliresult import run as cli

from bns_export.backends.trt_support import check_tensorrt_support
from bns_export.compile.build import compile_artifact
from bns_export.compile.unroll import UnrolledSampler
from bns_export.errors import BNSError
from bns_export.fields import GuidedField, NetworkField
from bns_export.fields.schedules import DDPMDiscrete
from bns_export.loaders import ModelOptions, load_model
from bns_export.runtime import load
from bns_export.solvers import baseline, sample

COND = dict(
    model="netfactories:tiny_cond",
    options=ModelOptions(prediction="eps", schedule="ddpm", time_input="index", shape=(1, 4, 4), num_classes=3),
)


@pytest.fixture(scope="module")
def onnx_artifacts(tmp_path_factory):
    """Guided conditional TinyNet artifacts at 2 and 4 NFE (exported once for the module)."""
    root = tmp_path_factory.mktemp("art")
    out = {}
    for nfe in (2, 4):
        out[nfe] = root / f"cond{nfe}"
        compile_artifact(
            COND["model"],
            "dpm++2m",
            "onnx",
            out[nfe],
            options=COND["options"],
            guidance=2.0,
            nfe=nfe,
            max_batch=6,
            log=lambda m: None,
        )
    return out


def test_unrolled_module_equals_core_sampler_bit_for_bit():
    from netfactories import TinyNet

    field = GuidedField(
        NetworkField(
            TinyNet(num_classes=3),
            DDPMDiscrete.linear(1000),
            (1, 4, 4),
            prediction="eps",
            time_input="index",
            num_classes=3,
        ),
        2.5,
    )
    solver = baseline("dpm++2m", 6, field.schedule, field.t_lo, field.t_hi)
    noise, labels = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, -1, 1])
    with torch.no_grad():
        assert torch.equal(UnrolledSampler(field, solver)(noise, labels), sample(field, solver, noise, labels))
    digits = load_model("digits")
    s = baseline("ddim", 4, digits.schedule, digits.t_lo, digits.t_hi)
    noise = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(UnrolledSampler(digits, s)(noise), sample(digits, s, noise))


def test_onnx_graph_is_checked_dynamic_and_stores_weights_once(onnx_artifacts):
    stats = {}
    for nfe, folder in onnx_artifacts.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        model = onnx.load(str(folder / "model.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert manifest["graph"]["opset"] >= 17
        inp = {i.name: i for i in model.graph.input}
        assert set(inp) == {"noise", "labels"}
        assert inp["noise"].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["nfe"]) == nfe and json.loads(meta["guidance"]) == 2.0
        for key in ("solver_fingerprint", "model_fingerprint", "precision", "inputs", "outputs", "tool_version"):
            assert key in meta
        stats[nfe] = manifest["graph"]
    assert stats[2]["weight_initializers"] == stats[4]["weight_initializers"] > 0
    assert stats[2]["weight_bytes"] == stats[4]["weight_bytes"]
    assert stats[4]["nodes"] > stats[2]["nodes"]  # the loop is unrolled


def test_runtime_matches_eager_at_every_batch_and_from_threads(onnx_artifacts):
    folder = onnx_artifacts[4]
    runner = load(folder)
    field = load_model(COND["model"], COND["options"], 2.0)
    from bns_export.solvers import NSSolver

    solver = NSSolver.load(folder / "solver.json")
    for b in (1, 3, 6):
        noise = np.random.default_rng(b).standard_normal((b, 1, 4, 4)).astype(np.float32)
        labels = np.arange(b) % 3
        ref = sample(field, solver, torch.from_numpy(noise), torch.from_numpy(labels)).numpy()
        assert np.abs(runner(noise, labels) - ref).max() < 1e-4
    noise = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, -1, 0, 1])
    expected = runner(noise, labels)
    results = [None] * 8

    def work(i):
        results[i] = runner(noise, labels)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, expected) for r in results)


def test_runtime_checks_inputs(onnx_artifacts):
    runner = load(onnx_artifacts[2])
    noise = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(BNSError, match="labels .* are required"):
        runner(noise)
    with pytest.raises(BNSError, match="outside 1..6"):
        runner(np.zeros((7, 1, 4, 4), np.float32), np.zeros(7, np.int64))
    with pytest.raises(BNSError, match="expected \\(B, 1, 4, 4\\)"):
        runner(np.zeros((2, 1, 5, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(BNSError, match="labels must be in 0..2"):
        runner(noise, np.array([0, 3]))


def test_onnx_runtime_needs_no_torch(onnx_artifacts):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from bns_export.runtime import load
        r = load({str(onnx_artifacts[2])!r})
        out = r(np.zeros((2, 1, 4, 4), np.float32), np.array([0, 1]))
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print(out.shape, out.dtype)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "(2, 1, 4, 4) float32" in res.stdout


def test_tampered_truncated_and_incomplete_artifacts_are_refused(onnx_artifacts, tmp_path):
    import shutil

    for what, damage, message in [
        (
            "tampered",
            lambda d: (d / "solver.json").write_text((d / "solver.json").read_text().replace("1", "2", 1)),
            "was modified",
        ),
        ("truncated", lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:100]), "was modified"),
        ("missing", lambda d: (d / "model.onnx").unlink(), "is missing"),
        ("no manifest", lambda d: (d / "manifest.json").unlink(), "not a complete artifact"),
    ]:
        d = tmp_path / what.replace(" ", "_")
        shutil.copytree(onnx_artifacts[2], d)
        damage(d)
        with pytest.raises(BNSError, match=message):
            load(d)
        code, _, err = cli("validate", d)
        assert code == 2 and message in err and "Traceback" not in err


def test_validate_cli_reports_and_gates(onnx_artifacts):
    code, out, _ = cli("validate", onnx_artifacts[2], "--json", "-m", COND["model"])
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["psnr_min"] >= 60
    cases = {c["case"] for c in report["cases"]}
    assert {"batch 1", "batch 6", "batch 6, unconditional", "conformance vectors"} == cases
    assert report["tensorrt_support"]["ok"]
    assert all(abs(c["artifact_psnr_vs_gt"] - c["eager_psnr_vs_gt"]) < 0.01 for c in report["cases"][:2])
    code, out, _ = cli("validate", onnx_artifacts[2], "--min-psnr", 1000, "--trust-model-spec")
    assert code == 1 and "FAIL" in out


def test_max_batch_one_validates_each_case_once(tmp_path):
    art = tmp_path / "art"
    manifest = compile_artifact("analytic:gmm", "euler", "onnx", art, nfe=2, max_batch=1, log=lambda m: None)
    cases = [c["case"] for c in manifest["validation"]["cases"]]
    assert cases.count("batch 1") == 1 and len(cases) == len(set(cases)), cases


def test_failed_parity_or_interrupted_export_leaves_no_artifact(tmp_path, monkeypatch):
    out = tmp_path / "art"
    with pytest.raises(BNSError) as e:
        compile_artifact("analytic:gmm", "euler", "onnx", out, nfe=2, max_batch=2, min_psnr=1000, log=lambda m: None)
    assert e.value.exit_code == 1
    import bns_export.backends.onnx as ob

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ob, "export", boom)
    with pytest.raises(KeyboardInterrupt):
        compile_artifact("analytic:gmm", "euler", "onnx", out, nfe=2, max_batch=2, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_compile_bad_input(tmp_path):
    code, _, err = cli("compile", "-m", "analytic:gmm", "-s", "euler", "--format", "tflite", "-o", tmp_path / "a")
    assert code == 2 and "unknown format" in err
    code, _, err = cli("compile", "-m", "analytic:gmm", "-s", "euler", "--format", "tensorrt", "-o", tmp_path / "a")
    assert code == 3 and err.count("\n") == 1 and ("TensorRT" in err)
    code, _, err = cli("compile", "-m", "analytic:gmm", "-s", "euler", "-o", tmp_path / "no" / "a")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("compile", "-m", "analytic:gmm", "-s", "euler", "--fp16", "-o", tmp_path / "a")
    assert code == 2 and "needs a network" in err
    solver = tmp_path / "s.json"
    baseline("euler", 4, load_model("digits").schedule, 0.0, 0.999).save(solver)
    code, _, err = cli("compile", "-m", "analytic:gmm", "-s", solver, "-o", tmp_path / "a")
    assert code == 2 and "interval mismatch" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_fp16_artifact_keeps_fp32_io_and_passes_its_gate(tmp_path):
    out = tmp_path / "fp16"
    manifest = compile_artifact("digits", "ddim", "onnx", out, nfe=4, fp16=True, max_batch=4, log=lambda m: None)
    model = onnx.load(str(out / "model.onnx"))
    elem = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    assert model.graph.output[0].type.tensor_type.elem_type == elem
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    v = manifest["validation"]
    assert manifest["precision"] == "fp16" and v["gate_db"] == 35 and v["passed"]


def test_trt_support_check_reports_unsupported_ops():
    from onnx import TensorProto, helper

    node = helper.make_node("Unique", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None])],
    )
    report = check_tensorrt_support(helper.make_model(graph))
    assert report["unsupported_ops"] == ["Unique"] and report["unsupported_dtypes"] == ["DOUBLE"] and not report["ok"]


@pytest.mark.slow
def test_aoti_package_on_cpu(tmp_path):
    out = tmp_path / "aoti"
    manifest = compile_artifact(
        COND["model"],
        "euler",
        "aoti",
        out,
        options=COND["options"],
        guidance=1.5,
        nfe=3,
        max_batch=4,
        log=lambda m: None,
    )
    assert manifest["validation"]["passed"] and (out / "model.pt2").exists()
    with pytest.raises(BNSError, match="runs native code"):  # an AOTInductor package is code: never opened unasked
        load(out)
    runner = load(out, trust_engine_code=True)
    x = runner(np.zeros((3, 1, 4, 4), np.float32), np.array([0, 1, 2]))
    assert x.shape == (3, 1, 4, 4)


def _has_tensorrt() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.skipif(_has_tensorrt() is not None, reason=f"TensorRT engine tests: {_has_tensorrt()}")
def test_tensorrt_engine_parity(tmp_path):
    out = tmp_path / "trt"
    cache = tmp_path / "timing.cache"
    m = compile_artifact(
        "digits", "dpm++2m", "tensorrt", out, nfe=8, max_batch=8, timing_cache=str(cache), log=lambda m: None
    )
    assert m["validation"]["passed"] and cache.exists()
    m2 = compile_artifact(
        "digits",
        "dpm++2m",
        "tensorrt",
        tmp_path / "trt2",
        nfe=8,
        max_batch=8,
        timing_cache=str(cache),
        log=lambda m: None,
    )
    assert m2["tensorrt"]["timing_cache_reused"]
    x = load(out)(torch.randn(2, 1, 8, 8, device="cuda"))
    assert x.is_cuda and x.shape == (2, 1, 8, 8)


@pytest.mark.skipif(_has_tensorrt() is not None, reason=f"TensorRT engine tests: {_has_tensorrt()}")
def test_a_refittable_engine_takes_new_weights_and_tables_without_a_build(tmp_path):
    from bns_export.compile.refit import refit_artifact
    from bns_export.runtime.artifact import OpenPolicy

    quiet, trusted = (lambda m: None), OpenPolicy(trust_engine_code=True)
    plan = tmp_path / "trt"
    compile_artifact("digits", "dpm++2m", "tensorrt", plan, nfe=8, max_batch=8, refittable=True, log=quiet)
    m = refit_artifact(plan, "digits", tmp_path / "refit", device="cuda", policy=trusted, log=quiet)
    assert m["validation"]["passed"] and m["engine_refittable"]
    loop = tmp_path / "loop"
    compile_artifact("digits", ["dpm++2m", "euler"], "tensorrt-loop", loop, nfe=4, refittable=True, log=quiet)
    m = refit_artifact(loop, None, tmp_path / "loop2", solvers=("unipc", "ddim"), nfe=4, device="cuda",
                       policy=trusted, log=quiet)  # fmt: skip
    assert m["validation"]["passed"] and [t["name"][:5] for t in m["tables"]] == ["unipc", "ddim"]


def test_compile_api_takes_the_guidance_from_the_solver_file(tmp_path):
    """The policy is the API's, not the CLI's: a solver distilled at w = 2 compiles at w = 2 from Python too."""
    from bns_export.distill import DistillConfig, distill
    from bns_export.groundtruth import ground_truth

    field = load_model("analytic:gmm-cond", guidance=2.0)
    train, val = ground_truth(field, 16, 1, rtol=1e-4, atol=1e-4), ground_truth(field, 8, 2, rtol=1e-4, atol=1e-4)
    distill(field, train, val, DistillConfig(nfe=2, iterations=2, batch_size=8), out=tmp_path / "s.json")
    m = compile_artifact("analytic:gmm-cond", str(tmp_path / "s.json"), "onnx", tmp_path / "a", max_batch=2,
                         log=lambda m: None)  # fmt: skip
    assert m["guidance"] == 2.0 and m["validation"]["passed"]
