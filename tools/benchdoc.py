"""docs/benchmarks.md, made from the result files in docs/results/ by one command.

    python tools/benchdoc.py          # rewrite docs/benchmarks.md (and, with matplotlib, its plots)

Each benchmark script in tools/ saves its result there (`save_result`, `write_section`) and this page is
rendered again: a PSNR run (kind "psnr") becomes one section per model, the other tools' results (kind
"text") keep the text their tool wrote. PAGE says where each result goes; a result it does not name
goes under "Other results", so nothing measured is dropped silently.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the results the page is made from; BNS_BENCH_RESULTS redirects it (gpu_check gives each lane its own)
RESULTS = Path(os.environ.get("BNS_BENCH_RESULTS") or ROOT / "docs" / "results")
#: the page; BNS_BENCH_DOC redirects it
DOC = Path(os.environ.get("BNS_BENCH_DOC") or ROOT / "docs" / "benchmarks.md")

INTRO = """# Benchmarks

Current results, each from a script in `tools/` whose command is given with it. The page is made from
the result files in `docs/results/` by `python tools/benchdoc.py`; every script there updates its own
file and runs that command. PSNR is in dB against the exact ODE solution (adaptive dopri5 at the
model's ground-truth tolerance), mean over the test pairs, data range 2.
"""

#: the page, in order: (heading, result names, a sentence under the heading)
PAGE = (
    ("Analytic fields", ["psnr-analytic"], "Exact velocity fields: the solver's error is the only error."),
    ("digits (VP eps-model, unconditional)", ["psnr-digits"], ""),
    ("digits-text (FM-OT, text-conditioned, guidance 3)", ["psnr-digits-text"], ""),
    ("mnist (class-conditional, guidance 1 and 3)", ["psnr-mnist", "psnr-mnist-baselines"], ""),
    (
        "patches (held-out: v-prediction, VP cosine, photo patches)",
        ["psnr-patches", "psnr-patches-baselines"],
        "The model the recipe is never tuned on (`python tools/train_model.py patches`, models/patches/card.md): "
        "another data set, prediction type and schedule than the shipped models.",
    ),
    (
        "Ground-truth ceiling",
        ["gt-ceiling", "gt-reference"],
        "Each model's table above gives its ruler (dopri5 against a tighter solve); here, what a cheaper "
        "reference costs in accuracy.",
    ),
    (
        "Latency",
        ["latency-digits", "latency-mnist", "latency-digits-cuda", "latency-mnist-cuda", "latency-notes"],
        "",
    ),
    ("Weights stored once", ["weights-once"], ""),
    (
        "Guidance families",
        ["guidance-family", "guidance-family-digits-text-nfe8", "guidance-family-mnist", "guidance-family-mnist-nfe8"],
        "One solver file over a guidance range: interpolated tables against tables distilled at that guidance.",
    ),
    (
        "Image sizes",
        ["sizes", "sizes-mnist"],
        "A graph compiled with `--sizes` runs one table at every size: how far that is from a table distilled there.",
    ),
    ("Model scale", ["scale"], "Export and validation of real-sized networks: time and peak memory against NFE."),
    ("Distillation scale", ["distill-scale"], "What one distillation iteration holds and costs as the NFE grows."),
    (
        "Refit",
        ["refit", "finetune", "finetune-lora"],
        "New weights into an existing graph, against compiling them; and whether the graph's table still fits them.",
    ),
    (
        "One loop graph for several tables",
        ["loop"],
        "`--format onnx-loop`: the network once inside an ONNX Loop serving every table, against one unrolled "
        "graph per table.",
    ),
    (
        "Segments",
        ["segments-digits-text"],
        "Tables for img2img at a strength and for a base + refiner split, against classic solvers on the same part "
        "(the distillation times come from a run that shared the machine with other jobs).",
    ),
    ("On a GPU", ["gpu-check"], ""),
)

#: the recipe page (docs/recipe.md beside the results page): how the default distillation recipe was chosen
RECIPE_DOC = DOC.with_name("recipe.md")
RECIPE_INTRO = """# How the distillation recipe was chosen

The ablations behind the default recipe (`DistillConfig`), each from `tools/ablate_distill.py` with its command.
The page is made from the result files in `docs/results/` by `python tools/benchdoc.py`, with
[the benchmarks](benchmarks.md).
"""
RECIPE = (
    ("What the ablations say", ["ablation-notes"], ""),
    (
        "Ablations",
        [
            "ablation-ideas-digits",
            "ablation-ideas-longer-digits",
            "ablation-ball-digits",
            "ablation-pairs-digits",
            "ablation-ball-patches",
            "ablation-pairs-patches",
            "ablation-held-out-patches",
            "ablation-held-out-recipe-patches",
            "ablation-held-out-recipe-patches8",
            "ablation-time-lr-digits",
            "ablation-time-lr-gmm4",
            "ablation-time-lr-gmm16",
            "ablation-time-lr-points12",
            "ablation-time-lr-patches",
            "ablation-recipe-digits",
            "ablation-warmup-digits",
            "ablation-scale-gmm4",
            "ablation-scale-gmm16",
            "ablation-scale-points12",
            "ablation-patience",
        ],
        "",
    ),
)


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{date.today().isoformat()}"
    )


def git_rev() -> str:
    """The commit the figures come from: BNS_GIT_REV when set (a copied tree, e.g. on a lent GPU, can carry a
    stale .git), else git's HEAD."""
    if os.environ.get("BNS_GIT_REV"):
        return os.environ["BNS_GIT_REV"]
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
            ).stdout.strip()
            or "?"
        )
    except OSError:
        return "?"


def gpu_note(device: str) -> str:
    """', GPU NAME, TF32 off' for a CUDA run (benchmarks turn TF32 off), '' on the CPU."""
    from bns_export.devicespec import is_cuda

    if not is_cuda(device):
        return ""
    import torch

    return f", {torch.cuda.get_device_name(device)}, TF32 off"


def save_result(name: str, record: dict) -> None:
    """Store one result (a dict with "kind") as docs/results/NAME.json and render the page again."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"name": name, **record}, indent=2) + "\n")
    render()


def write_section(name: str, body: str) -> None:
    """Store a tool's own text (its command line first) as result NAME and render the page again."""
    save_result(name, {"kind": "text", "body": body.strip()})


def load_results() -> dict[str, dict]:
    """Every result record in RESULTS, by name (files without a "kind" are a tool's raw data)."""
    out = {}
    for p in sorted(RESULTS.glob("*.json")):
        record = json.loads(p.read_text())
        if isinstance(record, dict) and "kind" in record:
            out[p.stem] = record
    return out


def _demote(body: str) -> str:
    """A tool's text under a page heading: its "## " headings become "### ", its "### " become "#### "."""
    return "\n".join("#" + line if line.startswith("##") else line for line in body.splitlines())


def render_record(record: dict) -> str:
    """One result as markdown, by its kind."""
    if record["kind"] == "psnr":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from psnrdoc import run_markdown

        return run_markdown(record)
    return _demote(record["body"])


def machines(results: dict[str, dict]) -> list[str]:
    """The distinct machine lines the results were measured on."""
    seen = []
    for r in results.values():
        m = r.get("machine")
        if m and m not in seen:
            seen.append(m)
    return seen


#: the flags whose values tell two results of one tool apart, in a repeated heading
QUALIFIERS = ("--models", "--model", "--nfe", "--knots", "--sizes")


def _qualifier(body: str) -> str:
    """What sets a result apart from another of the same tool: its models, NFE, knots or sizes, from its command."""
    import re
    import shlex

    found = re.search(r"Command: `([^`]*)`", body)
    words = shlex.split(found.group(1)) if found else []
    picked, i = [], 0
    while i < len(words):
        if words[i] in QUALIFIERS:
            j = i + 1
            while j < len(words) and not words[j].startswith("--"):
                j += 1
            picked.append(f"{words[i].lstrip('-').rstrip('s')} {' '.join(words[i + 1 : j])}")
            i = j
        else:
            i += 1
    return ", ".join(picked)


def _undated(line: str) -> str:
    import re

    return re.sub(r"\s*\([^)]*\d{4}-\d{2}-\d{2}\)", "", line)


def tidy_headings(body: str, repeated: set[str]) -> str:
    """A result's headings as the page shows them: no dates or "first run" notes in a title (history is git's),
    and a title other results on the page share qualified by what sets this one apart (its command's models,
    NFE, knots or sizes)."""
    lines = []
    for line in body.splitlines():
        if line.startswith("#"):
            line = _undated(line)
            if line in repeated:
                line = f"{line} ({_qualifier(body) or 'another run'})"
        lines.append(line)
    return "\n".join(lines)


def _page(intro: str, page: tuple, results: dict[str, dict], placed: set[str]) -> list[str]:
    """A page's parts: its intro, then each section's heading, note and results (each result's own section)."""
    sections = []
    for heading, names, note in page:
        present = [n for n in names if n in results]
        if present:
            sections.append((heading, note, [render_record(results[n]) for n in present]))
            placed.update(present)
    titles = [_undated(line) for _, _, bodies in sections for b in bodies for line in b.splitlines() if line[:1] == "#"]
    repeated = {t for t in titles if titles.count(t) > 1}
    parts = [intro]
    for heading, note, bodies in sections:
        parts.append(f"## {heading}\n" + (f"\n{note}\n" if note else ""))
        parts += [tidy_headings(b, repeated) for b in bodies]
    return parts


def _write(path: Path, parts: list[str]) -> str:
    text = "\n\n".join(p.strip() for p in parts) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def render() -> str:
    """Write DOC and RECIPE_DOC from RESULTS (and re-plot PSNR runs when matplotlib is there); return DOC's text."""
    results = load_results()
    placed: set[str] = set()
    recipe = _page(RECIPE_INTRO, RECIPE, results, placed)
    parts = _page(INTRO, PAGE, results, placed)
    rest = [n for n in results if n not in placed]
    if rest:
        parts.append("## Other results\n")
        parts += [render_record(results[n]) for n in rest]
    parts.append(
        "## How measured\n\nEach section gives its command and commit; the distillation recipe's ablations are on "
        "[their own page](recipe.md). The machines:\n\n"
        + "\n".join(f"- {m}" for m in machines(results))
        + "\n\nRegenerate this page with `python tools/benchdoc.py` (plots need matplotlib: "
        "`pip install -e .[train]`).\n"
    )
    _plots(results)
    _write(RECIPE_DOC, recipe)
    return _write(DOC, parts)


def _plots(results: dict[str, dict]) -> None:
    """Re-draw each PSNR run's plot from its numbers (skipped, keeping the committed plot, without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from psnrdoc import plot, plot_name

    for name, r in results.items():
        if r["kind"] == "psnr" and any("BNS" in row for res in r["results"] for row in res["rows"].values()):
            plot(r["results"], DOC.parent / plot_name(name))


if __name__ == "__main__":
    render()
    print(f"wrote {DOC.relative_to(ROOT) if DOC.is_relative_to(ROOT) else DOC} from {len(load_results())} results")
