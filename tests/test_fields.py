import pytest
import torch
from netfactories import GaussianOracle

from bns_export.fields import NULL_LABEL, GuidedField, NetworkField
from bns_export.fields.analytic import gaussian, gmm_cond
from bns_export.fields.schedules import EDM, FMOT, DDPMDiscrete, VPCosine, VPLinear

MU = torch.linspace(-0.8, 0.8, 16, dtype=torch.float64)
S = 0.3


def exact_velocity(sch, x, t):
    """dx/dt of the Gaussian-data path, computed independently: E[alpha' x1 + sigma' eps | x]."""
    a, sg, da, ds = sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t)
    mu = MU.reshape(x.shape[1:])
    v = a * a * S**2 + sg * sg
    return da * (mu + a * S**2 * (x - a * mu) / v) + ds * sg * (x - a * mu) / v


CASES = [
    (FMOT(), "velocity", "t"),
    (FMOT(), "flow", "s"),
    (FMOT(), "x0", "t"),
    (FMOT(), "eps", "t"),
    (VPLinear(), "eps", "s"),
    (VPLinear(), "v", "t"),
    (VPLinear(), "x0", "s"),
    (VPCosine(), "eps", "t"),
    (VPCosine(), "v", "s"),
    (DDPMDiscrete.linear(1000), "eps", "index"),
    (DDPMDiscrete.linear(1000), "v", "index"),
    (EDM(), "x0", "sigma"),
]


@pytest.mark.parametrize("sch,pred,tin", CASES, ids=lambda c: getattr(c, "name", c))
def test_adapter_converts_prediction_and_time_input_exactly(sch, pred, tin):
    net = GaussianOracle(sch, pred, tin, MU, S)
    field = NetworkField(net, sch, (1, 4, 4), prediction=pred, time_input=tin)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in torch.linspace(field.t_lo, field.t_hi, 7, dtype=torch.float64)[1:-1]:
        assert torch.allclose(field(x, t), exact_velocity(sch, x, t), rtol=1e-6, atol=1e-8), float(t)


def test_eps_on_fm_ot_starts_after_zero():
    field = NetworkField(GaussianOracle(FMOT(), "eps", "t", MU, S), FMOT(), (1, 4, 4), prediction="eps")
    assert field.t_lo > 0 and field.t_hi == 1.0


def test_gaussian_field_follows_its_exact_flow():
    f = gaussian()
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    mu = f.means[0].reshape(1, 8, 8)
    for t in (0.0, 0.3, 0.7, 1.0):
        std = (t * t * 0.25 + (1 - t) ** 2) ** 0.5
        dstd = (t * 0.25 - (1 - t)) / std
        assert torch.allclose(f(t * mu + std * x0, t), mu + dstd * x0, atol=1e-10)


class Counting(torch.nn.Module):
    def __init__(self, field):
        super().__init__()
        self.inner, self.calls, self.batches = field, 0, []
        self.num_classes = field.num_classes
        self.null_condition = field.null_condition

    def forward(self, x, t, labels=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.inner(x, t, labels)


def test_guidance_is_one_batched_call_with_the_cfg_formula():
    base = gmm_cond()
    counting = Counting(base)
    guided = GuidedField(counting, 2.5)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    u = guided(x, 0.4, labels)
    assert counting.calls == 1 and counting.batches == [12]
    u_c, u_u = base(x, 0.4, labels), base(x, 0.4, torch.full_like(labels, NULL_LABEL))
    assert torch.allclose(u, u_u + 2.5 * (u_c - u_u))
    assert torch.allclose(GuidedField(base, 1.0)(x, 0.4, labels), u_c)
    assert torch.allclose(GuidedField(base, 0.0)(x, 0.4, labels), u_u)


def test_conditional_network_maps_null_label_to_its_null_index():
    from netfactories import TinyNet

    net = TinyNet(num_classes=3).double()
    field = NetworkField(net, FMOT(), (1, 4, 4), num_classes=3)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    out = field(x, t, torch.tensor([NULL_LABEL, 1]))
    ref = net(x, t.expand(2), torch.tensor([3, 1]))
    assert torch.allclose(out, ref)
