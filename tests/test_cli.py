"""The CLI end to end through click's runner: outputs, JSON, and one-line errors with exit code 2."""

import json

import numpy as np
import pytest
from cliresult import one_line_error, run

from bns_export.fields.analytic import gmm
from bns_export.solvers import baseline


@pytest.mark.parametrize("cmd", [[], ["models"], ["eval"], ["distill"], ["sample"]])
def test_help_everywhere(cmd):
    code, out, _ = run(*cmd, "--help")
    assert code == 0 and "Usage" in out


def test_models_lists_analytic_fields():
    code, out, _ = run("models", "--json")
    names = [m["name"] for m in json.loads(out)]
    assert code == 0 and "analytic:gmm" in names and "analytic:points" in names


def test_eval_json_reports_psnr():
    code, out, _ = run("eval", "-m", "analytic:gmm", "-s", "rk4", "--nfe", 8, "-n", 32, "--json")
    report = json.loads(out)
    assert code == 0
    assert {"psnr_mean", "psnr_min", "nfe", "n_samples"} <= report.keys()
    assert report["nfe"] == 8 and report["n_samples"] == 32 and report["psnr_min"] <= report["psnr_mean"]


def test_distill_then_eval_and_sample(tmp_path):
    out = tmp_path / "bns4.json"
    code, stdout, err = run(
        "distill",
        "-m",
        "analytic:gmm-cond",
        "-w",
        2,
        "--nfe",
        4,
        "--out",
        out,
        "--iterations",
        60,
        "--train-pairs",
        48,
        "--val-pairs",
        48,
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["guidance"] == 2.0 and summary["val_psnr"] > summary["base_val_psnr"]
    d = json.loads(out.read_text())
    assert d["schema_version"] == 1 and d["nfe"] == 4 and d["guidance"] == 2.0
    for key in ("model_fingerprint", "base_solver", "train_psnr", "val_psnr", "iterations", "wall_time_s"):
        assert key in d
    # guidance comes from the solver file
    code, stdout, _ = run("eval", "-m", "analytic:gmm-cond", "-s", out, "-n", 16, "--json")
    assert code == 0 and json.loads(stdout)["guidance"] == 2.0
    code, _, _ = run("sample", "-m", "analytic:gmm-cond", "-s", out, "-n", 6, "--label", 3, "-o", tmp_path / "s.npz")
    z = np.load(tmp_path / "s.npz")
    assert code == 0 and z["samples"].shape == (6, 1, 8, 8) and list(z["labels"]) == [3] * 6
    assert z["noise"].shape == (6, 1, 8, 8)
    code, _, _ = run("sample", "-m", "analytic:gmm-cond", "-s", out, "-n", 6, "-o", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_factory_model(tmp_path):
    code, out, err = run(
        "eval",
        "-m",
        "netfactories:tiny",
        "--prediction",
        "eps",
        "--schedule",
        "vp-linear",
        "--time-input",
        "s",
        "--shape",
        "1,4,4",
        "-s",
        "ddim",
        "--nfe",
        6,
        "-n",
        8,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["nfe"] == 6


def _bad_file(tmp_path, **change):
    d = baseline("euler", 4, gmm().schedule, 0.0, 1.0).to_json()
    d.update(change)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"a": [1.0, float("nan"), 1.0, 1.0]}, "NaN"),
        ({"times": [0.0, 0.5, 0.25, 0.75]}, "non-decreasing"),
        ({"times": [0.0, 0.5]}, "wrong lengths"),
        ({"schema_version": 7}, "unknown schema version"),
        ({"model_fingerprint": "0123456789abcdef"}, "model mismatch"),
    ],
)
def test_bad_solver_file_is_one_line_exit_2(tmp_path, change, expected):
    one_line_error(*run("eval", "-m", "analytic:gmm", "-s", _bad_file(tmp_path, **change), "-n", 4), expected)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["-m", "nope", "-s", "euler"], "unknown model"),
        (["-m", "analytic:nope", "-s", "euler"], "unknown model"),
        (["-m", "no_such_pkg.mod:make", "-s", "euler", "--shape", "1,4,4"], "importing model module"),
        (["-m", "netfactories:missing", "-s", "euler", "--shape", "1,4,4"], "has no callable"),
        (["-m", "netfactories:not_a_module", "-s", "euler", "--shape", "1,4,4"], "not a torch.nn.Module"),
        (["-m", "netfactories:broken", "-s", "euler", "--shape", "1,4,4"], "weights missing"),
        (["-m", "netfactories:wrong_shape", "-s", "euler", "--shape", "1,4,4"], "returned shape"),
        (["-m", "netfactories:tiny", "-s", "euler", "--shape", "1,5,4"], "on input of shape"),
        (["-m", "netfactories:tiny", "-s", "euler"], "needs --shape"),
        (["-m", "netfactories:tiny", "-s", "euler", "--shape", "1,x"], "bad --shape"),
        (["-m", "netfactories:tiny", "-s", "euler", "--shape", "1,4,4", "--prediction", "score"], "unknown prediction"),
        (["-m", "analytic:gmm", "-s", "rk5"], "unknown solver"),
        (["-m", "analytic:gmm", "-s", "midpoint", "--nfe", 5], "multiple of 2"),
        (["-m", "analytic:gmm", "-s", "euler", "-w", 2], "unconditional"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, expected):
    one_line_error(*run("eval", *args, "-n", 4), expected)


def test_solver_nfe_mismatch(tmp_path):
    one_line_error(*run("eval", "-m", "analytic:gmm", "-s", _bad_file(tmp_path), "--nfe", 8), "NFE mismatch")


def test_bad_outputs_write_nothing(tmp_path):
    one_line_error(*run("sample", "-m", "analytic:gmm", "-s", "euler", "-o", tmp_path / "x.jpg"), ".png or .npz")
    one_line_error(
        *run("sample", "-m", "analytic:gmm", "-s", "euler", "-o", tmp_path / "no" / "x.png"), "does not exist"
    )
    one_line_error(
        *run("distill", "-m", "analytic:gmm", "--nfe", 4, "-o", tmp_path / "no" / "s.json"), "does not exist"
    )
    one_line_error(
        *run("distill", "-m", "analytic:gmm", "--nfe", 4, "-o", tmp_path / "s.json", "--base", "rk9"), "unknown solver"
    )
    assert list(tmp_path.iterdir()) == []


def test_distill_init_warm_starts_from_a_table_file(tmp_path):
    """`--init TABLE.json` (alias of --base) starts from a distilled table: its validation PSNR is where the first run
    ended (the same seeded pairs); a table of another NFE is one line."""
    quick = ("-m", "analytic:gmm", "--iterations", 20, "--val-every", 5, "--train-pairs", 64, "--val-pairs", 32)
    code, out, err = run("distill", *quick, "--nfe", 4, "-o", tmp_path / "first.json")
    assert code == 0, err
    first = json.loads((tmp_path / "first.json").read_text())
    code, out, err = run("distill", *quick, "--nfe", 4, "--init", tmp_path / "first.json", "-o", tmp_path / "w.json")
    assert code == 0, err
    warm = json.loads((tmp_path / "w.json").read_text())
    assert warm["base_solver"].startswith("init first.json")
    assert abs(warm["base_val_psnr"] - first["val_psnr"]) < 1e-6
    one_line_error(
        *run("distill", *quick, "--nfe", 3, "--init", tmp_path / "first.json", "-o", tmp_path / "x.json"), "4 NFE"
    )
