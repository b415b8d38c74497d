"""Each multistep table reproduces diffusers' own scheduler (or, for iPNDM, a direct step-by-step
implementation) on the same timesteps, with the shipped digits network (eps, DDPM, 1000 linear betas)."""

import numpy as np
import pytest
import torch

from bns_export.loaders import load_model
from bns_export.solvers import BASELINES, ns_sample
from bns_export.solvers.grids import make_grid
from bns_export.solvers.sampler import solver_tensors

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

COMMON = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
COMMON.update(prediction_type="epsilon", final_sigmas_type="sigma_min")
SCHEDULERS = {
    "dpm++2m": lambda: diffusers.DPMSolverMultistepScheduler(**COMMON, solver_order=2),
    "dpm++3m": lambda: diffusers.DPMSolverMultistepScheduler(**COMMON, solver_order=3),
    "unipc": lambda: diffusers.UniPCMultistepScheduler(**COMMON, solver_order=2, solver_type="bh2"),
    "unipc-bh1": lambda: diffusers.UniPCMultistepScheduler(**COMMON, solver_order=2, solver_type="bh1"),
    "deis": lambda: diffusers.DEISMultistepScheduler(
        **{k: v for k, v in COMMON.items() if k != "final_sigmas_type"}, solver_order=3
    ),
}


@pytest.fixture(scope="module")
def digits():
    """The digits network in float64, so the comparison measures the tables, not fp32 rounding."""
    field = load_model("digits").field.double()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * field.init_scale
    return field, x


def _ours(field, name: str, timesteps: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Our table on the `diffusers` grid (diffusers' default timesteps, step n at t = 1 - (n + 1) / T)."""
    steps = field.schedule.steps
    grid = make_grid("diffusers", len(timesteps), field.schedule, field.t_lo, field.t_hi)
    assert np.allclose(grid[:-1], 1.0 - (timesteps.astype(np.float64) + 1) / steps)
    solver = BASELINES[name].build(grid, field.schedule).to_ns(name=name)
    with torch.no_grad():
        return ns_sample(field, *solver_tensors(solver, torch.float64), x)


class _Float64Torch:
    """torch, except that `torch.float32` is float64: diffusers' schedulers cast samples to fp32 inside
    step(), whose rounding the 3rd-order final step amplifies to ~4e-5 at 16 steps; patched into the
    scheduler modules, the comparison runs diffusers' own code in fp64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


@pytest.fixture
def diffusers_in_fp64(monkeypatch):
    import importlib

    for mod in ("scheduling_dpmsolver_multistep", "scheduling_unipc_multistep", "scheduling_deis_multistep"):
        monkeypatch.setattr(importlib.import_module(f"diffusers.schedulers.{mod}"), "torch", _Float64Torch())


def _fp64_sigmas(sched, timesteps: np.ndarray) -> None:
    """The scheduler's sigmas recomputed in fp64 from the same betas (set_timesteps stores them in fp32)."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ab = np.cumprod(1.0 - betas)
    sig = np.sqrt((1 - ab) / ab)
    sched.sigmas = torch.tensor(np.append(sig[timesteps], sig[0]), dtype=torch.float64)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("n", [5, 8, 16])
def test_table_equals_diffusers_scheduler(digits, name, n, diffusers_in_fp64):
    field, x0 = digits
    sched = SCHEDULERS[name]()
    sched.set_timesteps(n)
    ts = sched.timesteps.numpy()
    _fp64_sigmas(sched, ts)
    x = x0.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            eps = field.net(x.double(), torch.full((x.shape[0],), float(t), dtype=torch.float64))
            x = sched.step(eps, t, x).prev_sample  # diffusers keeps its sigmas (and some updates) in fp32
    ours = _ours(field, name, ts, x0)
    err = (ours - x.double()).abs().max().item() / x.abs().max().item()
    print(f"{name} n={n}: relative max error {err:.1e}")
    assert err < 1e-5, (name, n, err)


def test_ipndm_table_equals_a_direct_implementation(digits):
    """k-diffusion's sample_ipndm, written out: Adams-Bashforth on eps in the VE variables x/alpha, sigma/alpha."""
    field, x0 = digits
    sch = field.schedule
    grid = np.linspace(0.05, 1.0 - 1.0 / sch.steps, 9)
    tt = torch.as_tensor(grid, dtype=torch.float64)
    alpha, sigma = sch.alpha(tt).numpy(), sch.sigma(tt).numpy()
    sve = sigma / alpha
    x, eps_hist = x0.double(), []
    with torch.no_grad():
        for i in range(len(grid) - 1):
            eps = field.net(x, sch.step_index(torch.full((x.shape[0],), grid[i], dtype=torch.float64)))
            eps_hist.insert(0, eps)
            w = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
            d = sum(wj * e for wj, e in zip(w[min(4, i + 1)], eps_hist))
            x = alpha[i + 1] * (x / alpha[i] + (sve[i + 1] - sve[i]) * d)
    solver = BASELINES["ipndm"].build(grid, sch).to_ns(name="ipndm")
    with torch.no_grad():
        ours = ns_sample(field, *solver_tensors(solver, torch.float64), x0)
    assert (ours - x).abs().max().item() / x.abs().max().item() < 1e-10


@pytest.mark.parametrize("name", ["dpm++3m", "unipc", "unipc-bh1", "deis", "ipndm"])
@pytest.mark.parametrize("grid", ["uniform", "karras", "logsnr"])
def test_new_tables_are_finite_on_every_grid_and_on_paths_from_pure_noise(name, grid):
    from bns_export.solvers import baseline

    for spec in ("digits", "mnist", "analytic:gmm"):
        f = load_model(spec)
        s = baseline(f"{name}:{grid}", 8, f.schedule, f.t_lo, f.t_hi)
        assert np.isfinite(s.a).all() and np.isfinite(s.b).all()
