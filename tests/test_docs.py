"""The user docs that state facts of the code, checked against it: docs/errors.md's exit codes and ranges (read
from the constants and the CLI's own option types) and docs/development.md's layout (every module of the package
named, every file it names there)."""

from __future__ import annotations

import re
from pathlib import Path

from bns_export import errors
from bns_export.checks import GUIDANCE_RANGE, MAX_SAMPLE_NUMEL
from bns_export.cli import BATCH, NFE, SEED, main
from bns_export.loaders.schedulers import MAX_TRAIN_STEPS
from bns_export.sizes import MAX_SIDE

DOCS = Path(__file__).resolve().parent.parent / "docs"
PACKAGE = Path(__file__).resolve().parent.parent / "bns_export"


def _option(command: str, name: str):
    return next(p for p in main.commands[command].params if p.name == name).type


def test_errors_md_states_the_codes_and_ranges_the_code_has():
    text = " ".join((DOCS / "errors.md").read_text().split())
    codes = {errors.EXIT_PARITY_FAILED: "failed parity gate", errors.EXIT_BAD_INPUT: "bad input",
             errors.EXIT_MISSING_BACKEND: "missing backend", errors.EXIT_INTERNAL: "unexpected exception"}  # fmt: skip
    for code, meaning in codes.items():
        assert re.search(rf"\*\*{code}\*\* for (a |an )?{meaning}", text), (code, meaning)
    rtol, atol = _option("eval", "rtol"), _option("eval", "atol")
    stated = [
        f"guidance {GUIDANCE_RANGE[0]:g}..{GUIDANCE_RANGE[1]:g}",
        f"`--rtol` {rtol.lo:g}..{rtol.hi:g}",
        f"`--atol` {atol.lo:g}..{atol.hi:g}",
        f"NFE {NFE.lo}..{NFE.hi}",
        f"batch {BATCH.lo}..{BATCH.hi}",
        f"seeds {SEED.lo}..2^{(SEED.hi + 1).bit_length() - 1}-1",
        f"sides 1..{MAX_SIDE}",
        f"at most 2^{MAX_SAMPLE_NUMEL.bit_length() - 1} numbers per sample",
        f"`num_train_timesteps` at most 10^{len(str(MAX_TRAIN_STEPS)) - 1}",
    ]
    assert SEED.hi == 2**63 - 1 and MAX_TRAIN_STEPS == 10 ** (len(str(MAX_TRAIN_STEPS)) - 1)
    missing = [s for s in stated if s not in text]
    assert not missing, missing


def test_development_md_names_every_module_and_only_files_that_exist():
    text = (DOCS / "development.md").read_text()
    layout = text.split("bns_export/", 1)[1].split("models/  tools/", 1)[0]
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") + sorted(
        p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    )
    unnamed = [m for m in top if not re.search(rf"(?<![\w/]){re.escape(m if m.endswith('/') else m + '.py')}", layout)]
    assert not unnamed, f"modules the layout does not name: {unnamed}"
    named = set(re.findall(r"(?<![\w./])([a-z_]+\.py)\b", layout))
    files = {p.name for p in PACKAGE.rglob("*.py")}
    assert named <= files, f"files the layout names that do not exist: {sorted(named - files)}"
