"""BNS distillation (method.md section 3): optimise (t, a, b) through the unrolled sampler.

Times are parametrised as t_lo + span * cumsum(softmax(logits)), so they stay strictly increasing with fixed end
points; a is free and b is learned relative to the init's step lengths.  The loss is the batch mean of
log MSE(x_n, x(1)) per sample (the PSNR loss); the network is frozen.  Adam's learning rate ramps up linearly over
the first `warmup` iterations.  The solver of the best validation PSNR is kept; when validation stalls, training
restarts from the best solver at half the learning rate (with the ramp again), and stops after a few such
halvings; it checkpoints to `<out>.ckpt.safetensors` and resumes from it after an interruption.

config (DistillConfig, the bases) -> params (the table as parameters) -> checkpoints (TrainState) -> trainer (one
table) -> families (a guidance family's knots) -> api (`distill_model`, what the CLI and the demo call).
"""

from .api import Pairs, distill_model, solve_pairs
from .config import AUTO_BASES, PIPELINE_BASES, DistillConfig
from .families import distill_family, distill_jointly
from .params import BNSParams, FamilyParams
from .trainer import Trainer, TrainState, distill, initial_solver

__all__ = [
    "AUTO_BASES",
    "BNSParams",
    "DistillConfig",
    "FamilyParams",
    "PIPELINE_BASES",
    "Pairs",
    "TrainState",
    "Trainer",
    "distill",
    "distill_family",
    "distill_jointly",
    "distill_model",
    "initial_solver",
    "solve_pairs",
]
