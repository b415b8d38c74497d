"""Triton model repositories: every generated config parses with Triton's own schema and matches the manifest."""

import json

import pytest
from click.testing import CliRunner

from bns_export.cli import main
from bns_export.compile.build import compile_artifact

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (test-only) is not installed")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tri")
    out = {}
    for nfe in (2, 4):
        out[nfe] = root / f"gmm-{nfe}"
        compile_artifact(
            "analytic:gmm-cond", "dpm++2m", "onnx", out[nfe], nfe=nfe, max_batch=8, guidance=2.0, log=lambda m: None
        )
    return out


def _parse(path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.parametrize("gpu", [False, True])
def test_repository_config_matches_the_manifest(artifacts, tmp_path, gpu):
    repo = tmp_path / "repo"
    r = CliRunner().invoke(
        main,
        [
            "triton",
            str(artifacts[2]),
            str(artifacts[4]),
            "--repo",
            str(repo),
            "--name",
            "gmm",
            "--gpu" if gpu else "--cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((artifacts[2] / "manifest.json").read_text())
    cfg = _parse(repo / "gmm" / "config.pbtxt")
    assert cfg.name == "gmm" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == m["max_batch"]
    inputs = {i.name: i for i in cfg.input}
    assert list(inputs["noise"].dims) == m["sample_shape"] and inputs["noise"].data_type == mc.TYPE_FP32
    assert list(inputs["labels"].dims) == [1] and list(inputs["labels"].reshape.shape) == []
    assert inputs["labels"].data_type == mc.TYPE_INT64
    assert [o.name for o in cfg.output] == ["sample"] and list(cfg.output[0].dims) == m["sample_shape"]
    assert max(cfg.dynamic_batching.preferred_batch_size) == m["max_batch"]
    assert cfg.instance_group[0].kind == (mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU)
    assert cfg.model_warmup[0].batch_size == 1 and set(cfg.model_warmup[0].inputs) == {"noise", "labels"}
    assert cfg.version_policy.HasField("all")
    accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    if gpu:
        params = dict(accel[0].parameters)
        assert accel[0].name == "tensorrt" and params["precision_mode"] == "FP32"
        assert params["trt_profile_max_shapes"] == "noise:8x1x8x8,labels:8"
        assert params["trt_engine_cache_enable"] == "1"
    else:
        assert len(accel) == 0
    for version, nfe in ((1, 2), (2, 4)):
        assert (repo / "gmm" / str(version) / "model.onnx").read_bytes() == (artifacts[nfe] / "model.onnx").read_bytes()
    readme = (repo / "gmm" / "README.md").read_text()
    assert "| 1 | 2 |" in readme and "| 2 | 4 |" in readme


def test_repository_refuses_mismatched_versions_and_aoti(artifacts, tmp_path):
    other = tmp_path / "other"
    compile_artifact("analytic:gmm", "euler", "onnx", other, nfe=2, max_batch=8, log=lambda m: None)
    r = CliRunner().invoke(main, ["triton", str(artifacts[2]), str(other), "--repo", str(tmp_path / "repo")])
    assert r.exit_code == 2 and "versions of one model must agree" in r.stderr
    assert not (tmp_path / "repo" / "gmm-2").exists()


def test_preferred_batch_sizes_leave_out_1_so_the_queue_delay_batches():
    from bns_export.runtime.triton import preferred_batches

    assert preferred_batches(1) == []
    assert preferred_batches(8) == [2, 4, 8]
    assert preferred_batches(64) == [8, 16, 32, 64]
    assert preferred_batches(12) == [2, 4, 8, 12]


def test_engine_cache_lives_in_the_model_folder_and_profiles_can_be_left_out(artifacts, tmp_path):
    repo = tmp_path / "repo"
    r = CliRunner().invoke(main, ["triton", str(artifacts[2]), "--repo", str(repo), "--name", "gmm", "--gpu"])
    assert r.exit_code == 0, r.output
    cfg = _parse(repo / "gmm" / "config.pbtxt")
    from bns_export.runtime.triton import QUEUE_PER_SLOT, dynamic_batching

    # the config carries the writer's batching block whole (settings, nothing timed): no preferred size of 1 to
    # skip the delay, and a bounded queue that rejects a flood instead of holding it
    written = text_format.Parse(dynamic_batching(cfg.max_batch_size), mc.ModelConfig()).dynamic_batching
    assert cfg.dynamic_batching == written and 1 not in written.preferred_batch_size
    policy = written.default_queue_policy
    assert policy.max_queue_size == QUEUE_PER_SLOT * cfg.max_batch_size and policy.timeout_action == policy.REJECT
    params = dict(cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    assert params["trt_engine_cache_path"] == "/models/gmm/trt_engines" and (repo / "gmm" / "trt_engines").is_dir()
    assert "trt_profile_min_shapes" in params
    # an engine Triton built survives --replace; another mount point and no explicit profiles
    (repo / "gmm" / "trt_engines" / "engine.bin").write_bytes(b"built by ORT")
    args = ["triton", str(artifacts[4]), "--repo", str(repo), "--name", "gmm", "--gpu", "--replace"]
    r = CliRunner().invoke(main, [*args, "--container-repo", "/srv/models/", "--no-trt-profiles"])
    assert r.exit_code == 0, r.output
    assert (repo / "gmm" / "trt_engines" / "engine.bin").read_bytes() == b"built by ORT"
    params = dict(
        _parse(repo / "gmm" / "config.pbtxt")
        .optimization.execution_accelerators.gpu_execution_accelerator[0]
        .parameters
    )
    assert params["trt_engine_cache_path"] == "/srv/models/gmm/trt_engines"
    assert not any(k.startswith("trt_profile_") for k in params) and params["trt_engine_cache_enable"] == "1"
    # a version added later finds the engine folder; a relative or quoted mount point is one line
    r = CliRunner().invoke(main, ["triton", str(artifacts[2]), "--repo", str(repo), "--name", "gmm", "--gpu"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (repo / "gmm").iterdir() if p.is_dir()) == ["1", "2", "trt_engines"]
    for bad in ("models", '/m"x'):
        r = CliRunner().invoke(
            main, ["triton", str(artifacts[2]), "--repo", str(tmp_path / "r2"), "--container-repo", bad]
        )
        assert r.exit_code == 2 and "--container-repo" in r.stderr and not (tmp_path / "r2").exists()
