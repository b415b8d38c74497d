"""The CUDA-graph runner for the torch backends: refused in one line on the CPU; on a GPU, replay equals
the eager sampler and validation passes (those tests skip here without CUDA, with the reason)."""

import pytest
import torch
from click.testing import CliRunner
from cliresult import one_line_error, run

from bns_export.backends import get_backend
from bns_export.backends.cuda_graph import CudaGraphs
from bns_export.cli import main
from bns_export.compile.build import compile_artifact
from bns_export.compile.parity import EagerRunner
from bns_export.errors import BNSError
from bns_export.runtime import read_manifest

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cg") / "gmm"
    compile_artifact("analytic:gmm-cond", "euler", "onnx", out, nfe=2, max_batch=2, guidance=2.0, log=lambda m: None)
    return out


def test_cuda_graphs_are_refused_on_the_cpu_in_one_line(artifact):
    one_line_error(*run("validate", artifact, "--device", "cpu", "--cuda-graph"), needle="needs a CUDA device")
    manifest = read_manifest(artifact)
    aoti_manifest = {**manifest, "format": "aoti", "model_file": "model.pt2", "device": "cpu"}
    with pytest.raises(BNSError, match="needs a CUDA device"):
        get_backend("aoti").open(artifact, aoti_manifest, device="cpu", cuda_graph=True)
    with pytest.raises(BNSError, match="needs a CUDA device"):
        EagerRunner(artifact, manifest, "cpu", cuda_graph=True)
    with pytest.raises(BNSError, match="needs a CUDA device"):
        CudaGraphs(lambda x: x, "cpu")
    with pytest.raises(BNSError, match="take no option"):
        get_backend("tensorrt").open(artifact, manifest, device="cpu", cuda_graph=True)


@CUDA
def test_replay_equals_the_eager_sampler_per_batch_size(artifact):
    manifest = read_manifest(artifact)
    eager = EagerRunner(artifact, manifest, "cuda")
    graphed = EagerRunner(artifact, manifest, "cuda", cuda_graph=True)
    for batch in (1, 2, 1):
        noise = torch.randn(batch, 1, 8, 8, device="cuda")
        labels = torch.arange(batch, device="cuda") % 8
        assert torch.allclose(graphed(noise, labels), eager(noise, labels), atol=1e-5)
    assert sorted(graphed._graphed.graphs) == [1, 2]


@CUDA
def test_aoti_cuda_graph_artifact_validates(tmp_path):
    out = tmp_path / "aoti"
    compile_artifact(
        "analytic:gmm-cond", "euler", "aoti", out, nfe=2, max_batch=2, guidance=2.0, device="cuda", log=lambda m: None
    )
    r = CliRunner().invoke(main, ["validate", str(out), "--device", "cuda", "--cuda-graph", "--json"])
    assert r.exit_code in (0, 2), r.stderr  # 2: the torch 2.11 AOTInductor CUDA loader crash, caught in one line


def test_gpu_check_plans_its_lanes_from_the_budget(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tools = Path(__file__).resolve().parent.parent / "tools"
    sys.path.insert(0, str(tools))
    from gpu_check import LANE_SECONDS, plan_lanes

    kept, dropped = plan_lanes(list(LANE_SECONDS), 300)
    assert kept == [k for k, v in LANE_SECONDS.items() if v + 30 <= 300] and len(dropped) == 4 - len(kept)
    assert plan_lanes(list(LANE_SECONDS), 540)[0] == list(LANE_SECONDS)
    # a budget no lane fits: nothing runs, and the report says what was dropped
    r = subprocess.run(
        [
            sys.executable,
            str(tools / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--budget",
            "60",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "Dropped to fit the budget: tests" in summary and "psnr (needs about" in summary
