"""Reports as text: one function per report the API returns, so the CLI only prints and a service can too."""

from __future__ import annotations

from .contract import Manifest


def eval_text(report: dict) -> str:
    """One line for `evaluate_on`'s PSNR summary (with a classic reference, its ruler and whether the PSNR is
    near it: then the PSNR measures the reference, not the solver)."""
    line = (
        f"{report['solver']}: NFE {report['nfe']}, PSNR mean {report['psnr_mean']:.2f} dB, "
        f"min {report['psnr_min']:.2f}, median {report['psnr_median']:.2f}, std {report['psnr_std']:.2f} "
        f"over {report['n_samples']} samples (ground truth: {report['gt_nfe_mean']:.0f} NFE"
    )
    ruler = report.get("gt_ruler")
    if ruler is None:
        line += ")"
    else:
        near = report["psnr_mean"] > ruler - RULER_MARGIN
        line += f", a classic reference accurate to about {ruler:.1f} dB" + (
            f"; this PSNR is within {RULER_MARGIN:g} dB of it: it measures the reference, use a finer one)"
            if near
            else ")"
        )
    if "best_classic" in report:
        line += "\n" + equivalent_text(report)
    return line


def equivalent_text(report: dict) -> str:
    """The classic-equivalent NFE line of `eval --classic-equivalent`, with the best classic at each NFE."""
    curve = report["best_classic"]
    best = ", ".join(f"{c['solver']} {c['psnr_mean']:.2f} dB at {m}" for m, c in curve.items())
    n_eq, nfe = report["n_eq"], report["nfe"]
    if n_eq is None:
        return f"classic-equivalent NFE: above {max(curve)} (> {max(curve) / nfe:.1f}n); best classic: {best}"
    return f"classic-equivalent NFE: {n_eq:.1f} ({n_eq / nfe:.2f}n); best classic: {best}"


#: how far below a classic reference's ruler a PSNR must be to measure the solver rather than the reference
RULER_MARGIN = 10.0


#: the solver-file provenance a distillation summary shows
DISTILL_FIELDS = (
    "base_solver",
    "base_val_psnr",
    "val_psnr",
    "train_psnr",
    "iterations",
    "wall_time_s",
    "guidance",
    "world_size",
)


def distill_summary(solver, out) -> dict:
    """The summary of a distilled solver (`distill --json`): where it was written and how it trained; for a
    guidance family, each knot's."""
    if solver.meta.get("kind") == "bns-family":
        return {
            "out": str(out),
            "nfe": solver.nfe,
            "guidance_range": list(solver.guidance_range),
            "knots": [{"guidance": float(w), **distill_summary(t, out)} for w, t in zip(solver.knots, solver.tables)],
            "joint": solver.meta.get("joint"),
            "wall_time_s": solver.meta["wall_time_s"],
            "fingerprint": solver.fingerprint(),
        }
    return {
        "out": str(out),
        "nfe": solver.nfe,
        **{k: solver.meta[k] for k in DISTILL_FIELDS},
        "fingerprint": solver.fingerprint(),
    }


def distill_text(summary: dict) -> str:
    """One line for a distillation summary (one per knot for a family)."""
    if "knots" in summary:
        lo, hi = summary["guidance_range"]
        head = f"wrote {summary['out']}: BNS {summary['nfe']} NFE guidance family {lo:g}..{hi:g}, " + (
            f"{len(summary['knots'])} knots, {summary['wall_time_s']:.0f} s"
        )
        lines = [head] + [f"  w={k['guidance']:g}: " + _trained(k) for k in summary["knots"]]
        if summary.get("joint"):
            j = summary["joint"]
            lines.append(
                f"  joint: validation PSNR {j['val_psnr']:.2f} dB over {len(j['points'])} scales (chained "
                f"{j['val_psnr_start']:.2f} dB), {j['iterations']} iterations, {j['wall_time_s']:.0f} s"
            )
        return "\n".join(lines)
    return f"wrote {summary['out']}: BNS {summary['nfe']} NFE, " + _trained(summary)


def _trained(summary: dict) -> str:
    return (
        f"validation PSNR {summary['val_psnr']:.2f} dB (base {summary['base_solver']} "
        f"{summary['base_val_psnr']:.2f} dB), {summary['iterations']} iterations, {summary['wall_time_s']:.0f} s"
    )


def compile_text(out, manifest: dict) -> str:
    """One line for a published artifact."""
    v = manifest.get("validation")
    parity = f"parity min {v['psnr_min']:.1f} dB (gate {v['gate_db']:.0f})" if v else "not validated"
    m = Manifest.of(manifest)
    sizes = "" if m.sizes is None else f", sizes {m.sizes.describe()}"
    steps = f"{m.nfe} NFE"
    if m.tables:  # a loop graph: its tables by index
        steps = f"tables {', '.join(f'{i} {e.name} ({e.nfe} NFE)' for i, e in enumerate(m.tables))}, at most {m.nfe}"
    return f"wrote {out}: {m.format} {m.precision}, {steps}, batch 1..{m.max_batch}{sizes}, {parity}"


def validation_text(report: dict) -> str:
    """The parity report: one line per case, the TensorRT parser check, then PASS or FAIL."""
    lines = []
    for r in report["cases"]:
        gt = (
            f", vs GT: artifact {r['artifact_psnr_vs_gt']:.2f} / eager {r['eager_psnr_vs_gt']:.2f} dB"
            if "artifact_psnr_vs_gt" in r
            else ""
        )
        lines.append(
            f"{r['case']:<28} PSNR min {r['psnr_min']:.2f} median {r['psnr_median']:.2f} dB, "
            f"max |err| {r['max_abs_error']:.2e}{gt}"
        )
    trt = report.get("tensorrt_support")
    if trt is not None:
        bad = trt["unsupported_ops"] + trt["unsupported_dtypes"]
        lines.append(
            "TensorRT ONNX parser: " + ("all ops and dtypes supported" if not bad else "unsupported: " + ", ".join(bad))
        )
    lines.append(
        f"{'PASS' if report['passed'] else 'FAIL'}: min PSNR {report['psnr_min']:.2f} dB, "
        f"gate {report['gate_db']:.0f} dB ({report['precision']})"
    )
    return "\n".join(lines)


def samples_text(out, n_samples: int, solver) -> str:
    """One line for a written sample file."""
    return f"wrote {n_samples} samples to {out} ({solver.name}, {solver.nfe} NFE)"
