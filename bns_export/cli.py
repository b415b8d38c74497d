"""`bns-export` command line: a thin click layer over the Python API.

Every user-caused problem is a BNSError, printed as one line `error: ...` with its exit code.
Progress goes to stderr, so `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .backends import BACKENDS, CODE_FORMATS, DEFAULT_FORMAT, formats_with
from .checks import GUIDANCE_RANGE, KNOT_SPACING, GuidanceFamily, Integer, Number, sample_shape
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, BNSError
from .fields import PREDICTIONS, SCHEDULES, TIME_INPUTS
from .interrupts import (
    Interrupted,
    ignore_late_signals,
    mark_finished,
    pending,
    raise_if_interrupted,
    signals_as_interrupts,
)
from .serve import LIMIT_RANGES
from .solvers import BASELINES
from .solvers.grids import GRIDS

# the number options' ranges, shared where several commands take the same option
GUIDANCE = Number(*GUIDANCE_RANGE)  # classifier-free guidance scale w (1 = none)
#: every solver name and time grid, from their registries
SOLVER_HELP = (
    f"Classic solver ({', '.join(BASELINES)}; optional :{'|:'.join(GRIDS)} time grid) or a solver file (.json)."
)
NFE = Integer(1, 64)
LOOP_FORMATS = ", ".join(formats_with("loop"))
SEED = Integer(0, 2**63 - 1)
BATCH = Integer(1, 65536)
GATE = Number(0, 1000)  # parity gate, dB


def _shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise BNSError(f"bad --shape {value!r}: expected comma-separated sizes such as 1,28,28") from None
    return sample_shape(shape)


def model_options(fn=None, *, family: bool = False):
    """--model and the options describing a user's network, shared by every command; family=True: -w may
    also name a guidance family's knots (distill)."""
    if fn is None:
        return functools.partial(model_options, family=True) if family else model_options

    @click.option(
        "--model",
        "-m",
        required=True,
        help="Shipped model name, analytic:NAME, diffusers:PATH (a save_pretrained folder), or package.module:factory.",
    )
    @click.option(
        "--prediction",
        default=None,
        help=f"What a user network predicts: {'|'.join(PREDICTIONS)} (default velocity; diffusers: its config).",
    )
    @click.option(
        "--schedule",
        default=None,
        help=f"The network's noise schedule: {'|'.join(SCHEDULES)} (default fm-ot).",
    )
    @click.option(
        "--time-input",
        default=None,
        help=f"The network's time input: {'|'.join(TIME_INPUTS)} (t ours, default; s = 1 - t; index a DDPM step; "
        "sigma EDM's; flow-timestep 1000 (1 - t); edm-atan 2 atan(sigma) / pi, the cosine DPM-Solver's).",
    )
    @click.option(
        "--train-steps",
        type=Integer(2, 1_000_000),
        default=1000,
        show_default=True,
        help="DDPM training steps (ddpm schedule).",
    )
    @click.option("--shape", default=None, help="Sample shape of a user network, e.g. 1,28,28.")
    @click.option(
        "--num-classes", type=Integer(1, 1_000_000), default=None, help="Classes of a conditional user network."
    )
    @click.option(
        "--cond-set",
        default=None,
        help="Tensor conditioning: safetensors file with one NAME (N, ...) tensor per input the model takes "
        "(encoder_hidden_states; SDXL text_embeds [time_ids], SD3/Flux pooled_projections) and null.NAME, its "
        "unconditional value (default zeros); a single 'cond' (+ 'null') for one-embedding models. "
        "`bns-export conditions` writes one from prompts.",
    )
    @click.option(
        "--lora",
        "loras",
        multiple=True,
        help="A LoRA file (diffusers/PEFT safetensors) fused into a diffusers network, FILE or FILE:SCALE; repeatable.",
    )
    @click.option(
        "--guidance",
        "-w",
        type=GuidanceFamily() if family else GUIDANCE,
        default=None,
        help="Classifier-free guidance scale (1 = none; default: the solver file's, else 1)."
        + (
            " A range LO:HI[:K] or a list W1,W2,... distils a guidance family: one table per knot (K knots, "
            f"default one every {KNOT_SPACING:g}), interpolated between them."
            if family
            else " With a guidance-family solver file: any scale in its range."
        ),
    )
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        from .loaders import ModelOptions

        kw["model_opts"] = ModelOptions(
            prediction=kw.pop("prediction"),
            schedule=kw.pop("schedule"),
            time_input=kw.pop("time_input"),
            train_steps=kw.pop("train_steps"),
            shape=_shape(kw.pop("shape")),
            num_classes=kw.pop("num_classes"),
            cond_set=kw.pop("cond_set"),
            loras=kw.pop("loras"),
        )
        return fn(*args, **kw)

    return wrapper


def _nonempty(ctx, param, value: str | None) -> str | None:
    """A spec option given as '' is a mistake, never 'none'."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty (leave the option out instead)")
    return value


decoder_option = click.option(
    "--decoder",
    default=None,
    callback=_nonempty,
    help="Latent models: append a decoder so the output is an image: vae (the diffusers folder's vae/), "
    "a diffusers autoencoder folder, or package.module:factory.",
)


def gt_options(fn):
    """--rtol, --atol, --cache-dir and --reference of the ground truth."""
    fn = click.option("--cache-dir", default=None, help="Ground-truth cache (default ~/.cache/bns-export/gt).")(fn)
    fn = click.option(
        "--reference",
        default=None,
        help="Ground truth by dopri5 (default) or, for models too big for it, a classic solver at a fixed NFE: "
        "SOLVER[:GRID]@NFE, e.g. dpm++2m:karras@64 (its accuracy is measured against dopri5 on 8 pairs and reported).",
    )(fn)
    dflt = "[default: the model's, 1e-5 unless its config.json sets gt_tolerance]"
    fn = click.option("--atol", type=Number(1e-12, 0.1), default=None, help=f"Ground-truth dopri5 atol. {dflt}")(fn)
    return click.option("--rtol", type=Number(1e-10, 0.1), default=None, help=f"Ground-truth dopri5 rtol. {dflt}")(fn)


def segment_options(fn):
    """--interval / --strength / --denoising-end / --denoising-start: the part of the trajectory a pipeline runs,
    parsed once into a fields.segment.SegmentSpec (`segment`)."""

    @click.option("--interval", default=None, help="Segment T0:T1 of the model's time (0 noise, 1 data).")
    @click.option(
        "--strength", type=Number(0, 1), default=None, help="img2img / inpainting strength S: the segment 1-S:end."
    )
    @click.option(
        "--denoising-end", type=Number(0, 1), default=None, help="A base model's denoising_end F: the segment start:F."
    )
    @click.option(
        "--denoising-start", type=Number(0, 1), default=None, help="A refiner's denoising_start F: the segment F:end."
    )
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        from .fields.segment import SegmentSpec

        names = ("interval", "strength", "denoising_end", "denoising_start")
        kw["segment"] = SegmentSpec.parse(*(kw.pop(k) for k in names))
        return fn(*args, **kw)

    return wrapper


def device_option(fn):
    """--device: where models, ground truth and samplers run (parsed by devices.resolve_device)."""
    return click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu).")(
        fn
    )


def network_dtype_option(fn):
    """--network-dtype: the precision the network runs in (solver, loss and ground truth stay fp32)."""
    return click.option(
        "--network-dtype",
        type=click.Choice(["fp32", "bf16", "fp16"]),
        default="fp32",
        show_default=True,
        help="Network precision (autocast; for GPUs). Solver state, loss and ground truth stay fp32.",
    )(fn)


def trust_options(fn):
    """--public-key, --require-signature and --trust-engine-code: what an artifact must show before it is opened
    (runtime.OpenPolicy), shared by every command that opens or serves one."""

    @click.option(
        "--public-key",
        default=None,
        help="Ed25519 public key (PEM): the manifest's signature must verify with it (default $BNS_EXPORT_PUBLIC_KEY).",
    )
    @click.option(
        "--require-signature",
        is_flag=True,
        default=None,
        help="Refuse an unsigned artifact (default: on when BNS_EXPORT_REQUIRE_SIGNATURE=1).",
    )
    @click.option(
        "--trust-engine-code",
        is_flag=True,
        help=f"Open {', '.join(CODE_FORMATS[:-1])} and {CODE_FORMATS[-1]} artifacts without --public-key: loading "
        "them runs native code they carry (ONNX artifacts are data). Only for artifacts you built or trust.",
    )
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        from .runtime.artifact import OpenPolicy

        kw["policy"] = OpenPolicy.resolve(
            kw.pop("public_key"), kw.pop("require_signature"), kw.pop("trust_engine_code")
        )
        return fn(*args, **kw)

    return wrapper


def handle_errors(fn):
    """Map BNSError (and SIGINT/SIGTERM/SIGHUP) to one line on stderr and the exit code (128 + signal)."""

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        try:
            with signals_as_interrupts():
                result = fn(*args, **kw)
                raise_if_interrupted()  # a signal somebody swallowed still ends the command
                mark_finished()
                return result
        except KeyboardInterrupt as e:
            _interrupted(e.signum if isinstance(e, Interrupted) else signal.SIGINT)
        except BNSError as e:
            if pending():
                _interrupted(pending())
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except Exception as e:  # a model's own error mid-run, or a bug: still one line, never a traceback
            if pending():  # e.g. an import interrupted half-way, failing later
                _interrupted(pending())
            if os.environ.get("BNS_EXPORT_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            click.echo(f"error: unexpected {type(e).__name__}: {first} (BNS_EXPORT_DEBUG=1 shows where)", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _interrupted(signum: int) -> None:
    click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
    sys.exit(128 + signum)


class CLI(click.Group):
    """click's group, with every usage error (bad option value, unknown option, missing argument)
    printed as one line `error: ...` with exit code 2, like the errors the commands raise."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.MissingParameter as e:
            return _exit(f"error: {e.format_message().splitlines()[0]}", EXIT_BAD_INPUT, standalone_mode)
        except click.exceptions.BadParameter as e:
            hint = e.param_hint if isinstance(e.param_hint, str) else (e.param.opts[0] if e.param else "value")
            message = e.message if e.message.startswith("-") else f"invalid {hint}: {e.message}"
            return _exit(f"error: {message}", EXIT_BAD_INPUT, standalone_mode)
        except click.exceptions.UsageError as e:
            return _exit(f"error: {e.format_message().splitlines()[0]}", EXIT_BAD_INPUT, standalone_mode)
        except click.exceptions.Abort:
            return _exit("interrupted (SIGINT)", 130, standalone_mode)
        except click.exceptions.ClickException as e:
            return _exit(f"error: {e.format_message()}", e.exit_code, standalone_mode)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _exit(line: str, code: int, standalone_mode: bool):
    click.echo(line, err=True)
    if standalone_mode:
        sys.exit(code)
    return code


class DistillBar:
    """The "distilling" progress bar, opened at distill_model's first report (its progress(done, total, text)),
    on stderr, or nowhere on the other ranks of a torchrun world (known once distill_model has joined it)."""

    def __init__(self) -> None:
        self.bar = None

    def __enter__(self) -> DistillBar:
        return self

    def __call__(self, done: int, total: int, text: str) -> None:
        if self.bar is None:
            from .parallel import current_world

            shown = sys.stderr if current_world().is_main else io.StringIO()
            self.bar = click.progressbar(length=total, label="distilling", file=shown, item_show_func=str)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos, text)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


@contextlib.contextmanager
def _bar(label: str, n: int):
    """A progress bar on stderr for n ground-truth pairs, as the update(pairs done) it takes (distill_model's and
    eval's ground_truth_bar)."""
    with click.progressbar(length=n, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


@click.group(cls=CLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bns-export")
def main() -> None:
    """Distill Bespoke Non-Stationary (BNS) few-step solvers for diffusion and flow models."""


@main.command("models")
@handle_errors
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_cmd(as_json: bool) -> None:
    """List the available velocity models."""
    from .loaders import list_models

    models = list_models()
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    for m in models:
        click.echo(f"{m['name']:<22} {m['kind']:<9} {m['summary'].splitlines()[0] if m['summary'] else ''}")


@main.command("eval")
@handle_errors
@model_options
@click.option(
    "--solver",
    "-s",
    required=True,
    help=SOLVER_HELP,
)
@click.option("--nfe", type=NFE, default=None, help="NFE for a baseline (default 8); checked against a file.")
@click.option("--n-samples", "-n", type=Integer(1, 1_000_000), default=256, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the evaluation noise.")
@gt_options
@segment_options
@device_option
@network_dtype_option
@click.option(
    "--classic-equivalent",
    is_flag=True,
    help="Also find the classic-equivalent NFE: where the best classic solver (every solver and grid, at n, 1.5n, "
    "2n and 3n) reaches this PSNR.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_cmd(
    model,
    model_opts,
    guidance,
    solver,
    nfe,
    n_samples,
    seed,
    rtol,
    atol,
    cache_dir,
    reference,
    segment,
    device,
    network_dtype,
    classic_equivalent,
    as_json,
) -> None:
    """PSNR of a solver's samples against the exact (dopri5) ODE solution (on a segment: from x(T0) to x(T1))."""
    from .devices import resolve_device
    from .distill import Pairs, solve_pairs
    from .evaluate import classic_equivalent as equivalent
    from .evaluate import evaluate_on, load_with_solver
    from .parallel import init_world
    from .reports import eval_text

    world, dev = init_world(resolve_device(device))
    field, ns = load_with_solver(model, solver, model_opts, guidance, nfe, dev, network_dtype, segment or True)
    gt = solve_pairs(field, Pairs(rtol=rtol, atol=atol, cache_dir=cache_dir, reference=reference), n_samples, seed,
                     "ground truth", world, _bar)  # fmt: skip
    report = evaluate_on(field, ns, gt, world)
    report.update(model=model, guidance=field.guidance, seed=seed, device=dev, world_size=world.size)
    if classic_equivalent:
        report.update(equivalent(field, gt, report["psnr_mean"], ns.nfe, world))
    if not world.is_main:
        return
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(eval_text(report))


@main.command("distill")
@handle_errors
@model_options(family=True)
@click.option("--nfe", type=NFE, required=True, help="Function evaluations of the solver.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Solver file to write (.json).")
@click.option(
    "--base",
    "--init",
    "base",
    default="auto",
    show_default=True,
    help="Base solver for initialisation: 'auto' starts from the best of the classic solvers on the validation "
    "set; 'paper' from midpoint (even NFE) or Euler (odd); a solver spec such as unipc:karras; or a solver file "
    "(a table distilled for a base model, to warm-start a fine-tune's).",
)
@click.option(
    "--precondition",
    type=Number(0, 100, lo_open=True),
    default=None,
    help="Preconditioning sigma_0 of the base solver.",
)
@click.option("--iterations", type=Integer(1, 10_000_000), default=2000, show_default=True)
@click.option("--batch-size", type=Integer(1, 1_000_000), default=128, show_default=True)
@click.option("--lr", type=Number(0, 10, lo_open=True), default=3e-2, show_default=True, help="Adam learning rate.")
@click.option(
    "--time-lr",
    type=Number(0, 1000, lo_open=True),
    default=1.0,
    show_default=True,
    help="The times' learning rate as a multiple of --lr (the coefficients take --lr).",
)
@click.option(
    "--warmup",
    type=Integer(0, 10_000_000),
    default=100,
    show_default=True,
    help="Iterations of linear learning-rate ramp, at the start and after every plateau restart.",
)
@click.option("--train-pairs", type=Integer(1, 10_000_000), default=520, show_default=True)
@click.option("--val-pairs", type=Integer(1, 10_000_000), default=1024, show_default=True)
@click.option("--val-every", type=Integer(1, 10_000_000), default=25, show_default=True)
@click.option(
    "--micro-batch",
    type=Integer(1, 1_000_000),
    default=None,
    help="Pairs per forward/backward pass, gradients accumulated over --batch-size (the same table, less memory).",
)
@click.option(
    "--recompute/--no-recompute",
    default=None,
    help="Recompute each network call's activations in the backward pass: memory flat in the NFE, one more "
    "forward call per step but the last (default: for networks of 10M parameters or more).",
)
@click.option("--no-resume", is_flag=True, help="Ignore a checkpoint left by an interrupted run.")
@click.option(
    "--joint/--no-joint",
    default=True,
    show_default=True,
    help="With a guidance family: after the knots, train them together on ground truth at the knots and the "
    "midpoints between them, so the tables interpolated between knots are trained too (costs the midpoints' "
    "ground truth and one more distillation's iterations).",
)
@gt_options
@segment_options
@device_option
@network_dtype_option
@click.option("--json", "as_json", is_flag=True, help="Print the solver summary as JSON.")
def distill_cmd(
    model,
    model_opts,
    guidance,
    nfe,
    out,
    base,
    precondition,
    iterations,
    batch_size,
    lr,
    time_lr,
    warmup,
    train_pairs,
    val_pairs,
    val_every,
    micro_batch,
    recompute,
    no_resume,
    joint,
    rtol,
    atol,
    cache_dir,
    reference,
    segment,
    device,
    network_dtype,
    as_json,
) -> None:
    """Train a BNS solver for a model at a fixed NFE (or a family of them over a guidance range), on the whole
    trajectory or the segment a pipeline runs (--strength, --denoising-end, --denoising-start, --interval)."""
    from .distill import DistillConfig, Pairs, distill_model
    from .parallel import current_world
    from .reports import distill_summary, distill_text

    cfg = DistillConfig(
        nfe=nfe,
        base=base,
        precondition=precondition,
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        time_lr=time_lr,
        warmup=warmup,
        val_every=val_every,
        micro_batch=micro_batch,
        recompute=recompute,
    )
    with DistillBar() as progress:
        solver = distill_model(
            model, out, cfg, options=model_opts, guidance=guidance, pairs=Pairs(train_pairs, val_pairs, rtol, atol,
            cache_dir, reference), segment=segment, device=device, network_dtype=network_dtype, resume=not no_resume,
            joint=joint, progress=progress, ground_truth_bar=_bar,
        )  # fmt: skip
    if current_world().is_main:
        summary = distill_summary(solver, Path(out))
        click.echo(json.dumps(summary) if as_json else distill_text(summary))


@main.command("sample")
@handle_errors
@model_options
@click.option("--solver", "-s", required=True, help=SOLVER_HELP)
@click.option("--nfe", type=NFE, default=None, help="NFE for a baseline (default 8).")
@click.option("--n-samples", "-n", type=Integer(1, 1_000_000), default=16, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--label", type=Integer(0, 1_000_000), default=None, help="One class for every sample (default: random classes)."
)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="FILE.png (grid) or FILE.npz.")
@decoder_option
@device_option
@network_dtype_option
def sample_cmd(
    model, model_opts, guidance, solver, nfe, n_samples, seed, label, out, decoder, device, network_dtype
) -> None:
    """Write samples: a PNG grid, or an .npz with noise, labels and samples (and images, with --decoder)."""
    from .devices import resolve_device
    from .evaluate import check_sample_path, draw_samples, load_with_solver, write_samples
    from .loaders.decoders import load_decoder
    from .reports import samples_text

    check_sample_path(out)
    field, ns = load_with_solver(model, solver, model_opts, guidance, nfe, resolve_device(device), network_dtype)
    dec = load_decoder(decoder, model, field.sample_shape) if decoder else None
    write_samples(out, draw_samples(field, ns, n_samples, seed, label, dec))
    click.echo(samples_text(out, n_samples, ns))


@main.command("compile")
@handle_errors
@model_options
@click.option(
    "--solver",
    "-s",
    "solvers",
    required=True,
    multiple=True,
    help=f"{SOLVER_HELP} Repeat with a loop format ({LOOP_FORMATS}): one graph serves every table, chosen per sample.",
)
@click.option("--nfe", type=NFE, default=None, help="NFE for a baseline (default 8); checked against a file.")
@click.option(
    "--max-nfe",
    type=Integer(1, 1024),
    default=None,
    help=f"Loop formats ({LOOP_FORMATS}): the most steps a table may take (default: the largest table's NFE).",
)
@click.option("--format", "fmt", default=DEFAULT_FORMAT, show_default=True, help=f"{' | '.join(BACKENDS)}.")
@click.option("--fp16", is_flag=True, help="Run the network in fp16 (inputs, outputs and solver stay fp32).")
@click.option("--max-batch", type=BATCH, default=16, show_default=True, help="Largest batch the artifact accepts.")
@click.option("--opt-batch", type=BATCH, default=None, help="TensorRT profile's optimal batch (default max/2).")
@click.option(
    "--device",
    default=None,
    help="Where to trace and validate, and the AOTInductor target: cpu, cuda, cuda:N "
    "(default: cuda when available, else cpu).",
)
@click.option("--workspace-mb", type=Integer(16, 1 << 20), default=2048, show_default=True, help="TensorRT workspace.")
@click.option("--timing-cache", default=None, help="TensorRT timing cache file (reused across builds).")
@click.option(
    "--refittable",
    is_flag=True,
    help="Build a TensorRT engine that `refit` can give new weights or tables without a rebuild (BuilderFlag.REFIT; "
    "ONNX graphs always can).",
)
@click.option("--no-validate", is_flag=True, help="Skip the parity check (not recommended).")
@click.option("--min-psnr", type=GATE, default=None, help="Parity gate in dB (default 60 fp32, 35 fp16).")
@click.option("--out", "-o", required=True, help="Artifact directory to create (replaced atomically).")
@click.option("--force", is_flag=True, help="Replace --out even when it is not a bns-export artifact.")
@click.option(
    "--sizes",
    default=None,
    help="Spatial sizes the graph takes besides the model's own: HxW,HxW,... or a range HxW:HxW (image pixels "
    "with --decoder, else sample units; multiples of the network's downsampling). UNets, SD3 and Sana.",
)
@decoder_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def compile_cmd(
    model,
    model_opts,
    decoder,
    guidance,
    solvers,
    nfe,
    max_nfe,
    fmt,
    fp16,
    max_batch,
    opt_batch,
    device,
    workspace_mb,
    timing_cache,
    refittable,
    no_validate,
    min_psnr,
    out,
    force,
    sizes,
    as_json,
) -> None:
    """Compile model + solver (+ decoder) into one graph (noise [+ condition] in, sample [+ image] out) and
    validate it."""
    from dataclasses import replace

    from .compile.build import compile_artifact
    from .devices import resolve_device
    from .reports import compile_text

    manifest = compile_artifact(
        model,
        solvers[0] if len(solvers) == 1 else list(solvers),
        fmt,
        out,
        options=replace(model_opts, decoder=decoder),
        guidance=guidance,  # None: the solver file's (compile_artifact applies the rule)
        nfe=nfe,
        fp16=fp16,
        max_batch=max_batch,
        opt_batch=opt_batch,
        device=resolve_device(device),
        validate=not no_validate,
        min_psnr=min_psnr,
        workspace_bytes=workspace_mb << 20,
        timing_cache=timing_cache,
        refittable=refittable,
        force=force,
        sizes=sizes,
        max_nfe=max_nfe,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(manifest, default=str) if as_json else compile_text(out, manifest))


@main.command("refit")
@handle_errors
@click.argument("artifact", type=click.Path())
@click.option("--model", "-m", default=None, help="The new weights: a fine-tune of the artifact's model.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="The new artifact's folder.")
@click.option("--lora", "loras", multiple=True, help="A LoRA file fused into the new weights, FILE[:SCALE].")
@click.option(
    "--solver",
    "-s",
    "solvers",
    multiple=True,
    help=f"A loop artifact's ({LOOP_FORMATS}) new tables, in index order, replacing its own: {SOLVER_HELP}",
)
@click.option("--nfe", type=NFE, default=None, help="NFE for classic solvers among --solver (default 8).")
@click.option("--base", default=None, help="The model the artifact was built from (default: its manifest's).")
@click.option("--min-psnr", type=GATE, default=None, help="Parity gate in dB (default 60).")
@click.option("--force", is_flag=True, help="Replace --out even when it is not an artifact.")
@device_option
@trust_options
def refit_cmd(artifact, model, out, loras, solvers, nfe, base, min_psnr, force, device, policy) -> None:
    """Put a fine-tune's weights (or the base with LoRAs fused) into an ONNX artifact's graph or a refittable TensorRT
    engine, and new tables into a loop graph, validated."""
    from .compile.refit import refit_artifact
    from .devices import resolve_device

    manifest = refit_artifact(
        artifact, model, out, loras=loras, base=base, solvers=solvers, nfe=nfe, min_psnr=min_psnr,
        device=resolve_device(device), force=force, policy=policy, log=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    v = manifest["validation"]
    what = [f"{model}'s weights"] if model else []
    what += [f"tables {', '.join(t['name'] for t in manifest['tables'])}"] if solvers else []
    click.echo(f"wrote {out}: {artifact}'s graph with {' and '.join(what)}, parity min {v['psnr_min']:.1f} dB")


@main.command("validate")
@handle_errors
@click.argument("artifact", type=click.Path())
@click.option("--min-psnr", type=GATE, default=None, help="Gate in dB (default 60 fp32, 35 fp16).")
@click.option("--device", default=None, help="Where to run both sides: cpu, cuda, cuda:N (default: the artifact's).")
@trust_options
@click.option(
    "--model",
    "-m",
    default=None,
    help="The model to rebuild the eager reference from (default: the manifest's, unless it names code to import).",
)
@click.option(
    "--decoder",
    default=None,
    callback=_nonempty,
    help="The decoder for the reference (default: the manifest's, same rule; only for artifacts with a decoder).",
)
@click.option(
    "--trust-model-spec",
    is_flag=True,
    help="Import and run the module:factory code the artifact's manifest names (only for artifacts you trust).",
)
@click.option(
    "--cuda-graph",
    is_flag=True,
    help="Validate the artifact's CUDA-graph path (ONNX: CUDA EP graphs; AOTInductor: captured per batch size).",
)
@click.option(
    "--no-ground-truth",
    "no_gt",
    is_flag=True,
    help="Parity only: skip the dopri5 solution both samplers are also scored against (minutes for a big model "
    "on a CPU).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate_cmd(
    artifact, min_psnr, device, policy, model, decoder, trust_model_spec, cuda_graph, no_gt, as_json
) -> None:
    """Parity of an artifact against the eager PyTorch sampler; exit 0 pass, 1 fail, 2 bad input.

    Code a manifest names is never imported unless given with -m / --decoder or allowed with
    --trust-model-spec.  ONNX artifacts are data; aoti and tensorrt artifacts are code (loading them runs
    native code they carry) and open only with --public-key or --trust-engine-code."""
    from .compile.parity import validate_artifact
    from .devices import resolve_device
    from .reports import validation_text

    if not no_gt:
        click.echo(
            "scoring both samplers against the dopri5 ground truth of the parity cases (solved unless cached: hundreds "
            "of network calls per pair, hours for a big model on a CPU; --no-ground-truth skips it)",
            err=True,
        )
    report = validate_artifact(
        artifact,
        min_psnr=min_psnr,
        device=None if device is None else resolve_device(device),
        policy=policy,
        model=model,
        decoder=decoder,
        trust_model_spec=trust_model_spec,
        cuda_graph=cuda_graph,
        ground_truth=not no_gt,
    )
    click.echo(json.dumps(report) if as_json else validation_text(report))
    sys.exit(0 if report["passed"] else 1)


@main.command("triton")
@handle_errors
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--repo", required=True, type=click.Path(file_okay=False), help="Triton model repository folder.")
@click.option("--name", default=None, help="Model name in the repository (default: the first artifact's folder name).")
@click.option("--gpu/--cpu", "gpu", default=None, help="Instance kind (default: GPU for TensorRT plans, else CPU).")
@click.option(
    "--replace", is_flag=True, help="Replace the model folder (only one bns-export wrote) instead of adding versions."
)
@click.option(
    "--container-repo",
    default="/models",
    show_default=True,
    help="Where the repository is mounted in the Triton container; TensorRT engines are cached in each model's "
    "trt_engines/ there, so they survive restarts (mount it writable).",
)
@click.option(
    "--no-trt-profiles",
    is_flag=True,
    help="Leave out the explicit TensorRT profile options (trt_profile_*): Triton 24.03 and older reject them.",
)
@trust_options
def triton_cmd(artifacts, repo, name, gpu, replace, container_repo, no_trt_profiles, policy) -> None:
    """Write a Triton model repository entry: config.pbtxt and one version per artifact (e.g. NFE 4 / 8 / 16).

    An existing model folder that bns-export wrote gets the artifacts as new versions beside its others;
    a config.pbtxt edited by hand is kept; a folder bns-export did not write is refused."""
    from .runtime.triton import write_repository

    out = write_repository(
        list(artifacts),
        repo,
        name,
        gpu,
        replace=replace,
        log=lambda m: click.echo(m, err=True),
        container_repo=container_repo,
        trt_profiles=not no_trt_profiles,
        policy=policy,
    )
    click.echo(f"wrote {out} ({len(artifacts)} version(s)); serve with: tritonserver --model-repository {repo}")


@main.command("conditions")
@handle_errors
@click.option(
    "--model", "-m", required=True, help="diffusers:FOLDER, a pipeline folder with its tokenizers and text encoders."
)
@click.option("--prompts", "-p", required=True, help="Text file, one prompt per line (UTF-8).")
@click.option(
    "--negative",
    default=None,
    help="Negative prompt: the null condition, the unguided branch (default: what the pipeline does without one, "
    "the empty prompt or SDXL's zeros).",
)
@click.option(
    "--max-tokens", type=Integer(1, 4096), default=None, help="T5 sequence length (default: the pipeline's own)."
)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="FILE.safetensors to write.")
@device_option
@click.option(
    "--encoder-dtype",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Precision the text encoders run in (the set is stored in fp32).",
)
def conditions_cmd(model, prompts, negative, max_tokens, out, device, encoder_dtype) -> None:
    """Write a condition set from prompts with the folder's own text encoders (its pipeline's encode_prompt)."""
    from .devices import resolve_device
    from .loaders import NETWORK_DTYPES
    from .loaders.prompts import condition_tensors, encode_prompts, prompts_metadata, read_prompts
    from .loaders.spec import DIFFUSERS_PREFIX

    if not str(model).startswith(DIFFUSERS_PREFIX):
        raise BNSError(f"--model {model}: prompts are encoded by a diffusers pipeline folder, diffusers:FOLDER")
    if not str(out).endswith(".safetensors"):
        raise BNSError(f"--out {out}: a condition set is a .safetensors file")
    from safetensors.torch import save_file

    from .fileio import atomic_file

    folder = model[len(DIFFUSERS_PREFIX) :]
    texts = read_prompts(prompts)
    dtype = NETWORK_DTYPES[encoder_dtype]
    cset = encode_prompts(folder, texts, negative, resolve_device(device), dtype, max_tokens)
    with atomic_file(Path(out)) as tmp:
        save_file(condition_tensors(cset), str(tmp), metadata=prompts_metadata(texts, negative, folder))
    shapes = ", ".join(f"{p.name} {tuple(p.shape)}" for p in cset.layout.parts)
    click.echo(f"wrote {out}: {len(texts)} prompt(s) and their null; {shapes}")


@main.command("serve")
@handle_errors
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=Integer(0, 65535), default=8000, show_default=True)
@click.option("--max-body", type=Integer(*LIMIT_RANGES["max_body"]), default=64 << 20, show_default=True, help="Bytes.")
@click.option("--header-timeout", type=Number(*LIMIT_RANGES["header_timeout_s"]), default=10.0, show_default=True,
              help="Seconds to send a request's headers.")  # fmt: skip
@click.option("--body-timeout", type=Number(*LIMIT_RANGES["body_timeout_s"]), default=30.0, show_default=True,
              help="Seconds to send a request's body.")  # fmt: skip
@click.option("--max-delay-ms", type=Number(*LIMIT_RANGES["max_delay_ms"]), default=5.0, show_default=True,
              help="How long a request waits for others to share its batch.")  # fmt: skip
@click.option("--queue-per-slot", type=Integer(*LIMIT_RANGES["queue_per_slot"]), default=8, show_default=True,
              help="Requests queued per batch slot before 503.")  # fmt: skip
@click.option("--concurrency", type=Integer(*LIMIT_RANGES["concurrency"]), default=1024, show_default=True,
              help="Connections and requests at once (503 beyond).")  # fmt: skip
@trust_options
def serve_cmd(
    artifacts, host, port, max_body, header_timeout, body_timeout, max_delay_ms, queue_per_slot, concurrency, policy
) -> None:
    """Serve artifacts over the Open Inference Protocol (KServe v2; Triton's and KServe's clients work)."""
    from .serve import Limits, load_models, make_app, server

    limits = Limits(
        max_body=max_body,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_delay_ms=max_delay_ms,
        queue_per_slot=queue_per_slot,
        concurrency=concurrency,
    )
    models = load_models(list(artifacts), policy)
    srv = server(make_app(models, limits), host, port, limits)
    click.echo(f"serving {', '.join(models)} on http://{host}:{port}/v2 (Open Inference Protocol)", err=True)
    srv.run()


@main.command("sign")
@handle_errors
@click.argument("artifact", type=click.Path())
@click.option("--key", required=True, help="Ed25519 private key (PEM), e.g. from openssl genpkey -algorithm ed25519.")
def sign_cmd(artifact, key) -> None:
    """Sign an artifact's manifest (which hashes every file): writes manifest.json.sig."""
    from .runtime.artifact import read_manifest
    from .runtime.signing import sign_manifest

    read_manifest(artifact)  # sign only what verifies
    click.echo(f"wrote {sign_manifest(artifact, key)}")


@main.command("demo")
@handle_errors
@click.option("--model", "-m", default="digits", show_default=True, help="Shipped model (or analytic:NAME).")
@click.option("--nfe", type=Integer(2, 32), default=8, show_default=True)
@click.option("--guidance", "-w", type=GUIDANCE, default=1.0, show_default=True)
@click.option("--out", "-o", default="exported/demo", show_default=True, help="Output folder.")
@click.option("--iterations", type=Integer(1, 10_000_000), default=400, show_default=True, help="Distillation budget.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def demo_cmd(model, nfe, guidance, out, iterations, device, as_json) -> None:
    """End to end on a shipped model: ground truth, distil BNS, compare every baseline, write a grid."""
    from .demo import run_demo
    from .devices import resolve_device

    device = resolve_device(device)
    with DistillBar() as progress:
        report = run_demo(
            model, nfe, out, guidance, iterations=iterations, device=device,
            log=lambda m: click.echo(m, err=as_json), progress=progress,
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(report, default=str))


if __name__ == "__main__":  # python -m bns_export.cli: the package's import installed the early handlers
    try:
        main()
    finally:
        ignore_late_signals()
