"""Distillation at the size of users' models: peak memory and time of one iteration against NFE, micro-batch
and recomputation, against the floor (n forward + n backward network calls at the same batch).

    python tools/bench_distill.py                              # conv and tiny UNet, NFE 4/8/16, CPU
    python tools/bench_distill.py --models sd15 --nfe 4 8 --batch 1 --latent 64 --no-recompute-nfe   # SD-1.5 size
    python tools/bench_distill.py --probe conv --nfe 4         # one case in this process, JSON out (tests use it)

Each case runs in a fresh process (`--probe`), which builds the model with random weights and random pairs (the
memory and time of an iteration do not depend on the pairs' values), runs a forward pass without gradients,
then a warm-up iteration and a measured one, and reports how much its peak resident memory grew over the two
iterations (the model, the pairs and that forward pass excluded) and the measured iteration's wall time; the
floor is n network calls forward and backward at the same batch, measured in the same process (both under a
fixed glibc mmap threshold, so the peak counts live memory, not freed blocks kept in the heap). Run it alone:
two big jobs on one machine measure each other. Writes the `distill-scale` result of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def _peak_bytes() -> int:
    """This process's peak resident memory: VmHWM, its own address space's high-water mark (ru_maxrss would
    start at the RSS of the process that forked it, since Linux keeps the larger across fork and exec)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def conv_field():
    """A 3-layer conv net on 1x32x32 (152k parameters, 128-channel activations): activations far larger than the
    sample, so what an iteration keeps alive shows."""
    import torch
    from torch import nn

    from bns_export.fields import NetworkField
    from bns_export.fields.schedules import FMOT

    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (
                nn.Conv2d(2, 128, 3, padding=1),
                nn.Conv2d(128, 128, 3, padding=1),
                nn.Conv2d(128, 1, 3, padding=1),
            )

        def forward(self, x, t):
            h = torch.cat([x, t.reshape(-1, 1, 1, 1).expand_as(x)], 1)
            return self.c(torch.nn.functional.silu(self.b(torch.nn.functional.silu(self.a(h)))))

    torch.manual_seed(0)
    return NetworkField(Conv().eval(), FMOT(), (1, 32, 32), name="bench-conv"), None


def unet_field(name: str, latent: int):
    """A random-weight SD-style UNet of bench_scale's configurations through the diffusers adapter, with one
    prompt embedding per pair."""
    import diffusers
    import torch
    from bench_scale import MODELS

    from bns_export.fields import NetworkField
    from bns_export.fields.conditions import ConditionLayout, ConditionPart
    from bns_export.fields.schedules import DDPMDiscrete
    from bns_export.loaders.adapters import AdaptedNet, adapter_for

    config, conds, _ = MODELS[name]
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, **config).eval()
    unet.requires_grad_(False)
    layout = ConditionLayout(tuple(ConditionPart(k, tuple(v)) for k, v in conds.items()))
    net = AdaptedNet(unet, adapter_for("UNet2DConditionModel"), layout)
    schedule = DDPMDiscrete(torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2)
    prompts = torch.randn((2, *layout.shape), generator=torch.Generator().manual_seed(1))
    field = NetworkField(
        net, schedule, (4, latent, latent), prediction="eps", time_input="index", name=name, cond_set=prompts,
        condition_layout=layout,
    )  # fmt: skip
    return field, layout


def probe(model: str, nfe: int, batch: int, micro_batch: int | None, recompute: bool, latent: int) -> dict:
    """One case in this process: the iteration's peak-memory growth and time, and the floor."""
    import torch

    from bns_export.distill import BNSParams, DistillConfig, Trainer, TrainState
    from bns_export.groundtruth import GTSet
    from bns_export.parallel import SINGLE
    from bns_export.solvers import baseline

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    field, layout = conv_field() if model == "conv" else unet_field(model, latent)
    g = torch.Generator().manual_seed(0)
    shape = field.sample_shape
    noise, x1 = torch.randn((batch, *shape), generator=g), torch.randn((batch, *shape), generator=g)
    cond = None if layout is None else torch.randn((batch, *layout.shape), generator=g)
    pairs = GTSet(noise, cond, x1, 0.0, "bench")
    cfg = DistillConfig(nfe=nfe, base="euler", batch_size=batch, micro_batch=micro_batch, recompute=recompute)
    params = BNSParams(baseline("euler", nfe, field.schedule, field.t_lo, field.t_hi))
    trainer = Trainer.make(field, params, pairs, pairs, cfg, SINGLE)
    state = TrainState(run_id="bench")
    with torch.no_grad():  # the model's own forward working set, before any iteration
        field(field.start(noise), torch.tensor(0.5), cond)
    before = _peak_bytes()
    trainer.step(state)  # warm-up (Adam's state), then the timed iteration; the peak covers both
    started = time.perf_counter()
    trainer.step(state)
    seconds = time.perf_counter() - started
    grown = _peak_bytes() - before
    # the floor: n network calls forward and backward at the same batch (gradients to the input only)
    x = field.start(noise).detach().requires_grad_(True)
    t = torch.tensor(0.5)
    started = time.perf_counter()
    for _ in range(2):
        field(x, t, cond).sum().backward()
    call = (time.perf_counter() - started) / 2
    return {
        "model": model,
        "nfe": nfe,
        "batch": batch,
        "micro_batch": micro_batch,
        "recompute": recompute,
        "peak_growth_bytes": grown,
        "peak_bytes": _peak_bytes(),
        "iteration_s": round(seconds, 4),
        "floor_s": round(nfe * call, 4),
        "vs_floor": round(seconds / (nfe * call), 3),
        "parameters": sum(p.numel() for p in field.parameters()),
    }


def run_probe(model: str, nfe: int, batch: int, micro_batch: int | None, recompute: bool, latent: int) -> dict:
    """`probe` in a fresh process (its peak memory its own)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", model, "--nfe", str(nfe), "--batch", str(batch)]
    cmd += ["--latent", str(latent)] + (["--micro-batch", str(micro_batch)] if micro_batch else [])
    cmd += [] if recompute else ["--no-recompute"]
    # glibc raises its mmap threshold as big blocks are freed, after which freed activations linger in the heap and
    # the peak counts them; a fixed threshold returns every freed big block, so the peak is what was alive at once
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default=None, help="Run one case in this process and print it as JSON.")
    ap.add_argument("--models", nargs="+", default=["conv", "tiny"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument(
        "--no-recompute-nfe", nargs="*", type=int, default=None, help="NFEs also run without recomputation (all)"
    )
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--no-recompute", action="store_true")
    ap.add_argument("--latent", type=int, default=32, help="UNet latent side (64: SD-1.5 at 512x512).")
    args = ap.parse_args()
    if args.probe:
        case = (args.probe, args.nfe[0], args.batch, args.micro_batch, not args.no_recompute, args.latent)
        print(json.dumps(probe(*case)))
        return
    from benchdoc import RESULTS, git_rev, machine, save_result

    cases = []
    off = args.nfe if args.no_recompute_nfe is None else args.no_recompute_nfe
    for model in args.models:
        cases += [(model, nfe, args.batch, None, True) for nfe in args.nfe]
        cases += [(model, nfe, args.batch, None, False) for nfe in off]
        if args.batch > 1:  # the largest NFE in micro-batches of a quarter of the batch
            cases.append((model, args.nfe[-1], args.batch, max(1, args.batch // 4), True))
    rows = []
    for case in cases:
        row = {**run_probe(*case, args.latent), "latent": args.latent if case[0] != "conv" else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = ("python tools/bench_distill.py " + " ".join(sys.argv[1:])).strip()
    old = RESULTS / "distill-scale.json"
    earlier = json.loads(old.read_text()) if old.is_file() else {"rows": [], "commands": []}
    keys = {_key(r) for r in rows}
    rows = [r for r in earlier["rows"] if _key(r) not in keys] + rows  # cases not measured again keep their rows
    commands = [c for c in earlier.get("commands", []) if c["command"] != command] + [
        {"command": command, "commit": git_rev()}
    ]
    record = {"commands": commands, "machine": machine(), "rows": rows}
    save_result("distill-scale", {"kind": "text", **record, "body": markdown(record)})


def _gib(row: dict) -> str:
    return f"{row['peak_bytes'] / 2**30:.2f} GiB" if row.get("peak_bytes") else "-"


def _key(row: dict) -> tuple:
    return (row["model"], row.get("latent"), row["nfe"], row["batch"], row["micro_batch"], row["recompute"])


def markdown(record: dict) -> str:
    """The result as a section: the command, what the columns are, one row per case."""
    runs = "; ".join(f"`{c['command']}` (commit {c['commit']})" for c in record["commands"])
    head = (
        f"## Distillation memory and time against NFE\n\nCommands: {runs}. Machine: {record['machine']}.\n\n"
        "One distillation iteration (an Adam step on the BNS loss through the "
        "unrolled loop) after a warm-up iteration, random weights and pairs, on the CPU. *growth*: how much the "
        "process's peak resident memory grew over two iterations (the model, the pairs and a forward pass "
        "without gradients excluded); *vs floor*: "
        "the iteration's time over n network calls forward and backward at the same batch; *peak*: the "
        "process's whole peak resident memory (weights included).\n\n"
        "| model | parameters | latent | NFE | batch | micro-batch | recompute | growth | peak | iteration "
        "| vs floor |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['model']} | {r['parameters'] / 1e6:.2f}M | {r.get('latent') or '-'} | {r['nfe']} | {r['batch']} | "
        f"{r['micro_batch'] or '-'} | "
        f"{'on' if r['recompute'] else 'off'} | {r['peak_growth_bytes'] / 2**20:.0f} MiB | {_gib(r)} | "
        f"{r['iteration_s']:.2f} s | "
        f"{r['vs_floor']:.2f}x |"
        for r in record["rows"]
    ]
    return head + "\n".join(lines)


if __name__ == "__main__":
    main()
