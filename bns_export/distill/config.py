"""Distillation settings (DistillConfig, recorded in every solver file) and the base solvers it starts from."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..checks import integer, number
from ..errors import BNSError

#: the distillation options that are one of a few names, checked once in DistillConfig
CHOICES = {
    "learn": ("all", "times"),
    "time_param": ("t", "logsnr"),
    "coef_scale": ("step", "none"),
    "schedule": ("plateau", "cosine"),
}


@dataclass
class DistillConfig:
    """Training settings; every field is recorded in the solver file."""

    nfe: int = 8
    # "auto": the best of AUTO_BASES on validation (measured: digits NFE 8, 39.8 dB in 400 iterations vs 35.7 dB in
    # 2000 from midpoint); "paper": midpoint for even NFE, Euler for odd (method.md); or any classic solver spec
    base: str = "auto"
    precondition: float | None = None  # sigma_0
    iterations: int = 2000
    batch_size: int = 128
    # lr and warmup measured with coef_scale="step" (docs/benchmarks.md, ablation-scale-*, ablation-warmup-digits):
    # digits NFE 8 45.7 dB vs 43.1 at 3e-3; the warmup keeps the analytic fields within 2 dB of 3e-3 (without it,
    # 3e-2 loses 3-12 dB there)
    lr: float = 3e-2
    val_every: int = 25
    # validations without improvement before the learning rate is halved; 12 measured better than 4 (analytic:gmm
    # NFE 16: 78.95 vs 73.18 dB; analytic:points NFE 12: 81.85 vs 73.76 dB; tools/ablate_distill.py)
    patience: int = 12
    max_decays: int = 5  # halvings before early stopping
    warmup: int = 100  # iterations of linear learning-rate ramp at the start and after every restart
    learn: str = "all"  # "all": times, a and b; "times": times only (a, b stay the base solver's), an ablation
    time_param: str = "t"  # "t" or "logsnr": the variable whose range the learned time fractions split
    coef_scale: str = "step"  # "step": b learned relative to the init's step lengths; "none": b itself
    #: the times' learning rate as a multiple of lr (per-group step sizes; an ablation, docs/recipe.md)
    time_lr: float = 1.0
    #: S4S-Alt: learn the times alone for this many iterations, then the coefficients alone, and so on; 0: together
    alternate: int = 0
    #: "plateau": lr halved at each plateau (with restarts); "cosine": also annealed to 0 over the iterations
    schedule: str = "plateau"
    #: LD3's tolerance ball: each training pair's noise may move within this fraction of its norm, the loss taken
    #: at the best point found there (validation and the table's use stay exact); 0: the exact loss
    ball: float = 0.0
    seed: int = 0
    #: recompute each network call's activations in the backward pass: memory flat in the NFE, for one more forward
    #: call per step but the last; None: for networks of RECOMPUTE_FROM parameters or more (small ones keep theirs)
    recompute: bool | None = None
    #: pairs per forward/backward pass, the gradients accumulated over the batch (None: the whole batch at once)
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        integer(self.nfe, "nfe", 1, 64)
        integer(self.warmup, "warmup", 0, 10_000_000)
        for key in ("iterations", "batch_size", "val_every", "patience"):
            integer(getattr(self, key), key, 1, 10_000_000)
        integer(self.max_decays, "max_decays", 0, 100)
        integer(self.alternate, "alternate", 0, 10_000_000)
        number(self.time_lr, "time_lr", 0, 1000, lo_open=True)
        number(self.ball, "ball", 0, 1)
        if self.micro_batch is not None:
            integer(self.micro_batch, "micro_batch", 1, 10_000_000)
        number(self.lr, "lr", 0, 10, lo_open=True)
        if self.precondition is not None:
            number(self.precondition, "precondition", 0, 100, lo_open=True)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise BNSError(f"unknown {key}={getattr(self, key)!r}: use one of {', '.join(allowed)}")

    def recipe(self) -> dict:
        """The fields that decide the result (a run's identity, a solver file's record): not how it is computed
        (recomputation and micro-batches give the same table)."""
        return {k: v for k, v in asdict(self).items() if k not in ("recompute", "micro_batch")}

    def base_solver(self) -> str:
        """The single base solver of a non-auto config."""
        if self.base in (None, "paper"):
            return "midpoint" if self.nfe % 2 == 0 else "euler"
        return self.base


#: the network size from which distillation recomputes activations unless told (an SD-class UNet has 860M)
RECOMPUTE_FROM = 10_000_000


def recomputes(cfg: DistillConfig, field) -> bool:
    """Whether an iteration recomputes each network call's activations: as configured, else for big networks."""
    if cfg.recompute is not None:
        return bool(cfg.recompute)
    return sum(p.numel() for p in field.parameters()) >= RECOMPUTE_FROM


#: candidates of `base="auto"`: one-step and two-stage solvers with strictly increasing times
AUTO_BASES = ["midpoint", "euler", "ab2", "ddim", "dpm++2m", "dpm++2m:karras", "ddim:logsnr", "euler:logsnr"]
AUTO_BASES += ["dpm++3m", "unipc", "unipc-bh1", "deis", "ipndm", "unipc:karras", "deis:karras"]
#: and, for a flow model whose pipeline shifts its times (SD3, Flux, Sana), its pipeline's own grid
PIPELINE_BASES = ["euler:pipeline", "dpm++2m:pipeline"]
