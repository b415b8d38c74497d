"""Data-parallel distillation and evaluation under torchrun (2 gloo processes on the CPU)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ARGS = ["-m", "analytic:gmm", "--nfe", "4", "--iterations", "30", "--batch-size", "32"]
ARGS += ["--train-pairs", "96", "--val-pairs", "80", "--val-every", "10", "--device", "cpu", "--json"]
EVAL_ARGS = ["-m", "analytic:gmm", "-s", "rk4", "-n", "40", "--device", "cpu", "--json"]


def _cli() -> str:
    exe = shutil.which("bns-export", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the bns-export console script is not installed beside this python")
    return exe


def _run(nproc: int, out: Path, cache: Path, *args: str) -> dict:
    env = {**os.environ, "BNS_EXPORT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [_cli(), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", _cli()]
        cmd += list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, res.stdout  # only rank 0 prints
    return json.loads(lines[0])


@pytest.mark.slow
def test_two_gloo_processes_distill_the_one_process_solver(tmp_path):
    solvers = {}
    for k in (1, 2):
        out = tmp_path / f"bns{k}.json"
        summary = _run(k, out, tmp_path / f"cache{k}", "distill", *ARGS, "-o", str(out))
        assert summary["world_size"] == k
        solvers[k] = json.loads(out.read_text())
        # the GT cache is the same whatever the number of processes
        assert sorted(p.name for p in (tmp_path / f"cache{k}" / "gt").iterdir()) == sorted(
            p.name for p in (tmp_path / "cache1" / "gt").iterdir()
        )
        assert not list(tmp_path.glob("*.ckpt.safetensors"))
    one, two = solvers[1], solvers[2]
    diff = max(np.abs(np.subtract(one[k], two[k])).max() for k in ("times", "a"))
    print(f"max |1-process - 2-process| over times and a: {diff:.3g}")
    assert two["world_size"] == 2 and one["world_size"] == 1
    for key in ("times", "a"):
        assert np.allclose(one[key], two[key], rtol=0, atol=1e-6), key
    for r1, r2 in zip(one["b"], two["b"]):
        assert np.allclose(r1, r2, rtol=0, atol=1e-6)
    assert abs(one["val_psnr"] - two["val_psnr"]) < 1e-6 and one["best_iteration"] == two["best_iteration"]
    # eval shards too, and reports the same numbers
    ev = {k: _run(k, None, tmp_path / f"cache{k}", "eval", *EVAL_ARGS) for k in (1, 2)}
    assert abs(ev[1]["psnr_mean"] - ev[2]["psnr_mean"]) < 1e-9 and ev[2]["world_size"] == 2


def test_more_ranks_than_gpus_is_one_line(monkeypatch):
    import torch

    from bns_export.errors import BNSError
    from bns_export.parallel import init_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BNSError, match="more processes per node than this machine has CUDA devices"):
        init_world("cuda")
