"""Parity of an artifact against the eager PyTorch sampler, on the same fixed seeds.

Rebuilds the eager reference from the manifest (same model spec, same solver file, fp32),
runs both at batch 1 and at the artifact's maximum batch (and, for conditional models, with
every label set to -1, the unconditional branch), and reports per-sample PSNR (min and
median), max absolute error, and each one's PSNR against the dopri5 ground truth.
Gate: min per-sample PSNR >= 60 dB for fp32 artifacts, >= 35 dB for fp16 (Core ML's gate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .compile.unroll import UnrolledSampler
from .errors import BNSError
from .groundtruth import ground_truth
from .metrics import psnr_per_sample
from .models import ModelOptions, load_model
from .runtime import load
from .runtime.artifact import read_manifest
from .solvers.table import NSSolver

GATES = {"fp32": 60.0, "fp16": 35.0}
VALIDATE_SEED = 12345


def _reference(manifest: dict, folder: Path, device: str):
    spec = manifest["model_spec"]
    field = load_model(
        spec["model"], ModelOptions(**{**spec["options"], "shape": _shape(spec["options"])}), manifest["guidance"]
    )
    if field.fingerprint() != manifest["model_fingerprint"]:
        raise BNSError(
            f"model {spec['model']} changed since export (fingerprint {field.fingerprint()}, "
            f"artifact {manifest['model_fingerprint']})"
        )
    solver = NSSolver.load(folder / manifest["solver_file"])
    if solver.fingerprint() != manifest["solver_fingerprint"]:
        raise BNSError("the artifact's solver file does not match its manifest")
    sampler = UnrolledSampler(field, solver).eval().float().to(device)
    return field, sampler


def _shape(options: dict):
    return tuple(options["shape"]) if options.get("shape") else None


def validate_artifact(folder: str | Path, min_psnr: float | None = None, providers: list[str] | None = None) -> dict:
    """Run the parity report; `passed` is the gate's verdict."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    runner = load(folder, providers=providers)
    device = (
        "cuda" if manifest["format"] == "tensorrt" or str(manifest.get("device", "cpu")).startswith("cuda") else "cpu"
    )
    field, sampler = _reference(manifest, folder, device)
    n = int(manifest["max_batch"])
    gt = ground_truth(field, n, VALIDATE_SEED)
    noise = gt.noise.float()
    cases = [
        ("batch 1", noise[:1], None if gt.labels is None else gt.labels[:1], True),
        (f"batch {n}", noise, gt.labels, True),
    ]
    if gt.labels is not None:
        cases.append((f"batch {n}, unconditional", noise, torch.full_like(gt.labels, -1), False))
    gate = float(min_psnr) if min_psnr is not None else GATES[manifest["precision"]]
    rows = []
    for name, x, labels, has_gt in cases:
        with torch.no_grad():
            ref = sampler(x.to(device), None if labels is None else labels.to(device)).cpu()
        out = runner(x.numpy(), None if labels is None else labels.numpy())
        out = torch.as_tensor(np.asarray(out.cpu() if hasattr(out, "cpu") else out))
        if not torch.isfinite(out).all():
            psnr = torch.full((x.shape[0],), float("-inf"), dtype=torch.float64)
        else:
            psnr = psnr_per_sample(out, ref)
        row = {
            "case": name,
            "batch": int(x.shape[0]),
            "psnr_min": float(psnr.min()),
            "psnr_median": float(psnr.median()),
            "max_abs_error": float((out - ref).abs().max()),
        }
        if has_gt:
            x1 = gt.x1[: x.shape[0]].float()
            row["artifact_psnr_vs_gt"] = float(psnr_per_sample(out, x1).mean())
            row["eager_psnr_vs_gt"] = float(psnr_per_sample(ref, x1).mean())
        rows.append(row)
    psnr_min = min(r["psnr_min"] for r in rows)
    report = {
        "artifact": str(folder),
        "format": manifest["format"],
        "precision": manifest["precision"],
        "nfe": manifest["nfe"],
        "gate_db": gate,
        "psnr_min": psnr_min,
        "psnr_median": float(np.median([r["psnr_median"] for r in rows])),
        "max_abs_error": max(r["max_abs_error"] for r in rows),
        "cases": rows,
        "passed": bool(psnr_min >= gate),
        "seed": VALIDATE_SEED,
    }
    if manifest["format"] == "onnx":
        import onnx

        from .compile.trt_support import check_tensorrt_support

        model = onnx.load(str(folder / manifest["model_file"]), load_external_data=False)
        report["tensorrt_support"] = check_tensorrt_support(model)
    return report
