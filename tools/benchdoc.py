"""Replace one marked section of docs/benchmarks.md, so each benchmark script owns its part."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the document the sections go to; BNS_BENCH_DOC redirects it (gpu_check gives each concurrent lane its own)
DOC = Path(os.environ.get("BNS_BENCH_DOC") or ROOT / "docs" / "benchmarks.md")
HEADER = "# Benchmarks\n\nEvery figure here is written by a script in `tools/`; each section names its command.\n"


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


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
