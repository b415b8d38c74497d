import numpy as np
import pytest
import torch
from netfactories import TinyNet

from bns_export.distill import DistillConfig, distill
from bns_export.evaluate import evaluate_on
from bns_export.fields import GuidedField, NetworkField
from bns_export.fields.analytic import gmm, gmm_cond
from bns_export.fields.schedules import VPLinear
from bns_export.groundtruth import ground_truth
from bns_export.solvers import BASELINES, NSSolver, baseline


@pytest.fixture(scope="module")
def gmm_sets():
    f = GuidedField(gmm())
    return f, ground_truth(f, 128, 1), ground_truth(f, 128, 2), ground_truth(f, 128, 0)


def test_bns_beats_every_baseline_at_4_nfe(gmm_sets):
    f, train, val, test = gmm_sets
    solver = distill(f, train, val, DistillConfig(nfe=4, iterations=300, batch_size=64))
    bns = evaluate_on(f, solver, test)["psnr_mean"]
    for name, entry in BASELINES.items():
        if 4 % entry.nfe_per_step == 0:
            base = evaluate_on(f, baseline(name, 4, f.schedule, f.t_lo, f.t_hi), test)["psnr_mean"]
            assert bns > base + 10, (name, bns, base)
    assert np.all(np.diff(solver.t) > 0) and solver.t[0] == 0.0 and solver.t_end == 1.0
    assert solver.meta["val_psnr"] >= solver.meta["base_val_psnr"]
    assert solver.num_params == 3 + 4 + 10


@pytest.mark.parametrize("ball", [0.0, 0.05])
def test_interrupted_run_resumes_from_checkpoint(gmm_sets, tmp_path, ball):
    """A killed run resumes from its checkpoint to the uninterrupted run's table, a tolerance-ball run's noise
    offsets included."""
    f, train, val, _ = gmm_sets
    out = tmp_path / "s.json"
    cfg = DistillConfig(nfe=4, iterations=100, val_every=10, batch_size=32, ball=ball)
    seen = []

    def stop_after_two(it, info):
        seen.append(it)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(f, train, val, cfg, out=out, progress=stop_after_two)
    ckpt = tmp_path / "s.json.ckpt.safetensors"
    assert ckpt.exists() and not out.exists()
    resumed = []
    solver = distill(f, train, val, cfg, out=out, progress=lambda it, info: resumed.append(it))
    assert resumed[0] == 30  # continued after iteration 20, not from 0
    assert out.exists() and not ckpt.exists()
    uninterrupted = distill(f, train, val, cfg)
    assert np.allclose(NSSolver.load(out).b, uninterrupted.b, atol=1e-12)
    assert solver.meta["iterations"] == uninterrupted.meta["iterations"]


def test_guided_conditional_distillation():
    f = GuidedField(gmm_cond(), 2.0)
    train, val = ground_truth(f, 64, 1), ground_truth(f, 64, 2)
    solver = distill(f, train, val, DistillConfig(nfe=4, iterations=100, batch_size=32))
    assert solver.meta["guidance"] == 2.0
    assert solver.meta["val_psnr"] > solver.meta["base_val_psnr"] + 3


def test_distillation_through_a_network_with_preconditioning():
    net = TinyNet()
    f = GuidedField(NetworkField(net, VPLinear(), (1, 4, 4), prediction="eps", time_input="s"))
    train, val = ground_truth(f, 64, 1), ground_truth(f, 64, 2)
    before = [p.clone() for p in net.parameters()]
    solver = distill(f, train, val, DistillConfig(nfe=4, iterations=60, batch_size=32, precondition=2.0))
    assert solver.meta["val_psnr"] > solver.meta["base_val_psnr"]
    assert solver.meta["precondition_sigma0"] == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # frozen


def test_auto_base_picks_the_best_baseline_on_validation(gmm_sets):
    from bns_export.distill import AUTO_BASES, initial_solver
    from bns_export.evaluate import evaluate_on

    f, _, val, _ = gmm_sets
    cfg = DistillConfig(nfe=6, base="auto")
    solver, psnr = initial_solver(f, cfg, val)
    scores = {b: evaluate_on(f, baseline(b, 6, f.schedule, 0.0, 1.0), val)["psnr_mean"] for b in AUTO_BASES}
    assert solver.meta["base_solver"].split(":")[0] == max(scores, key=scores.get).split(":")[0]
    assert psnr == pytest.approx(max(scores.values()))


@pytest.mark.parametrize("time_param", ["t", "logsnr"])
@pytest.mark.parametrize("coef_scale", ["step", "none"])
def test_parametrisations_start_at_the_base_table(time_param, coef_scale):
    from bns_export.distill import BNSParams

    sched = VPLinear()
    init = baseline("unipc", 8, sched, 0.0, 0.999)
    t, a, b = (v.detach().numpy() for v in BNSParams(init, time_param, coef_scale, sched).tables())
    np.testing.assert_allclose(t, init.t, rtol=0, atol=1e-9)
    np.testing.assert_allclose(b, init.b, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(a, init.a)


def test_logsnr_times_stay_increasing_and_in_the_interval():
    from bns_export.distill import BNSParams

    sched = VPLinear()
    p = BNSParams(baseline("ddim", 6, sched, 0.0, 0.999), "logsnr", "step", sched)
    with torch.no_grad():
        p.logits.copy_(torch.tensor([-30.0, 5.0, -30.0, 0.0, 3.0, -30.0], dtype=torch.float64))
    t = p.tables()[0].detach()
    assert t[0] == 0.0 and torch.all(torch.diff(t) > 0) and float(t[-1]) <= 0.999
    p.tables()[0].sum().backward()
    assert torch.isfinite(p.logits.grad).all() and p.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("key", ["learn", "time_param", "coef_scale"])
def test_unknown_choice_is_one_error(key):
    from bns_export.errors import BNSError

    with pytest.raises(BNSError, match=key):
        DistillConfig(**{key: "sideways"})


def test_cli_defaults_are_the_config_defaults():
    from bns_export.cli import distill_cmd

    defaults = {p.name: p.default for p in distill_cmd.params}
    cfg = DistillConfig()
    for key in ("iterations", "batch_size", "lr", "time_lr", "warmup", "val_every", "base"):
        assert defaults[key] == getattr(cfg, key), key


def test_learning_rate_warms_up_linearly(gmm_sets, monkeypatch):
    f, train, val, _ = gmm_sets
    seen, step = [], torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(next(g["lr"] for g in self.param_groups if g["role"] == "coefs"))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    distill(f, train, val, DistillConfig(nfe=4, iterations=6, batch_size=32, lr=0.01, warmup=4))
    np.testing.assert_allclose(seen, [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_group_learning_rates_alternation_and_cosine_schedule(gmm_sets, monkeypatch):
    """The recipe's knobs reach Adam: the times' step is `time_lr` times the coefficients'; an alternating run
    (S4S-Alt) gives one group a zero step in turn, times first; the cosine schedule anneals to 0 over the run."""
    f, train, val, _ = gmm_sets
    seen, step = [], torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append({g["role"]: g["lr"] for g in self.param_groups})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    quick = dict(nfe=4, batch_size=32, lr=0.01, warmup=0)
    distill(f, train, val, DistillConfig(iterations=2, time_lr=0.25, **quick))
    assert seen == [{"times": 0.0025, "coefs": 0.01}] * 2
    seen.clear()
    distill(f, train, val, DistillConfig(iterations=6, alternate=2, **quick))
    assert [g["times"] > 0 for g in seen] == [True, True, False, False, True, True]
    assert [g["coefs"] > 0 for g in seen] == [False, False, True, True, False, False]
    seen.clear()
    distill(f, train, val, DistillConfig(iterations=4, schedule="cosine", **quick))
    np.testing.assert_allclose([g["coefs"] for g in seen], [0.01, 0.01 * (1 + np.cos(np.pi / 4)) / 2, 0.005,
                                                            0.01 * (1 + np.cos(3 * np.pi / 4)) / 2])  # fmt: skip


def test_tolerance_ball_offsets_stay_in_their_balls(gmm_sets):
    """LD3's relaxed loss: the pairs' noise offsets move (against the loss) and stay within `ball` x the norm of
    their noise; the table is still kept by its exact validation PSNR."""
    from bns_export.distill import BNSParams, Trainer, TrainState
    from bns_export.parallel import SINGLE

    f, train, val, _ = gmm_sets
    cfg = DistillConfig(nfe=4, base="euler", batch_size=64, warmup=0, ball=0.1)
    trainer = Trainer.make(f, BNSParams(baseline("euler", 4, f.schedule, f.t_lo, f.t_hi)), train, val, cfg, SINGLE)
    state = TrainState(run_id="ball")
    for _ in range(6):
        trainer.step(state)
    moved = trainer.ball.flatten(1).norm(dim=1)
    limit = 0.1 * train.noise.flatten(1).norm(dim=1)
    assert (moved > 0).sum() >= 64 and bool((moved <= limit * (1 + 1e-9)).all())
    assert trainer.params.score(f, val) == pytest.approx(evaluate_on(f, trainer.params.solver(), val)["psnr_mean"])


def _one_step(field, pairs, **cfg):
    """The table after one Adam step from euler at NFE 4 (a fresh trainer)."""
    from bns_export.distill import BNSParams, Trainer, TrainState
    from bns_export.parallel import SINGLE

    config = DistillConfig(nfe=4, base="euler", batch_size=len(pairs), warmup=0, **cfg)
    params = BNSParams(baseline("euler", 4, field.schedule, field.t_lo, field.t_hi))
    Trainer.make(field, params, pairs, pairs, config, SINGLE).step(TrainState(run_id="x"))
    return [p.detach().clone() for p in params.parameters()]


def test_micro_batches_and_recomputation_give_the_full_batch_step():
    net = TinyNet()
    field = GuidedField(NetworkField(net, VPLinear(), (1, 4, 4), prediction="eps", time_input="s"))
    pairs = ground_truth(field, 12, 1)
    whole = _one_step(field, pairs, recompute=False)
    for cfg in ({"recompute": True}, {"micro_batch": 5}, {"micro_batch": 1, "recompute": True}):
        other = _one_step(field, pairs, **cfg)
        assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(whole, other)), cfg


CASES = ((4, True), (16, True), (16, False))  # (NFE, recompute)


@pytest.mark.slow
def test_distillation_memory_is_flat_in_the_nfe():
    """Peak memory of one iteration, measured in fresh processes (tools/bench_distill.py --probe): with each call's
    activations recomputed, NFE 16 holds what NFE 4 does; without, the measure sees every call's activations kept."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from bench_distill import run_probe

    grown = {(n, r): run_probe("conv", n, 16, None, r, 64)["peak_growth_bytes"] for n, r in CASES}
    assert grown[16, True] <= 1.2 * grown[4, True], grown
    assert grown[16, False] > 3 * grown[16, True], grown  # the measure sees kept activations
