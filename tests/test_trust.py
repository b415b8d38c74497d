"""Trust: an artifact never runs code, a command never deletes what it did not write, the cache is checked,
and signals end a command (the server's hostile requests are in tests/test_serve.py).  One test (or more) per
audit finding."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cliresult import one_line_error, run
from forged import as_tensorrt, edit
from readiness import CAN_TELL, wait_ready

from bns_export.compile.build import compile_artifact
from bns_export.errors import BNSError
from bns_export.groundtruth import ground_truth
from bns_export.loaders import load_model
from bns_export.runtime import artifact as art_mod
from bns_export.runtime import load
from bns_export.runtime.artifact import sha256_file, staging_dir

BIN = Path(sys.executable).parent / "bns-export"
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def gmm(tmp_path_factory):
    """Two tiny artifacts of one model at NFE 2 and 3."""
    root = tmp_path_factory.mktemp("trust")
    for nfe in (2, 3):
        compile_artifact(
            "analytic:gmm-cond", "euler", "onnx", root / f"a{nfe}", nfe=nfe, max_batch=2, guidance=2.0, **QUIET
        )
    return root


# 1. validate never imports code an artifact names -------------------------------------------------


def test_validate_refuses_code_named_by_the_manifest(gmm, tmp_path, monkeypatch):
    (tmp_path / "evil_mod.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('x')\ndef f():\n    raise SystemExit\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for key, value in (("model", "evil_mod:f"), ("model", "os:abort"), ("decoder", "evil_mod:f")):
        d = tmp_path / f"a-{key}-{value.replace(':', '_')}"
        shutil.copytree(gmm / "a2", d)

        def change(m, key=key, value=value):
            if key == "model":
                m["model_spec"]["model"] = value
            else:
                m["model_spec"]["options"]["decoder"] = value
                m["decoder"] = {"fingerprint": "0" * 16}

        edit(d / "manifest.json", change)
        code, _, err = run("validate", d)
        one_line_error(code, "", err, needle="never runs code an artifact names")
        assert not (tmp_path / "RAN").exists()
    # naming the model yourself (or trusting the manifest) is how a factory artifact is validated
    code, out, err = run("validate", gmm / "a2", "-m", "analytic:gmm-cond")
    assert code == 0 and "PASS" in out, err


# 2. a present signature always verifies; the graph's metadata matches its manifest ---------------


def test_swapped_graph_is_caught_with_and_without_a_signature(gmm, tmp_path):
    pytest.importorskip("cryptography", reason="cryptography (the sign extra) is not installed")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "k.pem"
    key.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    d = tmp_path / "signed"
    shutil.copytree(gmm / "a2", d)
    assert run("sign", d, "--key", key)[0] == 0
    load(d)  # a good signature verifies by its embedded key
    shutil.copy(gmm / "a3" / "model.onnx", d / "model.onnx")
    edit(d / "manifest.json", lambda m: m["files"].update({"model.onnx": sha256_file(d / "model.onnx")}))
    with pytest.raises(BNSError, match="does not verify"):
        load(d)
    (d / "manifest.json.sig").unlink()  # unsigned now: the graph's own metadata still gives it away
    with pytest.raises(BNSError, match="does not belong to this manifest"):
        load(d)


# 3-5. compile replaces only artifacts, touches only its own staging, publishes atomically ----------


def test_compile_refuses_to_replace_a_folder_that_is_not_an_artifact(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    args = ("compile", "-m", "analytic:gmm", "-s", "euler", "--nfe", 2, "--max-batch", 2, "-o", d)
    code, _, err = run(*args)
    one_line_error(code, "", err, needle="not a bns-export artifact")
    assert (d / "thesis.txt").read_text() == "years of work"
    assert run(*args, "--force")[0] == 0 and (d / "manifest.json").is_file()
    assert run(*args)[0] == 0  # an artifact is replaced


def test_stale_cleanup_touches_only_our_locked_staging(tmp_path, monkeypatch):
    theirs = [tmp_path / ".vim.old-2020", tmp_path / ".x.partial-1", tmp_path / ".x.bns-partial-unlocked"]
    for d in theirs:
        d.mkdir()
        (d / "f").write_text("keep")
    ours = tmp_path / ".x.bns-partial-stale"
    ours.mkdir()
    (tmp_path / ".x.bns-partial-stale.lock").write_text(art_mod.LOCK_MAGIC)
    monkeypatch.setattr(art_mod, "PROCESS_START", time.time() + 10)
    with staging_dir(tmp_path / "x") as tmp:
        (tmp / "f").write_text("new")
    assert all((d / "f").read_text() == "keep" for d in theirs)
    assert not ours.exists() and (tmp_path / "x" / "f").read_text() == "new"


@pytest.mark.parametrize("atomic", [True, False])
def test_publish_leaves_old_or_new_at_every_instant(tmp_path, monkeypatch, atomic):
    dest = tmp_path / "art"
    with staging_dir(dest) as tmp:
        (tmp / "manifest.json").write_text('{"schema": "bns-export/artifact"}')
        (tmp / "v").write_text("old")
    if not atomic:
        monkeypatch.setattr(art_mod, "exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def replace_then_signal(a, b):  # a Ctrl-C between the renames is held until both are done
        real_replace(a, b)
        calls.append(dest.exists())
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    monkeypatch.setattr(art_mod.os, "replace", replace_then_signal)
    try:
        with staging_dir(dest, force=True) as tmp:
            (tmp / "manifest.json").write_text('{"schema": "bns-export/artifact"}')
            (tmp / "v").write_text("new")
    except KeyboardInterrupt:
        pass
    assert (dest / "v").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name != "art"]  # nothing left beside it


# 6. triton adds versions, keeps a hand-tuned config, never writes into an artifact ----------------


def test_triton_adds_versions_and_keeps_hand_tuned_config(gmm, tmp_path):
    repo = tmp_path / "repo"
    assert run("triton", gmm / "a2", "--repo", repo, "--name", "m")[0] == 0
    cfg = repo / "m" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "# tuned by hand\n")
    (repo / "m" / "notes.txt").write_text("mine")
    code, _, err = run("triton", gmm / "a3", "--repo", repo, "--name", "m")
    assert code == 0, err
    assert (repo / "m" / "1" / "model.onnx").is_file() and (repo / "m" / "2" / "model.onnx").is_file()
    assert cfg.read_text().endswith("# tuned by hand\n") and (repo / "m" / "notes.txt").read_text() == "mine"
    # a model folder bns-export did not write is refused; so is a repository inside an artifact
    (repo / "theirs").mkdir()
    (repo / "theirs" / "config.pbtxt").write_text("name: 'theirs'")
    one_line_error(*run("triton", gmm / "a2", "--repo", repo, "--name", "theirs"), needle="not written by bns-export")
    before = sorted(p.name for p in (gmm / "a2").iterdir())
    one_line_error(*run("triton", gmm / "a2", "--repo", gmm / "a2"), needle="overlaps artifact")
    assert sorted(p.name for p in (gmm / "a2").iterdir()) == before


def test_triton_names_are_checked_and_files_honour_the_umask(gmm, tmp_path):
    one_line_error(*run("triton", gmm / "a2", "--repo", tmp_path / "r", "--name", 'a" } input ['), needle="model name")
    old = os.umask(0o077)
    try:
        assert run("triton", gmm / "a2", "--repo", tmp_path / "r2", "--name", "m")[0] == 0
    finally:
        os.umask(old)
    for p in (tmp_path / "r2" / "m").rglob("*"):
        assert p.stat().st_mode & 0o077 == 0, p


# 7. a diffusers weights file missing a tensor is one line ----------------------------------------


def test_diffusers_weights_missing_a_tensor_is_refused(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    from netfactories import diffusers_unet
    from safetensors.torch import load_file, save_file

    diffusers.DDPMPipeline(unet=diffusers_unet((8, 16), 4), scheduler=diffusers.DDPMScheduler()).save_pretrained(
        tmp_path / "p"
    )
    weights = tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors"
    w = load_file(str(weights))
    w.pop("conv_in.bias")
    save_file(w, str(weights))
    code, _, err = run("eval", "-m", f"diffusers:{tmp_path / 'p'}", "-s", "euler", "--nfe", 2, "-n", 2)
    one_line_error(code, "", err, needle="lacks tensor(s) conv_in.bias")


# 8. the ground-truth cache is verified -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["bytes", "nan", "missing key", "wrong shape"])
def test_damaged_cache_entries_are_recomputed(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    field = load_model("analytic:gmm")
    good = ground_truth(field, 8, 3, rtol=1e-4, atol=1e-4, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    if damage == "bytes":
        data = bytearray(path.read_bytes())
        data[-9] ^= 0x55
        path.write_bytes(bytes(data))
    else:
        d = load_file(str(path))
        if damage == "nan":
            d["x1"][0, 0] = float("nan")
        elif damage == "missing key":
            d.pop("x1")
        else:
            d["x1"] = d["x1"][:4]
        save_file(d, str(path))
    again = ground_truth(field, 8, 3, rtol=1e-4, atol=1e-4, cache_dir=tmp_path)
    assert torch.equal(again.x1, good.x1)


def test_unwritable_cache_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    gt = ground_truth(load_model("analytic:gmm"), 4, 3, rtol=1e-4, atol=1e-4, cache_dir=blocker / "gt")
    assert torch.isfinite(gt.x1).all() and "not cached" in caplog.text


# 9. only regular files are read, and never more than the limit -----------------------------------


def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "s.json"
    os.mkfifo(fifo)
    for spec in (fifo, "/dev/zero"):  # a reader that blocked (FIFO) or read forever (/dev/zero) never returns
        code, _, err = run("eval", "-m", "analytic:gmm", "-s", spec, "-n", 2)
        one_line_error(code, "", err, needle="not a regular file")


# 10. signals end a command with 128 + signal from its first instruction ---------------------------


@pytest.mark.skipif(not BIN.exists(), reason="the bns-export console script is not installed in this environment")
def test_early_signals_end_the_command_and_leave_nothing(tmp_path):
    codes = []
    for k, delay in enumerate((0.15, 0.3, 0.5, 0.8, 1.2, 2.0)):
        out = tmp_path / f"s{k}.npz"
        p = subprocess.Popen(
            [str(BIN), "sample", "-m", "analytic:gmm", "-s", "euler", "--nfe", "2", "-n", "4", "-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        p.send_signal(signal.SIGTERM if k % 2 else signal.SIGINT)
        _, err = p.communicate(timeout=120)
        codes.append(p.returncode)
        assert p.returncode in (0, 130, 143), (delay, p.returncode, err)
        assert out.exists() == (p.returncode == 0), (delay, p.returncode)
        assert b"Traceback" not in err
    assert any(c != 0 for c in codes)


# 12. the smaller findings: bad manifest field types, ignored options, float64 beyond float32, uint64
# labels and meta tensors are in the catalogue (tests/test_bad_inputs.py); what must *work* is here


def test_runtime_takes_bf16_torch_inputs(gmm):
    out = load(gmm / "a2")(torch.zeros((1, 1, 8, 8), dtype=torch.bfloat16), torch.tensor([0]))
    assert out.shape == (1, 1, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()


# 13. formats whose loading runs native code are code: opened only with a verified key or explicit trust ----


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 private key and its public key, as PEM files."""
    pytest.importorskip("cryptography", reason="cryptography (the sign extra) is not installed")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    priv.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


def _swap_in_library(package: Path, library: Path) -> None:
    """Replace the shared library inside an AOTInductor package (a zip) with `library`, keeping every other entry."""
    import zipfile

    entries = {}
    with zipfile.ZipFile(package) as z:
        for info in z.infolist():
            entries[info.filename] = library.read_bytes() if info.filename.endswith(".so") else z.read(info)
    assert any(name.endswith(".so") for name in entries)
    with zipfile.ZipFile(package, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no system C compiler to build the hostile shared library")
def test_aoti_package_is_code_opened_only_signed_or_trusted(tmp_path):
    good = tmp_path / "good"
    compile_artifact("analytic:gmm", "euler", "aoti", good, nfe=2, max_batch=2, validate=False, **QUIET)
    priv, pub = _keys(tmp_path)
    signed = tmp_path / "signed"
    shutil.copytree(good, signed)
    assert run("sign", signed, "--key", priv)[0] == 0
    assert load(signed, public_key=pub)(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 1, 8, 8)

    marker = tmp_path / "RAN"
    src = tmp_path / "evil.c"
    src.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) "
        f'{{ FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("x", f); fclose(f); }} }}\n'
    )
    lib = tmp_path / "evil.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    for art in (good, signed):  # the swapped library with files["model.pt2"] updated to its sha256
        _swap_in_library(art / "model.pt2", lib)
        edit(art / "manifest.json", lambda m, art=art: m["files"].update({"model.pt2": sha256_file(art / "model.pt2")}))
    one_line_error(*run("validate", good, "--no-ground-truth"), needle="runs native code")
    with pytest.raises(BNSError, match="runs native code"):
        load(good)
    with pytest.raises(BNSError, match="not signed"):
        load(good, public_key=pub)
    with pytest.raises(BNSError, match="does not verify"):
        load(signed, public_key=pub)
    one_line_error(*run("validate", signed, "--public-key", pub, "--no-ground-truth"), needle="does not verify")
    assert not marker.exists()
    # what the refusal prevents: trusting the package runs its library's constructor (in a child process)
    child = (
        "from bns_export.runtime import load\n"
        f"try:\n    load({str(good)!r}, trust_engine_code=True)\nexcept Exception:\n    pass\n"
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=300, env=env)
    assert marker.exists()
    # the failed load leaves no extracted package (torch's loader keeps it, library included, where a load fails)
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(("aotinductor_", "bns-aoti-"))]


def test_tensorrt_plans_are_code_in_the_runtime_validate_and_triton(gmm, tmp_path):
    plan = as_tensorrt(gmm / "a2", tmp_path / "plan")
    with pytest.raises(BNSError, match="runs native code") as e:
        load(plan)
    assert e.value.exit_code == 2  # refused before the TensorRT import (exit 3 here) is even tried
    one_line_error(*run("validate", plan, "--no-ground-truth"), needle="runs native code")
    one_line_error(*run("triton", plan, "--repo", tmp_path / "r"), needle="runs native code")
    assert not (tmp_path / "r").exists()
    code, _, err = run("triton", plan, "--repo", tmp_path / "r", "--trust-engine-code")
    assert code == 0 and (tmp_path / "r" / "plan" / "1" / "model.plan").is_file(), err
    code, out, _ = run("validate", "--help")
    assert "aoti and tensorrt artifacts are code" in " ".join(out.split())


# 14. a signature cannot be stripped under a policy; a graph whose metadata was stripped is refused --------


def test_a_required_signature_cannot_be_stripped(gmm, tmp_path, monkeypatch):
    priv, pub = _keys(tmp_path)
    d = tmp_path / "a"
    shutil.copytree(gmm / "a2", d)
    assert run("sign", d, "--key", priv)[0] == 0
    load(d, require_signature=True)
    (d / "manifest.json.sig").unlink()
    load(d)  # no policy: an unsigned artifact is still an artifact
    with pytest.raises(BNSError, match="not signed"):
        load(d, require_signature=True)
    one_line_error(*run("validate", d, "--require-signature", "--no-ground-truth"), needle="not signed")
    one_line_error(*run("triton", d, "--repo", tmp_path / "r", "--require-signature"), needle="not signed")
    monkeypatch.setenv("BNS_EXPORT_REQUIRE_SIGNATURE", "1")  # the default for services that cannot pass flags
    with pytest.raises(BNSError, match="BNS_EXPORT_REQUIRE_SIGNATURE"):
        load(d)
    one_line_error(*run("validate", d, "--no-ground-truth"), needle="not signed")
    load(d, require_signature=False)  # an explicit choice wins over the environment
    monkeypatch.setenv("BNS_EXPORT_REQUIRE_SIGNATURE", "maybe")
    with pytest.raises(BNSError, match="must be 1"):
        load(d)
    monkeypatch.delenv("BNS_EXPORT_REQUIRE_SIGNATURE")
    monkeypatch.setenv("BNS_EXPORT_PUBLIC_KEY", str(pub))
    with pytest.raises(BNSError, match="not signed"):
        load(d)


def test_a_graph_with_its_metadata_stripped_is_refused(gmm, tmp_path):
    import onnx

    d = tmp_path / "a"
    shutil.copytree(gmm / "a2", d)
    graph = onnx.load(str(gmm / "a3" / "model.onnx"))  # the NFE-3 graph, its identity deleted
    del graph.metadata_props[:]
    onnx.save(graph, str(d / "model.onnx"))
    edit(d / "manifest.json", lambda m: m["files"].update({"model.onnx": sha256_file(d / "model.onnx")}))
    with pytest.raises(BNSError, match="metadata lacks solver_fingerprint"):
        load(d)


# 15. compile and triton replace only what they wrote, whole; never the current folder --------------------


def test_compile_never_deletes_a_file_beside_an_artifact(gmm, tmp_path, monkeypatch):
    args = ("compile", "-m", "analytic:gmm", "-s", "euler", "--nfe", 2, "--max-batch", 2)
    art = tmp_path / "art"
    assert run(*args, "-o", art)[0] == 0
    (art / "NOTES.txt").write_text("mine")
    one_line_error(*run(*args, "-o", art), needle="not a bns-export artifact as written")
    assert (art / "NOTES.txt").read_text() == "mine"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text('{"schema": "bns-export/artifact"}')
    (fake / "thesis.txt").write_text("years of work")
    one_line_error(*run(*args, "-o", fake), needle="not a bns-export artifact")
    assert (fake / "thesis.txt").read_text() == "years of work"
    (art / "NOTES.txt").unlink()
    assert run(*args, "-o", art)[0] == 0  # a whole artifact is replaced
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", "..", str(work), "../.."):
        one_line_error(*run(*args, "--force", "-o", out), needle="current folder or one above it")
    assert (work / "keep.txt").read_text() == "keep"


def test_triton_replace_keeps_a_model_folder_holding_other_files(gmm, tmp_path):
    repo = tmp_path / "repo"
    assert run("triton", gmm / "a2", "--repo", repo, "--name", "m")[0] == 0
    assert run("triton", gmm / "a3", "--repo", repo, "--name", "m", "--replace")[0] == 0  # only what it wrote
    (repo / "m" / "1" / "notes.txt").write_text("mine")
    one_line_error(*run("triton", gmm / "a2", "--repo", repo, "--name", "m", "--replace"), needle="record does not")
    assert (repo / "m" / "1" / "notes.txt").read_text() == "mine"
    (repo / "m" / "1" / "notes.txt").unlink()
    (repo / "m" / "²").mkdir()  # '²'.isdigit() is True, but it is no version
    code, _, err = run("triton", gmm / "a3", "--repo", repo, "--name", "m")
    assert code == 0 and (repo / "m" / "2" / "model.onnx").is_file(), err
    edit(repo / "m" / "bns-export.json", lambda r: r.update(versions=[1, 2]))
    one_line_error(
        *run("triton", gmm / "a3", "--repo", repo, "--name", "m"), needle="not a bns-export Triton model record"
    )


# 16. every documented way to start the tool ends on a signal with 128 + signal, no traceback ---------------


STARTS = {
    "console script": [str(BIN)],
    "python -m bns_export": [sys.executable, "-m", "bns_export"],
    "python -m bns_export.cli": [sys.executable, "-m", "bns_export.cli"],
}


@pytest.mark.skipif(not CAN_TELL, reason="readiness is read from /proc (Linux)")
@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_from_the_first_line_whatever_the_start(start, sig, tmp_path):
    if start == "console script" and not BIN.exists():
        pytest.skip("the bns-export console script is not installed in this environment")
    out = tmp_path / "s.npz"
    cmd = [*STARTS[start], "sample", "-m", "analytic:gmm", "-s", "euler", "--nfe", "2", "-n", "4", "-o", str(out)]
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    wait_ready(p)
    p.send_signal(sig)  # still importing the CLI, on any machine: the handlers were installed first
    _, err = p.communicate(timeout=120)
    assert p.returncode in (0, 128 + sig), (p.returncode, err[-500:])
    assert b"Traceback" not in err and out.exists() == (p.returncode == 0)
