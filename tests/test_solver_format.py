"""The solver file as a portable format: the numpy reference loop printed in docs/solver-format.md runs
shipped solver files and classic tables and matches the torch sampler; files validate against the schema."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bns_export.loaders import load_model, models_dir
from bns_export.solvers import NSSolver, baseline, sample

DOCS = Path(__file__).resolve().parent.parent / "docs"


def reference_loop():
    """The python block of docs/solver-format.md, executed as written."""
    block = re.search(r"```python\n(.*?)```", (DOCS / "solver-format.md").read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(block, "solver-format.md", "exec"), scope)
    return scope["reference_sample"]


def shipped_solvers() -> list[Path]:
    return sorted(models_dir().glob("*/bns-*.json"))


CASES = [(p.parent.name, str(p)) for p in shipped_solvers()] + [
    ("mnist@3", "dpm++3m"),
    ("analytic:gmm-cond@2", "unipc"),
    ("digits", "deis:karras"),
]


@pytest.mark.parametrize("model,solver", CASES, ids=[f"{m}-{Path(s).name}" for m, s in CASES])
def test_numpy_reference_loop_matches_the_torch_sampler(model, solver):
    name, _, w = model.partition("@")
    field = load_model(name, guidance=float(w or 1))
    if solver.endswith(".json"):
        table = NSSolver.load(solver)
    else:
        table = baseline(solver, 8, field.schedule, field.t_lo, field.t_hi)
    d = json.loads(json.dumps(table.to_json()))  # exactly what a file holds
    noise = torch.randn(3, *field.sample_shape, generator=torch.Generator().manual_seed(1), dtype=field.default_dtype)
    labels = None if field.num_classes is None else torch.tensor([0, 1, -1])

    def velocity(x: np.ndarray, t: float) -> np.ndarray:
        with torch.no_grad():
            return field(torch.from_numpy(x), t, labels).numpy()

    ref = reference_loop()(velocity, d, noise.numpy(), field.init_scale)
    ours = sample(field, table, noise, labels).numpy()
    assert np.abs(ref - ours).max() <= 1e-5 * max(1.0, np.abs(ours).max())


def test_solver_files_validate_against_the_json_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (test-only) is not installed")
    schema = json.loads((DOCS / "solver.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    from bns_export.fields.analytic import gmm

    files = [baseline(s, 8, gmm().schedule, 0.0, 1.0).to_json() for s in ("euler", "dpm++2m", "unipc", "rk4")]
    files += [json.loads(p.read_text()) for p in shipped_solvers()]
    from bns_export.solvers import SolverFamily

    family = SolverFamily([2.0, 5.0], [baseline(s, 8, gmm().schedule, 0.0, 1.0) for s in ("euler", "dpm++2m")])
    files.append(family.to_json())
    for d in files:
        jsonschema.validate(d, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**files[0], "nfe": 8.5}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**files[-1], "schema_version": 1}, schema)
