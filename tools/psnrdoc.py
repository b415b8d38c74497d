"""The PSNR benchmark's rendering: its settings (the parser its saved command is read back with), its tables,
rows and plot; what tools/bench_psnr.py writes and tools/benchdoc.py renders, imported by both (no cycle)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bns_export.demo import COMPARE  # noqa: E402
from bns_export.distill import DistillConfig  # noqa: E402
from bns_export.metrics import equivalent_nfe  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="PSNR against ground truth versus NFE (tools/bench_psnr.py).")
    ap.add_argument("--models", nargs="+", default=["digits", "mnist@1", "mnist@3"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 6, 8, 12, 16])
    ap.add_argument("--iterations", type=int, default=DistillConfig.iterations)
    ap.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    ap.add_argument("--base", default="auto")
    ap.add_argument("--lr", type=float, default=DistillConfig.lr, help="Adam learning rate")
    ap.add_argument("--train-pairs", type=int, default=520)
    ap.add_argument("--val-pairs", type=int, default=1024)
    ap.add_argument("--ceiling-pairs", type=int, default=64, help="test pairs for the GT ceiling (0: skip)")
    ap.add_argument("--test-pairs", type=int, default=256)
    ap.add_argument("--baselines-only", action="store_true", help="no distillation: the baselines at n and 2n")
    ap.add_argument("--ablation", default=None, help="model for the ablation runs (at NFE 8)")
    ap.add_argument("--ablation-iterations", type=int, default=None, help="budget of each ablation run")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where GT, baselines and BNS run")
    ap.add_argument("--section", default="psnr", help="the result's name: docs/results/SECTION.json")
    ap.add_argument("--json", default=None, help="where the run is saved as it goes (default: the result file)")
    ap.add_argument("--plot", default=None, help="(ignored: benchdoc.py draws docs/SECTION.png)")
    ap.add_argument("--gt-only", action="store_true", help="only the ground truth (cached) and the ceiling")
    ap.add_argument(
        "--render", nargs="+", metavar="JSON", help="only rewrite the section and plot from saved runs (merged)"
    )
    return ap


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        rows = {int(n): row for n, row in res["rows"].items()}  # JSON keeps NFEs as strings
        nfes = sorted(rows)
        solvers = sorted({k for r in rows.values() for k in r if not k.startswith("_")})
        for s in solvers:
            pts = [(n, rows[n].get(s)) for n in nfes]
            pts = [(n, v) for n, v in pts if v is not None]
            style = dict(lw=3, color="black", marker="o") if s == "BNS" else dict(lw=1, marker=".", alpha=0.8)
            ax.plot(*zip(*pts), label=s, **style)
        ax.set_title(f"{res['model']} (guidance {res['guidance']:g})")
        ax.set_xlabel("NFE")
        ax.set_ylabel("PSNR vs ground truth (dB)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def best_baseline(row: dict) -> float:
    """Best baseline PSNR of one NFE's row (keys starting with "_" are metadata)."""
    return max(v for k, v in row.items() if not k.startswith("_") and k != "BNS")


def best_name(row: dict) -> str:
    return max((v, k) for k, v in row.items() if not k.startswith("_") and k != "BNS")[1]


def gain(row: dict) -> float:
    return row["BNS"] - best_baseline(row)


def equivalent_text(curve: dict[int, float], psnr: float, n: int) -> str:
    """n_eq (and n_eq / n) of a BNS PSNR on the best-classic curve, or where it lies beyond the measured NFEs."""
    n_eq = equivalent_nfe(curve, psnr)
    if n_eq is None:
        return f"> {max(curve)} (> {max(curve) / n:.1f}n)"
    if n_eq <= min(curve) and psnr < curve[min(curve)]:
        return f"< {min(curve)}"
    return f"{n_eq:.1f} ({n_eq / n:.2f}n)"


def summary_lines(rows: dict[int, dict], nfes: list[int], res: dict | None = None) -> list[str]:
    """The table's closing rows: gains, the "BNS at n vs best baseline at 2n" target, cost, init."""
    res = res or {}
    gt_s, train_s = res.get("gt_train_val_s"), res.get("training_s")
    if not all("BNS" in rows[n] for n in nfes):  # a baselines-only run
        cells = {
            "best baseline at n": [f"{best_baseline(rows[n]):.2f} ({best_name(rows[n])})" for n in nfes],
            "best baseline at 2n NFE": [
                f"{best_baseline(rows[2 * n]):.2f} ({best_name(rows[2 * n])})" if 2 * n in rows else "n/a" for n in nfes
            ],
        }
        return [f"| {label} | " + " | ".join(c) + " |" for label, c in cells.items()] + [""]
    curve = {m: best_baseline(r) for m, r in rows.items() if any(k != "BNS" and not k.startswith("_") for k in r)}
    cells = {
        "BNS gain over best baseline": [f"{gain(rows[n]):+.2f}" for n in nfes],
        "classic-equivalent NFE n_eq (n_eq / n)": [equivalent_text(curve, rows[n]["BNS"], n) for n in nfes],
        "best baseline at 2n NFE": [f"{best_baseline(rows[2 * n]):.2f}" if 2 * n in rows else "n/a" for n in nfes],
        "BNS at n minus best baseline at 2n": [
            f"{rows[n]['BNS'] - best_baseline(rows[2 * n]):+.2f}" if 2 * n in rows else "n/a" for n in nfes
        ],
        "distillation wall time (s)": [f"{rows[n]['_distill_s']:.0f}" for n in nfes],
        "incl. train + val GT (s)": [
            f"{rows[n]['_distill_s'] + gt_s:.0f}" if gt_s else "GT cached" if gt_s is not None else "n/a" for n in nfes
        ],
        "share of the model's training time": [
            f"{(rows[n]['_distill_s'] + (gt_s or 0)) / train_s:.0%}" if train_s else "n/a" for n in nfes
        ],
        "iterations run": [str(rows[n]["_iterations"]) for n in nfes],
        "BNS init": [rows[n]["_bns_base"] for n in nfes],
    }
    return [f"| {label} | " + " | ".join(c) + " |" for label, c in cells.items()] + [""]


def plot_name(section: str) -> str:
    """The plot of a PSNR result, next to docs/benchmarks.md."""
    return f"{section}.png"


def rerun_command(record: dict) -> str:
    """The run's command as it would be typed today to remake this result: its own settings, the result's
    name as --section, and no --json / --plot paths (the result file and plot follow from the name)."""
    words, out, skip = shlex.split(record["command"]), [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("--json", "--plot", "--section"):
            skip = True
        else:
            out.append(w)
    return shlex.join([*out, "--section", record["name"]])


def run_markdown(record: dict) -> str:
    """A saved run (a "psnr" result) as markdown, with the settings parsed from its own command."""
    args = build_parser().parse_args(shlex.split(record["command"])[2:])
    text = markdown(record["results"], record.get("ablation"), args, {**record, "command": rerun_command(record)})
    has_bns = any("BNS" in row for res in record["results"] for row in res["rows"].values())
    return (
        text.replace("psnr_vs_nfe.png", plot_name(record["name"]))
        if has_bns
        else text.replace("![PSNR vs NFE](psnr_vs_nfe.png)\n", "")
    )


def markdown(results: list[dict], ablation_rows: list[dict] | None, args, run: dict) -> str:
    lines = [
        f"Command: `{run['command']}`{run.get('merged_note', '')} (commit {run.get('commit', '?')}).  "
        f"Machine: {run.get('machine', '?')}.\n",
        f"PSNR (dB, mean over {args.test_pairs} test pairs, data range 2) of each solver's sample against the "
        "dopri5 solution (rtol = atol = the model's ground-truth tolerance, 1e-5 unless said below). "
        + (
            "Baselines only (no distillation): the best classic table at n and at 2n NFE.\n"
            if args.baselines_only
            else f"BNS: {args.train_pairs} train / {args.val_pairs} validation "
            f"pairs, batch {args.batch_size}, at most {args.iterations} Adam iterations (learning rate {args.lr:g}, "
            f"{DistillConfig.warmup}-iteration warmup, b learned {DistillConfig.coef_scale!r}-scaled), "
            f"initialised from `{args.base}`. Wall times are "
            f"as measured on this machine, which may have run other jobs at the same time.\n"
        ),
        "![PSNR vs NFE](psnr_vs_nfe.png)\n",
    ]
    for res in results:
        res = {**res, "rows": {int(n): row for n, row in res["rows"].items()}}  # JSON keeps NFEs as strings
        # the BNS columns (a merged baselines-only run's NFEs then only feed n_eq and 2n), else the requested ones
        nfes = [n for n in res["rows"] if "BNS" in res["rows"][n]] or [
            n for n in res["rows"] if res["rows"][n].get("_requested")
        ]
        has_bns = any("BNS" in r for r in res["rows"].values())
        solvers = ["BNS"] * has_bns + [s for s in COMPARE if any(s in r for r in res["rows"].values())]
        lines.append(
            f"### {res['model']}, guidance {res['guidance']:g}{'' if has_bns else ', baselines only'} "
            "(ground truth: rtol = atol = "
            f"{res.get('gt_tolerance', 1e-5):g}, {res['gt_nfe_mean']:.0f} NFE mean)\n"
        )
        if "ceiling_mean" in res:
            lines.append(
                f"Ruler: the ground truth's own PSNR against a rtol = atol = {res['ceiling_tol']:g} solve on "
                f"{res['ceiling_pairs']} test pairs is {res['ceiling_mean']:.1f} dB mean "
                f"({res['ceiling_min']:.1f} min); "
                + (
                    f"train + validation GT took {res['gt_train_val_s']:.0f} s"
                    if res.get("gt_train_val_s")
                    else "train + validation GT came from the cache (its cost is not in this run)"
                    if "gt_train_val_s" in res
                    else "no train + validation GT (baselines only)"
                )
                + (f"; the model trained in {res['training_s']:.0f} s" if res.get("training_s") else "")
                + ".\n"
            )
        lines.append("| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
        lines.append("|---" * (len(nfes) + 1) + "|")
        for s in solvers:
            cells = [f"{res['rows'][n][s]:.2f}" if s in res["rows"][n] else "n/a" for n in nfes]
            lines.append(f"| {'**BNS**' if s == 'BNS' else s} | " + " | ".join(cells) + " |")
        lines += summary_lines(res["rows"], nfes, res)
    if ablation_rows:
        lines.append("### Ablations\n")
        lines.append("| run | init val PSNR | test PSNR | iterations | wall time (s) |\n|---|---|---|---|---|")
        for r in ablation_rows:
            lines.append(
                f"| {r['run']} | {r['init_val_psnr']:.2f} | {r['test_psnr']:.2f} | {r['iterations']} | "
                f"{r['wall_time_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"
