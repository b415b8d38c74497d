"""Guidance families: one solver file over a guidance range, interpolated in eval, the scheduler and the graph."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bns_export.checks import guidance_knots
from bns_export.cli import main
from bns_export.compile.build import compile_artifact
from bns_export.distill import DistillConfig, distill_family
from bns_export.errors import BNSError
from bns_export.evaluate import evaluate_on
from bns_export.groundtruth import SEEDS, ground_truth
from bns_export.loaders import load_model
from bns_export.runtime import load
from bns_export.runtime.triton import config_pbtxt
from bns_export.solvers import NSSolver, SolverFamily, baseline, load_solver, resolve_solver, sample
from bns_export.solvers.sampler import family_tables, ns_sample

GMM = "analytic:gmm-cond"


def _family(field, knots=(2.0, 4.0), specs=("dpm++2m", "deis"), nfe=4, **meta) -> SolverFamily:
    tables = [baseline(s, nfe, field.schedule, field.t_lo, field.t_hi) for s in specs]
    return SolverFamily(list(knots), tables, meta=meta)


@pytest.fixture(scope="module")
def gmm():
    return load_model(GMM, guidance=3.0)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, gmm):
    """A two-knot family distilled on the analytic field (a few iterations: the mechanics, not the quality)."""
    out = tmp_path_factory.mktemp("fam") / "fam.json"
    field = load_model(GMM, guidance=2.0)
    cfg = DistillConfig(nfe=4, iterations=20, batch_size=32, val_every=10)

    def pairs(f):
        return ground_truth(f, 48, SEEDS.train), ground_truth(f, 48, SEEDS.val)

    family = distill_family(field, (2.0, 4.0), pairs, cfg, out=out)
    return out, family


def test_knots_parse_from_a_range_a_count_or_a_list():
    assert guidance_knots("2:8") == (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    assert guidance_knots("2:8:3") == (2.0, 5.0, 8.0)
    assert guidance_knots("2,3,5,8") == (2.0, 3.0, 5.0, 8.0)
    for bad, msg in [
        ("8:2", "LO < HI"),
        ("2,2", "increasing"),
        ("a:b", "a range"),
        ("2:8:1", "2..64"),
        ("-1:3", ">= 0"),
    ]:
        with pytest.raises(BNSError, match=msg):
            guidance_knots(bad)


def test_interpolation_is_exact_at_the_knots_linear_between_and_keeps_times_ordered(gmm):
    fam = _family(gmm)
    for w, table in zip(fam.knots, fam.tables):
        at = fam.at(w)
        assert np.allclose(at.t, table.t) and np.allclose(at.a, table.a) and np.allclose(at.b, table.b)
    mid = fam.at(3.0)
    assert np.allclose(mid.b, (fam.tables[0].b + fam.tables[1].b) / 2)
    assert np.all(np.diff(np.append(mid.t, mid.t_end)) >= 0) and mid.t[0] == fam.t[0]
    assert mid.meta["guidance"] == 3.0 and mid.meta["family_fingerprint"] == fam.fingerprint()
    with pytest.raises(BNSError, match="outside the solver family's range 2..4"):
        fam.at(4.5)
    with pytest.raises(BNSError, match="knots must increase"):
        SolverFamily([4.0, 2.0], fam.tables)
    other = baseline("euler", 5, gmm.schedule, gmm.t_lo, gmm.t_hi)
    with pytest.raises(BNSError, match="one NFE and interval only"):
        SolverFamily([2.0, 4.0], [fam.tables[0], other])


def test_version_2_files_round_trip_and_version_1_files_still_load(gmm, tmp_path):
    fam = _family(gmm)
    fam.save(tmp_path / "f.json")
    back = load_solver(tmp_path / "f.json")
    assert isinstance(back, SolverFamily) and back.fingerprint() == fam.fingerprint()
    assert json.loads((tmp_path / "f.json").read_text())["schema_version"] == 2
    fam.tables[0].save(tmp_path / "one.json")
    assert isinstance(load_solver(tmp_path / "one.json"), NSSolver)
    with pytest.raises(BNSError, match="a guidance family, not one table"):
        NSSolver.load(tmp_path / "f.json")
    d = json.loads((tmp_path / "f.json").read_text())
    d["family"]["tables"][1]["a"][0] += 1e-3
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(BNSError, match="stale fingerprint"):
        load_solver(tmp_path / "bad.json")
    d["schema_version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(d))
    with pytest.raises(BNSError, match="unknown schema version 3"):
        load_solver(tmp_path / "v3.json")


def test_per_sample_tables_in_the_one_loop_equal_one_table_per_sample(gmm):
    fam = _family(gmm)
    field = load_model(GMM, guidance=2.0)
    noise = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 5])
    ws = [2.0, 3.0, 4.0]
    tables = [fam.at(w) for w in ws]
    t = torch.tensor(np.stack([s.t for s in tables], 1))
    a = torch.tensor(np.stack([s.a for s in tables], 1))
    b = torch.tensor(np.stack([s.b for s in tables], 2))
    w = torch.tensor(ws, dtype=torch.float64)
    with torch.no_grad():
        batch = ns_sample(lambda x, tt, c: field(x, tt, c, guidance=w), t, a, b, field.start(noise), labels)
    for i, g in enumerate(ws):
        one = sample(load_model(GMM, guidance=g), tables[i], noise[i : i + 1], labels[i : i + 1])
        assert torch.allclose(batch[i : i + 1], one, atol=1e-10)


def test_distill_family_chains_the_knots_and_writes_one_file(distilled):
    out, fam = distilled
    assert isinstance(load_solver(out), SolverFamily) and list(fam.knots) == [2.0, 4.0]
    assert [t.meta["guidance"] for t in fam.tables] == [2.0, 4.0]
    assert fam.meta["kind"] == "bns-family" and fam.meta["model_identity"]
    assert not list(out.parent.glob("*.knot-*")) and not list(out.parent.glob("*.ckpt*"))  # nothing left behind


def test_the_graph_s_interpolation_is_the_family_s(gmm):
    fam = _family(gmm, knots=(2.0, 3.0, 5.0), specs=("dpm++2m", "deis", "unipc"))
    ws = [2.0, 2.5, 3.0, 4.2, 5.0]
    knots, *stacked = (torch.tensor(v) for v in (fam.knots, *fam.stacked()))
    t, a, b = family_tables(knots, tuple(stacked), torch.tensor(ws, dtype=torch.float64))
    for i, w in enumerate(ws):
        at = fam.at(w)
        assert np.allclose(t[:, i], at.t) and np.allclose(a[:, i], at.a) and np.allclose(b[:, :, i], at.b)


def test_the_joint_stage_trains_the_midpoints_and_never_loses_validation(distilled, tmp_path):
    out, fam = distilled
    joint = fam.meta["joint"]
    assert joint["points"] == [2.0, 3.0, 4.0] and joint["train_pairs"] == 3 * 48
    assert joint["val_psnr"] > joint["val_psnr_start"]  # the few iterations here already gain on the start
    for w, table in zip(fam.knots, fam.tables):
        assert table.meta["joint"] and table.meta["guidance"] == w
        assert table.meta["val_psnr"] != table.meta["chained_val_psnr"]  # the scores of the table it holds now
    field = load_model(GMM, guidance=2.0)
    cfg = DistillConfig(nfe=4, iterations=20, batch_size=32, val_every=10)

    def pairs(f):
        return ground_truth(f, 48, SEEDS.train), ground_truth(f, 48, SEEDS.val)

    chained = distill_family(field, (2.0, 4.0), pairs, cfg, joint=False)
    assert "joint" not in chained.meta
    for w, table in zip(chained.knots, chained.tables):  # each knot keeps the table it was scored with
        field.set_guidance(w)
        assert evaluate_on(field, table, pairs(field)[1])["psnr_mean"] == pytest.approx(table.meta["val_psnr"])
    assert not np.allclose(chained.tables[0].a, chained.tables[1].a)  # the next knot's training left it alone
    assert [t.fingerprint() for t in chained.tables] != [t.fingerprint() for t in fam.tables]
    field.set_guidance(3.0)
    val = ground_truth(field, 48, SEEDS.val)
    scores = [evaluate_on(field, f.at(3.0), val)["psnr_mean"] for f in (chained, fam)]
    assert scores[1] > scores[0]  # trained at the midpoint: better there than the chained knots' interpolation


def test_eval_and_sample_take_any_guidance_in_the_range(distilled, tmp_path):
    out, fam = distilled
    r = CliRunner().invoke(main, ["eval", "-m", GMM, "-s", str(out), "-w", "3", "-n", "8", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["guidance"] == 3.0
    for args in (["-w", "5"], []):
        r = CliRunner().invoke(main, ["eval", "-m", GMM, "-s", str(out), "-n", "8", *args])
        assert r.exit_code == 2 and "guidance family over 2..4" in r.output and "Traceback" not in r.output
    field = load_model(GMM, guidance=3.0)
    assert resolve_solver(str(out), field).fingerprint() == fam.at(3.0).fingerprint()


def test_distill_cli_writes_a_family(tmp_path):
    out = tmp_path / "f.json"
    args = ["distill", "-m", GMM, "-w", "2:4:2", "--nfe", "3", "-o", out, "--iterations", "4", "--val-every", "2"]
    args += ["--train-pairs", "16", "--val-pairs", "16", "--batch-size", "8", "--json"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["guidance_range"] == [2.0, 4.0] and [k["guidance"] for k in summary["knots"]] == [2.0, 4.0]
    assert summary["joint"]["points"] == [2.0, 3.0, 4.0]
    r = CliRunner().invoke(main, [str(a) for a in args[:-1] + ["--no-joint"]])
    assert r.exit_code == 0 and "joint" not in r.output, r.output
    r = CliRunner().invoke(main, ["distill", "-m", "digits", "-w", "2:4", "--nfe", "3", "-o", str(tmp_path / "u.json")])
    assert r.exit_code == 2 and "conditional model" in r.output
    r = CliRunner().invoke(main, ["eval", "-m", GMM, "-s", "euler", "-w", "2:4"])
    assert r.exit_code == 2 and "--guidance" in r.output


@pytest.fixture(scope="module")
def family_artifact(distilled, tmp_path_factory):
    art = tmp_path_factory.mktemp("fam-art") / "a"
    return art, compile_artifact(GMM, str(distilled[0]), "onnx", art, max_batch=4, log=lambda m: None)


def test_a_family_artifact_takes_guidance_per_sample(distilled, family_artifact, tmp_path):
    out, fam = distilled
    art, m = family_artifact
    assert m["guidance"] is None and m["guidance_range"] == [2.0, 4.0]
    assert [i["name"] for i in m["inputs"]] == ["noise", "labels", "guidance"]
    assert any("guidance 2..4" in c["case"] for c in m["validation"]["cases"]) and m["validation"]["passed"]
    runner = load(art)
    noise = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    labels, ws = np.array([0, 1, 2]), [2.0, 2.5, 4.0]
    out_batch = runner(noise, labels, np.array(ws))
    for i, w in enumerate(ws):
        eager = sample(load_model(GMM, guidance=w).float(), fam.at(w), torch.from_numpy(noise[i : i + 1]),
                       torch.tensor(labels[i : i + 1]))  # fmt: skip
        assert np.abs(out_batch[i : i + 1] - eager.numpy()).max() < 1e-5
    assert np.allclose(runner(noise, labels, 3.0), runner(noise, labels, np.full(3, 3.0)))  # one number: every sample
    for bad, msg in [(None, "pass guidance"), (np.array([1.0, 3, 3]), "within the distilled range 2..4"),
                     (np.array([np.nan, 3, 3]), "within the distilled range"), (np.ones(2) * 3, "shape")]:  # fmt: skip
        with pytest.raises(BNSError, match=msg):
            runner(noise, labels, bad)
    cfg = config_pbtxt("fam", m, gpu=True, engine_cache="/models/fam/trt_engines")
    assert 'name: "guidance"' in cfg and "guidance:1" in cfg and "guidance:4" in cfg
    baked = compile_artifact(GMM, str(out), "onnx", tmp_path / "b", max_batch=2, guidance=3.0, log=lambda m: None)
    assert baked["guidance"] == 3.0 and "guidance" not in [i["name"] for i in baked["inputs"]]
    with pytest.raises(BNSError, match="bakes guidance 3.0"):
        load(tmp_path / "b")(noise[:2], labels[:2], 3.0)


def test_triton_s_graph_refuses_guidance_outside_the_family(family_artifact, tmp_path):
    """The written repository's graph in a bare ONNX Runtime session, as Triton's backend runs it (no bns-export
    checks): in-range guidance gives the runtime's samples; out of range or NaN stops the run, naming the rule."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from bns_export.runtime.triton import write_repository

    art, _ = family_artifact
    repo = write_repository([art], tmp_path / "repo", name="fam", gpu=False)
    session = ort.InferenceSession(str(repo / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 1], dtype=np.int64)

    def run(w):
        return session.run(None, {"noise": noise, "labels": labels, "guidance": np.asarray(w, np.float32)})[0]

    assert np.abs(run([2.0, 4.0]) - load(art)(noise, labels, np.array([2.0, 4.0]))).max() < 1e-6
    for bad in ([9.0, 3.0], [3.0, 1.5], [np.nan, 3.0], [np.inf, 3.0]):
        with pytest.raises(Exception, match="guidance must be finite and within the distilled range 2..4"):
            run(bad)


def test_the_scheduler_takes_its_table_at_the_call_s_guidance(gmm):
    pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    from bns_export.diffusers import BNSScheduler
    from bns_export.fields import NetworkField
    from bns_export.fields.schedules import FMOT

    class Net(torch.nn.Module):
        def forward(self, x, t):
            return -x

    field = NetworkField(Net(), FMOT(), (1, 4, 4))
    fam = _family(field)
    sched = BNSScheduler.from_solver(fam, field)
    with pytest.raises(BNSError, match="call set_guidance"):
        sched.set_timesteps(4)
    sched.set_guidance(3.0)
    sched.set_timesteps(4)
    assert np.allclose(sched.solver.b, fam.at(3.0).b) and len(sched) == 4
    sched.set_guidance(9.0)
    with pytest.raises(BNSError, match="outside the solver family's range 2..4"):
        sched.set_timesteps(4)
    one = BNSScheduler.from_solver(fam.tables[0], field)
    with pytest.raises(BNSError, match="runs one table"):
        one.set_guidance(3.0)


def test_the_server_batches_requests_at_their_own_guidance(family_artifact):
    from concurrent.futures import ThreadPoolExecutor

    from httpclient import serving

    art, _ = family_artifact
    noise = [np.random.default_rng(k).standard_normal((1, 1, 8, 8)).astype(np.float32) for k in range(4)]
    with serving(art) as srv:
        ws = [2.0, 2.5, 3.0, 4.0]

        def one(k):
            inputs = {"noise": noise[k], "labels": np.array([k]), "guidance": np.array([ws[k]], np.float32)}
            return srv.infer(art.name, inputs)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        runner = load(art)
        for k, (code, out) in enumerate(answers):
            assert code == 200, out
            assert np.allclose(out["sample"], runner(noise[k], np.array([k]), ws[k]), atol=1e-5)
        for guidance, msg in [(None, "missing input(s) guidance"), (9.0, "2..4"), (float("nan"), "2..4")]:
            inputs = {"noise": noise[0], "labels": np.array([1])}
            if guidance is not None:
                inputs["guidance"] = np.array([guidance], np.float32)
            code, answer = srv.infer(art.name, inputs)
            assert code == 400 and msg in answer["error"], answer


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
    from netfactories import diffusers_text_unet
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("text-fam")
    diffusers_text_unet((8, 16), 4, context_dim=8, heads=4).save_pretrained(root / "model" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "model" / "scheduler")
    g = torch.Generator().manual_seed(1)
    cond = {"cond": torch.randn(4, 3, 8, generator=g), "null": torch.randn(3, 8, generator=g) * 0.1}
    save_file(cond, str(root / "cond.safetensors"))
    return root


@pytest.mark.parametrize("model, size", [("mnist", (32, 28)), ("digits-text", (12, 12)), ("tiny-diffusers", (12, 8))])
def test_shipped_and_diffusers_models_compile_a_family(model, size, text_folder, tmp_path):
    """A family over guidance, compiled with a second size: guidance per sample at either size."""
    from bns_export.loaders import ModelOptions

    options = ModelOptions()
    if model == "tiny-diffusers":
        model, options = (
            f"diffusers:{text_folder / 'model'}",
            ModelOptions(cond_set=str(text_folder / "cond.safetensors")),
        )
    field = load_model(model, options, guidance=2.0)
    fam = _family(field, (1.5, 4.0), ("dpm++2m", "euler"), nfe=2, model_identity=field.network_identity())
    fam.save(tmp_path / "fam.json")
    m = compile_artifact(model, str(tmp_path / "fam.json"), "onnx", tmp_path / "a", options=options, max_batch=2,
                         sizes=f"{size[0]}x{size[1]}", log=lambda m: None)  # fmt: skip
    assert m["validation"]["passed"] and m["inputs"][-1]["name"] == "guidance"
    assert any(f"size {size[0]}x{size[1]}" in c["case"] for c in m["validation"]["cases"])
    runner = load(tmp_path / "a")
    g = torch.Generator().manual_seed(0)
    cond = field.cond_set[:2] if field.cond_shape is not None else torch.tensor([1, 2])
    for shape in (field.sample_shape, (*field.sample_shape[:-2], *size)):
        noise = torch.randn((2, *shape), generator=g)
        out = runner(noise, cond, torch.tensor([1.5, 3.0]))
        assert out.shape == (2, *shape)
        for i, w in enumerate([1.5, 3.0]):
            one = sample(load_model(model, options, guidance=w), fam.at(w), noise[i : i + 1], cond[i : i + 1])
            # the random-weight diffusers UNet reaches hundreds: fp32 rounding scales with it
            assert torch.allclose(out[i : i + 1], one, atol=1e-4 * max(1.0, float(one.abs().max())))


def test_an_unconditional_model_has_no_family(tmp_path):
    field = load_model("digits")
    _family(field, nfe=2, model_identity=field.network_identity()).save(tmp_path / "fam.json")
    r = CliRunner().invoke(
        main, ["compile", "-m", "digits", "-s", str(tmp_path / "fam.json"), "-o", str(tmp_path / "a")]
    )
    assert r.exit_code == 2 and "conditional model" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("fam.json.knot-2.json", "not a knot this tool wrote"),
        ("fam.json.ckpt.safetensors", "not a checkpoint this tool"),
    ],
)
def test_distill_family_never_overwrites_or_deletes_a_file_it_did_not_write(tmp_path, name, message):
    out = tmp_path / "fam.json"
    foreign = tmp_path / name  # a knot's file, or the joint stage's checkpoint
    foreign.write_text("my notes\n")
    field = load_model(GMM, guidance=2.0)
    cfg = DistillConfig(nfe=3, iterations=4, batch_size=8, val_every=2)

    def pairs(f):
        return ground_truth(f, 16, SEEDS.train), ground_truth(f, 16, SEEDS.val)

    with pytest.raises(BNSError, match=message):
        distill_family(field, (2.0, 3.0), pairs, cfg, out=out)
    assert foreign.read_text() == "my notes\n" and not out.exists()
