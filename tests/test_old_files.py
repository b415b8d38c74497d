"""Artifacts and solver files written by the release before named conditions and the loaders package
(commit 7685be9) still load and validate: class labels, today's single `cond`, and a distilled solver."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from bns_export.compile.parity import validate_artifact
from bns_export.runtime import load
from bns_export.solvers import NSSolver

DATA = Path(__file__).resolve().parent / "data" / "v1-artifacts"


@pytest.mark.parametrize(
    "name,inputs", [("gmm-cond-dpm4", ["noise", "labels"]), ("digits-text-dpm4", ["noise", "cond"])]
)
def test_old_artifacts_load_and_validate(name, inputs, tmp_path):
    art = tmp_path / name
    shutil.copytree(DATA / name, art)
    runner = load(art)
    assert runner.input_names == inputs and not runner.named_conditions
    report = validate_artifact(art)
    assert report["passed"] and report["psnr_min"] > 100


def test_old_solver_file_loads_for_its_model():
    from bns_export.evaluate import evaluate_on
    from bns_export.groundtruth import ground_truth
    from bns_export.loaders import load_model
    from bns_export.solvers import resolve_solver

    field = load_model("digits")
    solver = resolve_solver(str(DATA / "digits-bns4-solver.json"), field)
    assert isinstance(solver, NSSolver) and solver.nfe == 4
    report = evaluate_on(field, solver, ground_truth(field, 4, 0, rtol=1e-4, atol=1e-4))
    assert np.isfinite(report["psnr_mean"])
