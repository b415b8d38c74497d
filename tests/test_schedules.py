import pytest
import torch

from bns_export.fields.schedules import EDM, FMOT, DDPMDiscrete, VPCosine, VPLinear

SCHEDULES = [FMOT(), VPLinear(), VPCosine(), DDPMDiscrete.linear(1000), EDM()]


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: s.name)
def test_derivatives_match_finite_differences(sch):
    t = torch.linspace(sch.t_lo + 0.01, sch.t_hi - 0.01, 37, dtype=torch.float64)
    if isinstance(sch, DDPMDiscrete):  # piecewise: compare between the steps
        t = 1 - (torch.round((1 - t) * sch.steps) + 0.5) / sch.steps
    h = 1e-6
    for f, df in ((sch.alpha, sch.d_alpha), (sch.sigma, sch.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sch", SCHEDULES[1:4], ids=lambda s: s.name)
def test_vp_schedules_preserve_variance_and_run_noise_to_data(sch):
    t = torch.linspace(sch.t_lo, sch.t_hi, 11, dtype=torch.float64)
    assert torch.allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t))
    assert torch.all(torch.diff(sch.alpha(t)) > 0)
    assert sch.sigma(torch.tensor(sch.t_hi, dtype=torch.float64)) < 0.05


def test_ddpm_hits_alpha_bar_at_each_step():
    sch = DDPMDiscrete.linear(50)
    alpha_bar = torch.cumprod(1 - sch.betas, 0)
    n = torch.arange(50, dtype=torch.float64)
    t = 1 - (n + 1) / 50
    assert torch.allclose(sch.alpha(t) ** 2, alpha_bar, rtol=1e-12)
    assert torch.allclose(sch.step_index(t), n)


def test_edm_interval_is_sigma_max_to_sigma_min():
    sch = EDM()
    lo, hi = (torch.tensor(v, dtype=torch.float64) for v in (sch.t_lo, sch.t_hi))
    assert float(sch.sigma(lo) / sch.alpha(lo)) == pytest.approx(80.0)
    assert float(sch.sigma(hi) / sch.alpha(hi)) == pytest.approx(0.002)
