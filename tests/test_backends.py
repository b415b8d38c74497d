"""The backend table, ONNX Runtime provider options, runner outputs following inputs, the AOTI load probe."""

import importlib
import json

import numpy as np
import pytest
import torch

from bns_export.backends import BACKENDS, get_backend
from bns_export.backends.onnx import provider_list
from bns_export.compile.build import compile_artifact
from bns_export.errors import BNSError
from bns_export.runtime import load

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "gmm"
    compile_artifact("analytic:gmm-cond", "euler", "onnx", out, nfe=2, max_batch=4, guidance=2.0, log=lambda m: None)
    return out


def test_one_table_names_every_backend_and_each_module_pairs_exporter_and_runner():
    assert set(BACKENDS) == {"onnx", "onnx-loop", "tensorrt", "tensorrt-loop", "aoti"}
    for name, backend in BACKENDS.items():
        mod = importlib.import_module(f"bns_export.backends.{backend.module}")
        assert callable(mod.export) and callable(mod.open_runner) and callable(mod.check_available), name
    with pytest.raises(BNSError, match="unknown format 'tflite'"):
        get_backend("tflite")


def test_provider_options_derive_from_the_manifest_and_pass_through(artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    assert provider_list(ALL, "cpu", None, m) == [("CPUExecutionProvider", {})]
    assert provider_list(ALL, "cuda:1", None, m)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert provider_list(ALL, None, None, m)[0][0] == "CUDAExecutionProvider"
    assert provider_list(["CPUExecutionProvider"], None, None, m)[0][0] == "CPUExecutionProvider"
    (name, opts), *_ = provider_list(ALL, None, [("TensorrtExecutionProvider", {"trt_max_workspace_size": 1 << 30})], m)
    assert name == "TensorrtExecutionProvider" and opts["trt_max_workspace_size"] == 1 << 30
    assert opts["trt_profile_min_shapes"] == "noise:1x1x8x8,labels:1"
    assert opts["trt_profile_max_shapes"] == "noise:4x1x8x8,labels:4"
    assert opts["trt_profile_opt_shapes"] == "noise:2x1x8x8,labels:2"
    assert opts["trt_fp16_enable"] == "False" and opts["trt_engine_cache_enable"] == "True"
    assert str(artifact) not in opts["trt_engine_cache_path"]  # never inside the hashed folder
    with pytest.raises(BNSError, match="trt_fp16_enable"):
        provider_list(ALL, None, [("TensorrtExecutionProvider", {"trt_fp16_enable": True})], m)
    with pytest.raises(BNSError, match="lacks CUDAExecutionProvider") as e:
        provider_list(["CPUExecutionProvider"], "cuda", None, m)
    assert e.value.exit_code == 3


def test_onnx_runner_outputs_follow_inputs(artifact):
    runner = load(artifact, device="cpu")
    noise = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, -1])
    out_np = runner(noise, labels)
    out_t = runner(torch.from_numpy(noise), torch.from_numpy(labels))
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    assert out_t.device.type == "cpu" and np.array_equal(out_t.numpy(), out_np)
    if not torch.cuda.is_available():
        with pytest.raises(BNSError, match="cuda_graph needs the CUDA execution provider"):
            load(artifact, device="cpu", cuda_graph=True)


def test_aoti_probe_turns_a_crashing_loader_into_one_line(tmp_path, monkeypatch):
    import bns_export.backends.aoti as aoti

    monkeypatch.setattr(aoti, "PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(BNSError, match="crashes the process \\(SIGSEGV\\)"):
        aoti.probe_load(tmp_path / "model.pt2", "cuda:0")
    monkeypatch.setattr(aoti, "PROBE", "raise SystemExit('no such package')")
    with pytest.raises(BNSError, match="no such package"):
        aoti.probe_load(tmp_path / "model.pt2", "cuda:0")


def test_onnx_validation_falls_back_to_the_cpu_without_a_cuda_provider(artifact):
    import onnxruntime as ort

    from bns_export.compile.parity import open_artifact
    from bns_export.runtime import read_manifest

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    runner = open_artifact(artifact, read_manifest(artifact), "cuda", None)
    assert runner.device == "cpu"
    with pytest.raises(BNSError, match="lacks CUDAExecutionProvider"):
        open_artifact(artifact, read_manifest(artifact), "cuda", ["CUDAExecutionProvider"])


def test_validation_opens_a_lean_session_with_the_same_outputs(artifact):
    from bns_export.compile.parity import open_artifact
    from bns_export.runtime import read_manifest

    lean = open_artifact(artifact, read_manifest(artifact), "cpu", None)
    opts = lean.session.get_session_options()
    assert not opts.enable_cpu_mem_arena and not opts.enable_mem_pattern
    default = load(artifact, device="cpu")
    assert default.session.get_session_options().enable_cpu_mem_arena
    noise = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    labels = np.array([1, -1])
    assert np.array_equal(default(noise, labels), lean.run(noise, labels)["sample"])
    with pytest.raises(BNSError, match="aoti artifacts take no option low_memory"):
        get_backend("aoti").open(artifact, read_manifest(artifact), low_memory=True)
