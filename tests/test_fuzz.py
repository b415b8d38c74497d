"""Property-based fuzzing (hypothesis) of solver files, manifests, CLI values and runtime inputs, and
kills (SIGINT/SIGTERM/SIGKILL) at random points of compile and distill.

The property: one line and the documented exit code, or a correct result; never a traceback,
never a half-written file.  CI runs a few hundred examples; `BNS_FUZZ=long` runs the long profile.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from cliresult import one_line_error, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from readiness import wait_ready

from bns_export.cli import main
from bns_export.compile.build import compile_artifact
from bns_export.errors import BNSError
from bns_export.fields.analytic import gmm
from bns_export.runtime import load
from bns_export.runtime.artifact import read_manifest
from bns_export.solvers import NSSolver, baseline

LONG = os.environ.get("BNS_FUZZ") == "long"
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile("long" if LONG else "ci")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=12)
SOLVER = baseline("euler", 3, gmm().schedule, 0.0, 1.0).to_json()


def _one_line(e: BNSError) -> None:
    assert "\n" not in str(e) and e.exit_code in (1, 2, 3)


@given(key=st.sampled_from(sorted(SOLVER) + ["guidance", "nfe", "world_size"]), value=json_values)
def test_solver_files_load_or_fail_in_one_line(tmp_path_factory, key, value):
    d = dict(SOLVER, **{key: value})
    p = tmp_path_factory.mktemp("s") / "s.json"
    p.write_text(json.dumps(d))
    try:
        s = NSSolver.load(p)
    except BNSError as e:
        _one_line(e)
    else:
        assert np.isfinite(s.t).all() and np.isfinite(s.a).all() and np.isfinite(s.b).all()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("fz") / "gmm"
    compile_artifact("analytic:gmm-cond", "euler", "onnx", out, nfe=2, max_batch=4, guidance=2.0, log=lambda m: None)
    return out


MANIFEST_KEYS = ["format", "precision", "nfe", "max_batch", "opt_batch", "sample_shape", "num_classes", "guidance"]
MANIFEST_KEYS += ["model_file", "solver_file", "files", "schema_version", "inputs"]


@given(key=st.sampled_from(MANIFEST_KEYS), value=json_values)
def test_manifests_load_or_fail_in_one_line(artifact, tmp_path_factory, key, value):
    d = tmp_path_factory.mktemp("m") / "a"
    shutil.copytree(artifact, d)
    m = json.loads((d / "manifest.json").read_text())
    m[key] = value
    (d / "manifest.json").write_text(json.dumps(m))
    try:
        runner = load(d)
        out = runner(np.zeros((1, *runner.sample_shape), np.float32), np.array([0]) if runner.conditional else None)
    except BNSError as e:
        _one_line(e)
    else:
        assert np.isfinite(out).all()


NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.text(max_size=6),
)
FLAGS = ["-w", "--rtol", "--atol", "--nfe", "-n", "--seed"]


@given(flag=st.sampled_from(FLAGS), value=NUMBER_TEXT)
def test_cli_values_parse_or_fail_in_one_line(flag, value):
    # the solver does not exist, so a value that parses ends in that (one-line) error, after parsing
    one_line_error(*run("eval", "-m", "analytic:gmm", "-s", "no-such-solver", flag, value))


@given(
    batch=st.integers(min_value=-1, max_value=6),
    dtype=st.sampled_from(["float32", "float64", "float16", "int64", "bool", "complex64"]),
    poison=st.sampled_from([None, np.nan, np.inf]),
    labels=st.one_of(
        st.none(),
        st.lists(st.integers(min_value=-3, max_value=10), max_size=7),
        st.lists(st.floats(allow_nan=True), max_size=7),
        st.lists(st.booleans(), max_size=7),
    ),
)
def test_runtime_inputs_run_or_fail_in_one_line(artifact, batch, dtype, poison, labels):
    runner = load(artifact)
    noise = np.zeros((max(batch, 0), 1, 8, 8)).astype(dtype)
    if poison is not None and noise.size and noise.dtype.kind in "fc":
        noise.flat[0] = poison
    try:
        out = runner(noise, labels)
    except BNSError as e:
        _one_line(e)
    else:
        assert out.shape == noise.shape and out.dtype == np.float32 and np.isfinite(out).all()


# --- kills -------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "bns_export.cli"]


def _spawn(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _kill_after(proc, sig, delay):
    """`sig` to `proc` `delay` seconds after it can take one (its handlers installed: a loaded machine only moves
    where in the run the signal lands, never whether it is handled)."""
    wait_ready(proc)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


KILLS = [(signal.SIGINT, 2.5), (signal.SIGTERM, 3.5), (signal.SIGKILL, 3.0)]
if LONG:
    KILLS += [
        (random.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL]), random.uniform(0.5, 8)) for _ in range(12)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig,delay", KILLS, ids=[f"{s.name}@{d:.1f}s" for s, d in KILLS])
def test_killed_compile_leaves_nothing_that_looks_complete(tmp_path, sig, delay):
    out = tmp_path / "art"
    proc = _spawn(["compile", "-m", "digits", "-s", "dpm++2m", "--nfe", "4", "--max-batch", "4", "-o", str(out)])
    code, err = _kill_after(proc, sig, delay)
    assert "Traceback" not in err
    if out.exists():  # finished before the signal: then it is complete
        read_manifest(out)
    partial = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    if sig != signal.SIGKILL:
        # 128 + sig: cleaned up and exited (its handlers were in place before the signal was sent)
        assert code in (0, 128 + sig) and partial == [], (code, partial, err[-2000:])
    # the next compile (a later process) into the same folder removes what a killed one left behind
    nxt = _spawn(
        ["compile", "-m", "analytic:gmm", "-s", "euler", "--nfe", "2", "--max-batch", "2", "-o", str(tmp_path / "next")]
    )
    assert nxt.wait(timeout=300) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "art") == ["next"]


DISTILL = ["distill", "-m", "digits", "--nfe", "4", "--iterations", "60", "--val-every", "5"]
DISTILL += ["--train-pairs", "64", "--val-pairs", "64", "--batch-size", "32", "--device", "cpu"]
DISTILL += ["--rtol", "1e-3", "--atol", "1e-3"]  # a cheap ground truth: what is tested is the resume, not its PSNR


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run of DISTILL (its GT cache shared by the interrupted runs): the cache and the file."""
    root = tmp_path_factory.mktemp("distill-ref")
    cache = {"BNS_EXPORT_CACHE": str(root / "cache")}
    assert _spawn([*DISTILL, "-o", str(root / "ref.json")], cache).wait(timeout=600) == 0
    return cache, root / "ref.json"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_distill_resumes_bit_identically(tmp_path, sig, uninterrupted):
    cache, ref = uninterrupted
    proc = _spawn([*DISTILL, "-o", str(tmp_path / "s.json")], cache)
    # kill once the first checkpoint is there (a fixed delay missed it on a loaded machine)
    deadline = time.time() + 300
    while not (tmp_path / "s.json.ckpt.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    code, err = _kill_after(proc, sig, 0.3)
    assert "Traceback" not in err
    if code == 0:
        pytest.skip("distillation finished before the signal on this machine")
    assert not (tmp_path / "s.json").exists() and (tmp_path / "s.json.ckpt.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert _spawn([*DISTILL, "-o", str(tmp_path / "s.json")], cache).wait(timeout=600) == 0
    a, b = (json.loads(p.read_text()) for p in (ref, tmp_path / "s.json"))
    assert a["times"] == b["times"] and a["a"] == b["a"] and a["b"] == b["b"] and a["fingerprint"] == b["fingerprint"]


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "art"
        compile_artifact("analytic:gmm", "euler", "onnx", out, nfe=2, max_batch=2, log=lambda m: None)
        r = CliRunner().invoke(main, ["sample", "-m", "analytic:gmm", "-s", "euler", "-o", str(tmp_path / "s.png")])
        assert r.exit_code == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    for p in [*out.iterdir(), tmp_path / "s.png", out / "solver.json"]:
        assert p.stat().st_mode & 0o777 == 0o644, p
