"""Real model sizes: compile random-weight SD-1.5- and SDXL-size UNets and measure time and peak memory.

    python tools/bench_scale.py                                  # SD-1.5 size, fp32, NFE 2 4 8 16
    python tools/bench_scale.py --models sdxl --precision fp16 --nfe 8
    python tools/bench_scale.py --models tiny --nfe 2 4          # a 13M-parameter UNet: a dry run in minutes

Each case is a separate `bns-export compile --no-validate` and then `bns-export validate`, each under
/usr/bin/time -v (peak resident memory of that process), then ONNX Runtime session creation in a fresh
process. The folders are written once under --work (random weights, seeded, fp32: 3.4 GB for SD-1.5,
10.3 GB for SDXL) with a DDPM scaled-linear eps scheduler and a two-prompt condition set. Run it
alone: two big jobs on one machine measure each other. Writes the `scale` result of docs/benchmarks.md; cases
not measured again keep their earlier rows, each naming the run that measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from benchdoc import git_rev, machine, save_result  # noqa: E402

_SD_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
#: name -> (UNet2DConditionModel config, condition tensors per prompt, what it stands for)
MODELS = {
    "tiny": (
        dict(
            block_out_channels=(64, 128, 256),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
            cross_attention_dim=256,
            attention_head_dim=8,
        ),
        {"encoder_hidden_states": (77, 256)},
        "a 13M-parameter SD-style UNet (dry run)",
    ),
    "sd15": (
        dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, **_SD_BLOCKS),
        {"encoder_hidden_states": (77, 768)},
        "the Stable Diffusion 1.5 UNet configuration",
    ),
    "sdxl": (
        dict(
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        {"encoder_hidden_states": (77, 2048), "text_embeds": (1280,)},
        "the SDXL base UNet configuration",
    ),
}


def build_folder(name: str, folder: Path, latent: int) -> Path:
    """A diffusers folder (unet/, scheduler/, model_index.json) and conditions.safetensors; kept for reruns."""
    if (folder / "model_index.json").exists():
        return folder
    import diffusers
    import torch
    from safetensors.torch import save_file

    config, conds, _ = MODELS[name]
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, **config)
    unet.save_pretrained(folder / "unet")
    del unet
    diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    ).save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    index["scheduler"] = ["diffusers", "DDPMScheduler"]
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for key, shape in conds.items():
        tensors[key] = torch.randn((2, *shape), generator=g)
        tensors[f"null.{key}"] = 0.1 * torch.randn(shape, generator=g)
    save_file(tensors, str(folder / "conditions.safetensors"))
    (folder / "model_index.json").write_text(json.dumps(index) + "\n")  # last: the folder is complete
    return folder


def anonymous_bytes(pid: int) -> int:
    """Resident anonymous memory of `pid` and its descendants (what must fit in RAM: file-backed pages, such
    as memory-mapped safetensors weights, are counted by the peak RSS but the kernel can drop them)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"RssAnon:\s+(\d+)", status).group(1)) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            pass
    return total


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under /usr/bin/time -v; its exit code, wall seconds, peak resident memory (bytes) and peak
    anonymous memory (sampled every 0.2 s)."""
    started, anon = time.time(), 0
    with open(log, "w") as f:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            anon = max(anon, anonymous_bytes(proc.pid))
            time.sleep(0.2)
    text = log.read_text()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "rc": proc.returncode,
        "wall_s": round(time.time() - started, 1),
        "peak_bytes": int(rss.group(1)) * 1024 if rss else None,
        "peak_anon_bytes": anon,
    }


SESSION = """
import sys, time, onnxruntime as ort
t = time.time(); ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]); print(time.time() - t)
"""


def parameter_count(folder: Path) -> int:
    """The UNet's parameters, from its safetensors headers (no weights loaded)."""
    import math

    from safetensors import safe_open

    total = 0
    for f in (folder / "unet").glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def run_case(
    name: str, folder: Path, precision: str, nfe: int, work: Path, gt: bool = True, earlier: dict | None = None
) -> dict:
    """Export (or, given the `earlier` row of an artifact still in `work`, keep its export), then validate."""
    exe = [sys.executable, "-c", "from bns_export.entry import main; main()"]
    art = work / f"{name}-{precision}-{nfe}"
    model = ["-m", f"diffusers:{folder}", "--cond-set", str(folder / "conditions.safetensors")]
    compile_cmd = [*exe, "compile", *model, "-w", "7.5", "-s", "dpm++2m", "--nfe", str(nfe), "--max-batch", "1"]
    compile_cmd += ["--device", "cpu", "--no-validate", "-o", str(art)] + ["--fp16"] * (precision == "fp16")
    row = {"model": name, "precision": precision, "nfe": nfe, "command": "bns-export " + shlex.join(compile_cmd[3:])}
    if earlier is not None and earlier.get("export", {}).get("rc") == 0 and (art / "manifest.json").exists():
        row["export"] = earlier["export"]
    else:
        row["export"] = timed(compile_cmd, work / f"{art.name}.compile.log")
    if row["export"]["rc"] != 0:
        return row
    row["artifact_bytes"] = sum(p.stat().st_size for p in art.iterdir() if p.is_file())
    no_gt = ["--no-ground-truth"] * (not gt)
    row["validate"] = timed(
        [*exe, "validate", str(art), "--device", "cpu", "--json", *no_gt], work / f"{art.name}.validate.log"
    )
    row["ground_truth"] = gt
    out = (work / f"{art.name}.validate.log").read_text()
    report = next((json.loads(line) for line in out.splitlines() if line.startswith("{")), None)
    if report:
        row["parity_min_db"] = report["psnr_min"]
        row["passed"] = report["passed"]
    res = subprocess.run([sys.executable, "-c", SESSION, str(art / "model.onnx")], capture_output=True, text=True)
    row["session_s"] = round(float(res.stdout.strip()), 2) if res.returncode == 0 else None
    return row


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f}"


def markdown(run: dict) -> str:
    commands = list(dict.fromkeys(f"`{r['run']}` (commit {r['commit']})" for r in run["rows"]))
    lines = [
        "## Model scale: SD-1.5 and SDXL-size UNets",
        "",
        "Commands, in the order run: " + "; ".join(commands) + f".  Machine: {run['machine']}.",
        "",
        "Random weights (the export does not depend on their values), 4 x 32 x 32 latents, 77 prompt tokens, "
        "guidance 7.5, dpm++2m, max batch 1, on the CPU. *export*: `compile --no-validate` (torch.export, ONNX "
        "conversion, the optimizer, the weights written once); *validate*: `validate` in a new process (the "
        "eager reference, ONNX Runtime, the ground truth of one pair, solved on the model's first case and cached; "
        "*(no GT)*: `validate --no-ground-truth`, parity only); *peak*: the process's maximum resident "
        "memory (/usr/bin/time -v); *anon*: its peak anonymous memory (sampled every 0.2 s), what must fit in RAM, "
        "since the rest of the peak is file pages (safetensors and ONNX weights are memory-mapped) that the kernel "
        "may drop; *ratio*: peak / the weights' bytes in the exported precision; *session*: ONNX Runtime "
        "InferenceSession creation in a fresh process. fp16 ratios are against the fp16 bytes: the export maps "
        "the fp32 weights (file pages) and halves them in place after the fp32 conformance vectors; validation "
        "runs the fp32 eager reference, frees it, then ONNX Runtime's CPU session of the fp16 graph, which casts "
        "the weights to fp32 as it runs (the CPU provider lacks fp16 kernels for most ops).",
        "",
        "| model | parameters | precision | NFE | export (s) | export peak (GiB) | anon | ratio | validate (s) | "
        "validate peak (GiB) | anon | ratio | session (s) | artifact (GiB) | parity (dB) |",
        "|---" * 15 + "|",
    ]
    for r in run["rows"]:
        w = r["weights_bytes"]
        e, v = r.get("export", {}), r.get("validate", {})

        def ratio(d: dict, w: int = w) -> str:
            return f"{d['peak_bytes'] / w:.2f}" if d.get("peak_bytes") else "n/a"

        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.0f}M | {r['precision']} | {r['nfe']} | "
            f"{e.get('wall_s', 'n/a')} | {gib(e.get('peak_bytes'))} | {gib(e.get('peak_anon_bytes'))} | {ratio(e)} | "
            f"{v.get('wall_s', 'n/a')} | {gib(v.get('peak_bytes'))} | {gib(v.get('peak_anon_bytes'))} | {ratio(v)} | "
            f"{r.get('session_s', 'n/a')} | {gib(r.get('artifact_bytes'))} | "
            + (f"{r['parity_min_db']:.1f}" if "parity_min_db" in r else "failed" if e.get("rc") else "n/a")
            + ("" if r.get("ground_truth", True) else " (no GT)")
            + " |"
        )
    notes = list(
        dict.fromkeys(
            f"{r['model']} {r['precision']} NFE {r['nfe']}: {r['note']}" for r in run["rows"] if r.get("note")
        )
    )
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


PRECISIONS = ("fp32", "fp16")


def case_key(row: dict) -> tuple:
    """A row's case: rows of a case measured again replace the earlier ones."""
    return (list(MODELS).index(row["model"]), PRECISIONS.index(row["precision"]), row["nfe"])


def earlier_rows(section: str) -> list[dict]:
    """The rows the result already holds (cases not measured again are kept; each row names its run)."""
    path = ROOT / "docs" / "results" / f"{section}.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    return [{"run": old["command"], "commit": old["commit"], **r} for r in old.get("rows", [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["sd15"], choices=list(MODELS))
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS)
    ap.add_argument("--nfe", nargs="+", type=int, default=[2, 4, 8, 16])
    ap.add_argument("--latent", type=int, default=32, help="latent height and width")
    ap.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/bns-scale", help="folders and artifacts")
    ap.add_argument("--section", default="scale", help="the result's name in docs/results/")
    ap.add_argument(
        "--no-ground-truth", action="store_true", help="validate parity only (the dopri5 solve of a big UNet is slow)"
    )
    ap.add_argument(
        "--keep-export", action="store_true", help="validate an artifact exported by an earlier run, keeping its row"
    )
    ap.add_argument("--note", default=None, help="a sentence recorded with this run's rows (how the machine was)")
    ap.add_argument("--render", action="store_true", help="only rewrite the result's text from its rows")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command, commit = "python tools/bench_scale.py " + shlex.join(sys.argv[1:]), git_rev()
    run = {"command": command, "commit": commit, "machine": machine(), "rows": earlier_rows(args.section)}
    if args.render:
        run["rows"].sort(key=case_key)
        save_result(args.section, {"kind": "text", **run, "body": markdown(run)})
        return
    for name in args.models:
        # fp32 weights, as users keep them; --fp16 halves them in the artifact, the eager reference stays fp32
        folder = build_folder(name, work / f"{name}-fp32", args.latent)
        params = parameter_count(folder)
        for precision in args.precision:
            for nfe in args.nfe:
                key = case_key({"model": name, "precision": precision, "nfe": nfe})
                earlier = next((r for r in run["rows"] if case_key(r) == key), None) if args.keep_export else None
                row = run_case(name, folder, precision, nfe, work, not args.no_ground_truth, earlier)
                row.update(parameters=params, weights_bytes=params * (2 if precision == "fp16" else 4))
                row.update(run=command, commit=commit, **({"note": args.note} if args.note else {}))
                print(json.dumps(row), flush=True)
                key = case_key(row)
                run["rows"] = sorted([r for r in run["rows"] if case_key(r) != key] + [row], key=case_key)
                save_result(args.section, {"kind": "text", **run, "body": markdown(run)})  # after every case


if __name__ == "__main__":
    main()
