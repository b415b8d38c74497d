"""A catalogue of distinct bad inputs across the CLI, solver files, manifests and the runtime API.

Each must be answered with one line naming the problem and the documented exit code, never a
traceback, and must leave nothing written.  `pytest tests/test_bad_inputs.py -q` prints the count.
"""

import json
import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch
from cliresult import one_line_error, run

from bns_export.compile.build import compile_artifact
from bns_export.errors import BNSError
from bns_export.fields.analytic import gmm
from bns_export.runtime import load
from bns_export.solvers import NSSolver, baseline

BAD_VALUES = ["nan", "inf", "-inf", "-1", "abc", "1e999", "", "2.5e", "0x10"]

# command prefix (that fails only after every option is parsed) -> its number options
FLAGS = {
    ("eval", "-m", "analytic:gmm", "-s", "no-such-solver"): ["-w", "--rtol", "--atol", "--nfe", "-n", "--seed"],
    ("distill", "-m", "analytic:gmm", "-o", "/no/such/dir/s.json", "--nfe", "4"): [
        "--iterations",
        "--batch-size",
        "--lr",
        "--train-pairs",
        "--val-pairs",
        "--val-every",
        "--precondition",
        "-w",
    ],
    ("sample", "-m", "analytic:gmm", "-s", "no-such-solver", "-o", "x.png"): ["--nfe", "-n", "--seed", "--label"],
    ("compile", "-m", "analytic:gmm", "-s", "no-such-solver", "-o", "/no/such/dir/a"): [
        "--max-batch",
        "--opt-batch",
        "--workspace-mb",
        "--min-psnr",
        "--nfe",
    ],
    ("validate", "/no/such/artifact"): ["--min-psnr"],
    ("demo", "-o", "/no/such/dir/demo"): ["--nfe", "--iterations", "-w"],
}
CLI_CASES = [(prefix, flag, v) for prefix, flags in FLAGS.items() for flag in flags for v in BAD_VALUES]
# bad values that are not bad numbers
CLI_CASES += [
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--device", "tpu"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--device", "cuda:x"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--network-dtype", "fp8"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--shape", "0,4"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--num-classes", "0"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--train-steps", "1"),
    (("eval", "-m", "analytic:gmm", "-s", "euler:cosine"), "--nfe", "4"),
    (("eval", "-m", "analytic:gmm", "-s", "."), "--nfe", "4"),
    (("eval", "-m", ":", "-s", "euler"), "--nfe", "4"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--bogus", "1"),
    (("compile", "-m", "analytic:gmm", "-s", "euler", "-o", "x"), "--format", "tflite"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--cond-set", "/no/such/file"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--prediction", "bogus"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--schedule", "nope"),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--shape", "1,2"),
    (("eval", "-m", "analytic:gmm", "--nfe", "2"), "-s", "/dev/zero"),
    (("triton", "/no/such/artifact", "--repo", "r"), "--name", 'a" }'),
    (("eval", "-m", "analytic:gmm", "-s", "euler"), "--shape", "1,100000,100000"),
    (("sample", "-m", "analytic:gmm", "-s", "euler", "-o", "x.png"), "--decoder", ""),
    (("validate", "/no/such/artifact"), "--decoder", ""),
    (("distill", "-m", "analytic:gmm", "--nfe", "4"), "-o", "solver.png"),
    (("compile", "-m", "analytic:gmm", "-s", "euler", "--nfe", "2", "-o", "x"), "--timing-cache", "c.bin"),
    (("validate", "/no/such/artifact"), "--public-key", "/no/such/key.pem"),
]


@pytest.mark.parametrize("prefix,flag,value", CLI_CASES, ids=[f"{p[0]} {f}={v!r}" for p, f, v in CLI_CASES])
def test_cli_values(prefix, flag, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(*prefix, flag, value)
    one_line_error(code, out, err)
    assert list(tmp_path.iterdir()) == []


def _solver_dict(**change):
    d = baseline("euler", 3, gmm().schedule, 0.0, 1.0).to_json()
    d.update(change)
    return d


SOLVER_TEXTS = {
    "not json": "{",
    "empty": "",
    "a list": "[1, 2]",
    "not utf-8": b"\xff\xfe\x00".decode("latin-1"),
    "nested 200k deep": "[" * 200_000 + "]" * 200_000,
    "NaN literal": json.dumps(_solver_dict(a=[1.0, float("nan"), 1.0])),
    "Infinity literal": json.dumps(_solver_dict(t_end=float("inf"))),
    "nfe 8.7": json.dumps(_solver_dict(nfe=8.7)),
    "nfe 1e400": json.dumps(_solver_dict()).replace('"nfe": 3', '"nfe": 1e400'),
    "nfe string": json.dumps(_solver_dict(nfe="3")),
    "nfe bool": json.dumps(_solver_dict(nfe=True)),
    "nfe 0": json.dumps(_solver_dict(nfe=0)),
    "nfe huge": json.dumps(_solver_dict(nfe=10**9)),
    "times not a list": json.dumps(_solver_dict(times="0,0.3,0.6")),
    "times with null": json.dumps(_solver_dict(times=[0.0, None, 0.6])),
    "times decreasing": json.dumps(_solver_dict(times=[0.0, 0.6, 0.3])),
    "t_end before start": json.dumps(_solver_dict(t_end=-1.0)),
    "b row too long": json.dumps(_solver_dict(b=[[1.0, 2.0], [0.3, 0.3], [0.3, 0.3, 0.3]])),
    "b not a list": json.dumps(_solver_dict(b=3)),
    "missing a": json.dumps({k: v for k, v in _solver_dict().items() if k != "a"}),
    "guidance abc": json.dumps(_solver_dict(guidance="abc")),
    "guidance nan-ish": json.dumps(_solver_dict(guidance=1e400)).replace("Infinity", "1e400"),
    "guidance negative": json.dumps(_solver_dict(guidance=-2.0)),
    "stale fingerprint": json.dumps(_solver_dict(fingerprint="0" * 16)),
    "unknown schema": json.dumps(_solver_dict(schema="x")),
    "schema version 2": json.dumps(_solver_dict(schema_version=2)),
    "model fingerprint a number": json.dumps(_solver_dict(model_fingerprint=7)),
    "world size 0": json.dumps(_solver_dict(world_size=0)),
    "too big": json.dumps(_solver_dict(pad="x" * (2 << 20))),
}


@pytest.mark.parametrize("name", list(SOLVER_TEXTS))
def test_solver_files(name, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(SOLVER_TEXTS[name], encoding="latin-1" if name == "not utf-8" else "utf-8")
    with pytest.raises(BNSError) as e:
        NSSolver.load(p)
    assert "\n" not in str(e.value) and e.value.exit_code == 2
    code, out, err = run("eval", "-m", "analytic:gmm", "-s", p, "-n", 4)
    one_line_error(code, out, err)


def test_solver_spec_that_is_a_directory(tmp_path):
    one_line_error(*run("eval", "-m", "analytic:gmm", "-s", tmp_path, "-n", 4), needle="is a directory")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "gmm"
    compile_artifact("analytic:gmm-cond", "euler", "onnx", out, nfe=2, max_batch=4, guidance=2.0, log=lambda m: None)
    return out


def _edit(manifest_path, fn):
    m = json.loads(manifest_path.read_text())
    fn(m)
    manifest_path.write_text(json.dumps(m))


MANIFEST_EDITS = {
    "model_file escapes": lambda m: m.update(model_file="../other/model.onnx"),
    "model_file absolute": lambda m: m.update(model_file="/etc/passwd"),
    "model_file hidden": lambda m: m.update(model_file=".model.onnx"),
    "model_file unlisted": lambda m: m["files"].pop("model.onnx"),
    "no files": lambda m: m.pop("files"),
    "empty files": lambda m: m.update(files={}),
    "bad digest": lambda m: m["files"].update({"model.onnx": "xyz"}),
    "missing sample_shape": lambda m: m.pop("sample_shape"),
    "sample_shape strings": lambda m: m.update(sample_shape=["a", 8]),
    "precision fp8": lambda m: m.update(precision="fp8"),
    "max_batch abc": lambda m: m.update(max_batch="abc"),
    "max_batch 0": lambda m: m.update(max_batch=0),
    "nfe 2.5": lambda m: m.update(nfe=2.5),
    "format tflite": lambda m: m.update(format="tflite"),
    "num_classes -3": lambda m: m.update(num_classes=-3),
    "guidance nan": lambda m: m.update(guidance="nan"),
    "opt_batch above max": lambda m: m.update(opt_batch=99),
    "schema version 9": lambda m: m.update(schema_version=9),
    "not a dict": lambda m: m.clear(),
    "inputs a string": lambda m: m.update(inputs="noise"),
    "output name with a quote": lambda m: m["outputs"][0].update(name='sample" }'),
    "input dtype float64": lambda m: m["inputs"][0].update(dtype="float64"),
    "solver_name a number": lambda m: m.update(solver_name=3),
    "model_fingerprint null": lambda m: m.update(model_fingerprint=None),
    "model a list": lambda m: m.update(model=[1]),
    "decoder a string": lambda m: m.update(decoder="vae"),
    "conformance a string": lambda m: m.update(conformance="x"),
    "interval a string": lambda m: m.update(interval="0..1"),
    "init_scale a string": lambda m: m.update(init_scale="1"),
    "model_spec model a number": lambda m: m.update(model_spec={"model": 3}),
    "model_spec option of the wrong type": lambda m: m["model_spec"]["options"].update(shape="1,8,8"),
    "model_spec names a factory": lambda m: m["model_spec"].update(model="os:abort"),
    "model_spec names a factory decoder": lambda m: m["model_spec"]["options"].update(decoder="os:abort"),
}


@pytest.mark.parametrize("name", list(MANIFEST_EDITS))
def test_manifests(name, artifact, tmp_path):
    d = tmp_path / "a"
    shutil.copytree(artifact, d)
    _edit(d / "manifest.json", MANIFEST_EDITS[name])
    if name.startswith("model_spec"):  # the runtime never reads it; the validator does
        load(d)
    else:
        with pytest.raises(BNSError) as e:
            load(d)
        assert "\n" not in str(e.value)
    one_line_error(*run("validate", d))


def test_swapped_graph_with_its_entry_deleted_and_extra_files_are_refused(artifact, tmp_path):
    d = tmp_path / "a"
    shutil.copytree(artifact, d)
    (d / "model.onnx").write_bytes(b"another graph")
    _edit(d / "manifest.json", lambda m: m["files"].pop("model.onnx"))
    with pytest.raises(BNSError, match="not among the hashed files"):
        load(d)
    d2 = tmp_path / "b"
    shutil.copytree(artifact, d2)
    (d2 / "model.onnx.data").write_bytes(b"x")
    with pytest.raises(BNSError, match="does not list: model.onnx.data"):
        load(d2)
    d3 = tmp_path / "c"
    shutil.copytree(artifact, d3)
    (d3 / "solver.json").unlink()
    (d3 / "solver.json").symlink_to(artifact / "solver.json")
    with pytest.raises(BNSError, match="symbolic link"):
        load(d3)


def test_signed_artifacts(artifact, tmp_path):
    pytest.importorskip("cryptography", reason="cryptography (the sign extra) is not installed")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub, other = tmp_path / "k.pem", tmp_path / "k.pub", tmp_path / "o.pub"
    priv.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for k, path in ((key, pub), (ed25519.Ed25519PrivateKey.generate(), other)):
        path.write_bytes(
            k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    d = tmp_path / "a"
    shutil.copytree(artifact, d)
    with pytest.raises(BNSError, match="not signed"):
        load(d, public_key=pub)
    code, out, err = run("sign", d, "--key", priv)
    assert code == 0, err
    assert load(d, public_key=pub)(np.zeros((1, 1, 8, 8), np.float32), np.array([0])).shape == (1, 1, 8, 8)
    with pytest.raises(BNSError, match="does not verify"):
        load(d, public_key=other)
    _edit(d / "manifest.json", lambda m: m.update(guidance=3.0))
    with pytest.raises(BNSError, match="does not verify"):
        load(d, public_key=pub)
    one_line_error(*run("validate", d, "--public-key", pub), needle="does not verify")
    one_line_error(*run("sign", artifact, "--key", pub), needle="private key")


RUNTIME_CASES = {
    "noise None": (None, [0]),
    "noise a string": ("abc", [0]),
    "noise ragged list": ([[1.0], [1.0, 2.0]], [0]),
    "noise ints": (np.zeros((1, 1, 8, 8), np.int64), [0]),
    "noise bools": (np.zeros((1, 1, 8, 8), bool), [0]),
    "noise complex": (np.zeros((1, 1, 8, 8), np.complex64), [0]),
    "noise with NaN": (np.full((1, 1, 8, 8), np.nan, np.float32), [0]),
    "noise with inf": (np.full((1, 1, 8, 8), np.inf, np.float32), [0]),
    "torch noise with NaN": (torch.full((1, 1, 8, 8), float("nan")), torch.tensor([0])),
    "noise wrong shape": (np.zeros((1, 8, 8), np.float32), [0]),
    "batch 0": (np.zeros((0, 1, 8, 8), np.float32), []),
    "batch above max": (np.zeros((5, 1, 8, 8), np.float32), [0] * 5),
    "labels 2.7": (np.zeros((1, 1, 8, 8), np.float32), [2.7]),
    "labels bool": (np.zeros((1, 1, 8, 8), np.float32), np.array([True])),
    "labels NaN": (np.zeros((1, 1, 8, 8), np.float32), [float("nan")]),
    "labels strings": (np.zeros((1, 1, 8, 8), np.float32), ["a"]),
    "labels out of range": (np.zeros((1, 1, 8, 8), np.float32), [8]),
    "labels below -1": (np.zeros((1, 1, 8, 8), np.float32), [-2]),
    "labels missing": (np.zeros((1, 1, 8, 8), np.float32), None),
    "labels wrong length": (np.zeros((2, 1, 8, 8), np.float32), [0]),
    "labels a dict": (np.zeros((1, 1, 8, 8), np.float32), {"a": 1}),
    "labels 2^64-1 (uint64)": (np.zeros((1, 1, 8, 8), np.float32), np.array([2**64 - 1], dtype=np.uint64)),
    "float64 noise beyond float32": (np.full((1, 1, 8, 8), 1e39), [0]),
    "torch meta noise": (torch.zeros((1, 1, 8, 8), device="meta"), torch.tensor([0])),
    "torch bf16 noise with inf": (torch.full((1, 1, 8, 8), float("inf"), dtype=torch.bfloat16), torch.tensor([0])),
    "torch sparse noise": (torch.zeros((1, 1, 8, 8)).to_sparse(), torch.tensor([0])),
}


@pytest.mark.parametrize("name", list(RUNTIME_CASES))
def test_runtime_inputs(name, artifact):
    noise, labels = RUNTIME_CASES[name]
    with pytest.raises(BNSError) as e:
        load(artifact)(noise, labels)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize("folder", [None, 3, b"x"])
def test_load_takes_a_path(folder):
    with pytest.raises(BNSError, match="takes an artifact folder"):
        load(folder)


def test_a_conformance_file_that_is_not_one(artifact, tmp_path):
    d = tmp_path / "a"
    shutil.copytree(artifact, d)
    _edit(d / "manifest.json", lambda m: m["conformance"].update(file="model.onnx"))
    one_line_error(*run("validate", d, "--no-ground-truth"), needle="conformance file 'model.onnx'")
    _edit(d / "manifest.json", lambda m: m["conformance"].update(file="solver.json"))
    one_line_error(*run("validate", d, "--no-ground-truth"), needle="not a safetensors file")


def test_decoder_for_an_artifact_without_one(artifact):
    one_line_error(*run("validate", artifact, "--decoder", "vae", "--no-ground-truth"), needle="no decoder")


def test_empty_condition_axes_are_refused(tmp_path):
    from safetensors.torch import save_file

    from bns_export.loaders.conditions import load_condition_set

    save_file({"cond": torch.zeros(2, 0, 8)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(BNSError, match="no empty axis"):
        load_condition_set(tmp_path / "c.safetensors")


@pytest.mark.parametrize("damage", ["wrong shape", "nan", "bytes"])
def test_a_damaged_checkpoint_is_set_aside_once(damage, tmp_path, caplog):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from bns_export.distill import DistillConfig, distill
    from bns_export.fields import GuidedField
    from bns_export.groundtruth import ground_truth

    f = GuidedField(gmm())
    train, val = ground_truth(f, 32, 1), ground_truth(f, 32, 2)
    cfg = DistillConfig(nfe=3, iterations=20, val_every=5, batch_size=16)
    out, ckpt = tmp_path / "s.json", tmp_path / "s.json.ckpt.safetensors"

    def stop(it, info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(f, train, val, cfg, out=out, progress=stop)
    with safe_open(str(ckpt), "pt") as fh:  # the run's own id stays: only the tensors are damaged
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    key = next(k for k in tensors if k.startswith("param."))
    if damage == "bytes":  # the tensors' bytes, not the header: the file still reads as this run's checkpoint
        ckpt.write_bytes(ckpt.read_bytes()[:-3] + b"\x01\x02\x03")
    else:  # consistent but wrong tensors (without the digest, as an older release wrote them)
        tensors[key] = torch.zeros(7) if damage == "wrong shape" else torch.full_like(tensors[key], float("nan"))
        save_file(tensors, str(ckpt), metadata={"state": meta["state"]})
    seen = []
    solver = distill(f, train, val, cfg, out=out, progress=lambda it, info: seen.append(it))
    assert out.exists() and not ckpt.exists() and (tmp_path / "s.json.ckpt.safetensors.bad").exists()
    assert np.isfinite(solver.b).all() and seen[0] == 5  # started afresh
    assert sum("set aside" in r.message for r in caplog.records) == 1


def test_runtime_accepts_lists_and_returns_numpy(artifact):
    out = load(artifact)(np.zeros((2, 1, 8, 8)).tolist(), [0, -1])
    assert isinstance(out, np.ndarray) and out.shape == (2, 1, 8, 8) and out.dtype == np.float32


FACTORY_MODULES = {
    "raises at import": "raise RuntimeError('no GPU here')\ndef make(): pass\n",
    "syntax error": "def make(:\n",
    "sys.exit in factory": "import sys\ndef make():\n    sys.exit(0)\n",
    "NaN model": textwrap.dedent("""
        import torch
        class N(torch.nn.Module):
            def forward(self, x, t):
                return x * float('nan')
        def make():
            return N()
    """),
    "NaN late in time": textwrap.dedent("""
        import torch
        class N(torch.nn.Module):
            def forward(self, x, t):
                return torch.where(t[:, None, None, None] > 0.7, x * float('nan'), x)
        def make():
            return N()
    """),
}


@pytest.mark.parametrize("name", list(FACTORY_MODULES))
def test_user_code_that_fails(name, tmp_path, monkeypatch):
    mod = f"user_mod_{abs(hash(name))}"
    (tmp_path / f"{mod}.py").write_text(FACTORY_MODULES[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    code, o, err = run("sample", "-m", f"{mod}:make", "--shape", "1,4,4", "-s", "euler", "-o", out / "s.png")
    one_line_error(code, o, err)
    assert list(out.iterdir()) == []
    sys.modules.pop(mod, None)
