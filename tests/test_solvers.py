"""Each classic table reproduces a direct step-by-step implementation of its method."""

import json
import math

import numpy as np
import pytest
import torch
from netfactories import TinyNet

from bns_export.errors import BNSError
from bns_export.fields import NetworkField
from bns_export.fields.analytic import gaussian, gmm
from bns_export.fields.schedules import VPLinear
from bns_export.solvers import NSSolver, baseline, sample
from bns_export.solvers.grids import make_grid


def _u(field, x, t):
    return field(x, torch.tensor(float(t), dtype=x.dtype))


def direct_euler(f, x, T):
    for i in range(len(T) - 1):
        x = x + (T[i + 1] - T[i]) * _u(f, x, T[i])
    return x


def direct_midpoint(f, x, T):
    for i in range(len(T) - 1):
        h = T[i + 1] - T[i]
        x = x + h * _u(f, x + h / 2 * _u(f, x, T[i]), T[i] + h / 2)
    return x


def direct_heun(f, x, T):
    for i in range(len(T) - 1):
        h = T[i + 1] - T[i]
        k1 = _u(f, x, T[i])
        k2 = _u(f, x + h * k1, T[i + 1])
        x = x + h / 2 * (k1 + k2)
    return x


def direct_rk4(f, x, T):
    for i in range(len(T) - 1):
        h, t = T[i + 1] - T[i], T[i]
        k1 = _u(f, x, t)
        k2 = _u(f, x + h / 2 * k1, t + h / 2)
        k3 = _u(f, x + h / 2 * k2, t + h / 2)
        k4 = _u(f, x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def direct_ab2(f, x, T):
    prev = None
    for i in range(len(T) - 1):
        h, k = T[i + 1] - T[i], _u(f, x, T[i])
        if prev is None:
            x = x + h * k
        else:
            hp = T[i] - T[i - 1]
            x = x + h * ((1 + h / (2 * hp)) * k - h / (2 * hp) * prev)
        prev = k
    return x


def _abs(sch, t):
    tt = torch.tensor(float(t), dtype=torch.float64)
    return float(sch.alpha(tt)), float(sch.sigma(tt))


def _data_pred(f, x, t):
    """x1_hat from u by the schedule's own definitions: u = a' x1 + s' eps, x = a x1 + s eps."""
    sch = f.schedule
    tt = torch.tensor(float(t), dtype=torch.float64)
    a, s, da, ds = (float(v(tt)) for v in (sch.alpha, sch.sigma, sch.d_alpha, sch.d_sigma))
    u = _u(f, x, t)
    # solve [[a, s], [da, ds]] [x1, eps] = [x, u]
    det = a * ds - s * da
    return (ds * x - s * u) / det


def direct_ddim(f, x, T):
    for i in range(len(T) - 1):
        a0, s0 = _abs(f.schedule, T[i])
        a1, s1 = _abs(f.schedule, T[i + 1])
        x1 = _data_pred(f, x, T[i])
        eps = (x - a0 * x1) / s0
        x = a1 * x1 + s1 * eps
    return x


def direct_dpmpp_2m(f, x, T):
    """DPM-Solver++(2M) as in its paper (Lu et al. 2022, Alg. 2), first-order last step."""

    def lam(t):
        a, s = _abs(f.schedule, t)
        return math.log(a / s) if a > 0 else -math.inf

    prev = None
    m = len(T) - 1
    for i in range(m):
        a1, s1 = _abs(f.schedule, T[i + 1])
        s0 = _abs(f.schedule, T[i])[1]
        d = _data_pred(f, x, T[i])
        if prev is None or i == m - 1:
            D = d
        else:
            h, hp = lam(T[i + 1]) - lam(T[i]), lam(T[i]) - lam(T[i - 1])
            r = hp / h
            D = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * prev
        x = (s1 / s0) * x + (a1 - _abs(f.schedule, T[i])[0] * s1 / s0) * D
        prev = d
    return x


DIRECT = {
    "euler": (direct_euler, 1),
    "midpoint": (direct_midpoint, 2),
    "heun": (direct_heun, 2),
    "rk4": (direct_rk4, 4),
    "ab2": (direct_ab2, 1),
    "ddim": (direct_ddim, 1),
    "dpm++2m": (direct_dpmpp_2m, 1),
}


def _vp_network_field():
    return NetworkField(TinyNet().double(), VPLinear(), (1, 4, 4), prediction="eps", time_input="s")


FIELDS = {"gmm": gmm, "vp-network": _vp_network_field}


@pytest.mark.parametrize("field_name", FIELDS)
@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("grid", ["uniform", "karras", "logsnr"])
def test_table_reproduces_direct_implementation(field_name, name, grid):
    f = FIELDS[field_name]()
    direct, per_step = DIRECT[name]
    nfe = 8
    T = make_grid(grid, nfe // per_step, f.schedule, f.t_lo, f.t_hi)
    x0 = torch.randn(6, *f.sample_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = direct(f, x0 * f.init_scale, T)
        got = sample(f, baseline(f"{name}:{grid}", nfe, f.schedule, f.t_lo, f.t_hi), x0)
    rel = float((got - ref).norm() / ref.norm())
    assert rel <= 1e-5, rel


def test_ddim_is_euler_on_fm_ot():
    f = gmm()
    e, d = (baseline(n, 8, f.schedule, 0.0, 1.0) for n in ("euler", "ddim"))
    assert np.allclose(e.a, d.a) and np.allclose(e.b, d.b) and np.allclose(e.t, d.t)


@pytest.fixture(scope="module")
def gmm_reference():
    from bns_export.groundtruth import dopri5

    f = gmm()
    x0 = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return f, x0, dopri5(lambda x, t: f(x, t), x0, 0.0, 1.0, rtol=1e-11, atol=1e-11).x


@pytest.mark.parametrize("name,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4), ("ab2", 2)])
def test_convergence_order(gmm_reference, name, order):
    f, x0, exact = gmm_reference
    per = {"rk4": 4, "midpoint": 2, "heun": 2}.get(name, 1)
    errs = [float((sample(f, baseline(name, per * m, f.schedule, 0.0, 1.0), x0) - exact).abs().max()) for m in (32, 64)]
    assert math.log2(errs[0] / errs[1]) == pytest.approx(order, abs=0.3)


def test_preconditioning_identity_and_exactness():
    f = gaussian()
    plain = baseline("midpoint", 8, f.schedule, 0.0, 1.0)
    same = baseline("midpoint", 8, f.schedule, 0.0, 1.0, precondition=1.0)
    assert np.allclose(plain.b, same.b) and np.allclose(plain.t, same.t) and np.allclose(plain.a, same.a)
    # sigma_0 = 3: Euler on xbar(r) = s_r x(t_r), t_r = r / (r + (1 - r) s0), s_r = r + (1 - r) s0
    s0, m = 3.0, 6
    table = baseline("euler", m, f.schedule, 0.0, 1.0, precondition=s0)
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    xbar, r = s0 * x0, np.linspace(0, 1, m + 1)
    for i in range(m):
        ri = r[i]
        si, ti = ri + (1 - ri) * s0, ri / (ri + (1 - ri) * s0)
        ubar = (1 - s0) / si * xbar + si * (s0 / (ri + (1 - ri) * s0) ** 2) * _u(f, xbar / si, ti)
        xbar = xbar + (r[i + 1] - ri) * ubar
    assert torch.allclose(sample(f, table, x0), xbar, atol=1e-10)


def test_json_round_trip(tmp_path):
    s = baseline("rk4", 8, gmm().schedule, 0.0, 1.0)
    s.meta["guidance"] = 2.0
    s.save(tmp_path / "s.json")
    back = NSSolver.load(tmp_path / "s.json")
    assert np.array_equal(back.b, s.b) and np.array_equal(back.t, s.t) and back.fingerprint() == s.fingerprint()
    assert back.meta["guidance"] == 2.0
    assert s.num_params == 7 + 8 + 36


def _solver_json(**change):
    d = baseline("euler", 3, gmm().schedule, 0.0, 1.0).to_json()
    d.update(change)
    return d


@pytest.mark.parametrize(
    "change,message",
    [
        ({"times": [0.0, float("nan"), 0.6]}, "NaN"),
        ({"a": [1.0, float("inf"), 1.0]}, "Infinity is not a JSON number"),
        ({"times": [0.0, 0.6, 0.3]}, "non-decreasing"),
        ({"times": [0.0, 0.3]}, "wrong lengths"),
        ({"b": [[0.3], [0.3, 0.3], [0.3]]}, "wrong lengths"),
        ({"schema_version": 99}, "unknown schema version"),
        ({"schema": "other"}, "not a bns-export solver file"),
        ({"a": [1, "x", 1]}, "a must be a number, got 'x'"),
        ({"nfe": 3.7}, "nfe must be a whole number"),
        ({"nfe": 1e400}, "nfe must be a whole number"),
        ({"guidance": "abc"}, "guidance must be a number"),
        ({"fingerprint": "0123456789abcdef"}, "stale fingerprint"),
    ],
)
def test_bad_solver_files_name_the_problem(tmp_path, change, message):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(_solver_json(**change)).replace('"nfe": Infinity', '"nfe": 1e400'))
    with pytest.raises(BNSError, match=message):
        NSSolver.load(p)


def test_odd_nfe_is_refused_for_two_stage_methods():
    with pytest.raises(BNSError, match="multiple of 2"):
        baseline("midpoint", 5, gmm().schedule, 0.0, 1.0)


def test_the_classic_equivalent_nfe_interpolates_in_log_nfe():
    from bns_export.metrics import equivalent_nfe

    curve = {4: 30.0, 8: 40.0, 16: 50.0}
    assert equivalent_nfe(curve, 40.0) == pytest.approx(8.0)
    assert equivalent_nfe(curve, 45.0) == pytest.approx(8 * 2**0.5)  # halfway in log NFE
    assert equivalent_nfe(curve, 20.0) == 4.0 and equivalent_nfe(curve, 51.0) is None
    assert equivalent_nfe({}, 1.0) is None


def test_eval_prints_the_classic_equivalent_nfe(tmp_path):
    import json

    from click.testing import CliRunner

    from bns_export.cli import main

    args = ["eval", "-m", "analytic:gmm", "-s", "euler", "--nfe", 4, "-n", 8, "--cache-dir", tmp_path]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--classic-equivalent", "--json"]])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(int(m) for m in report["best_classic"]) == [4, 6, 8, 12]
    assert report["n_eq"] <= 4.0  # euler is no better than the best classic at its own NFE
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--classic-equivalent"]])
    assert "classic-equivalent NFE: 4.0 (1.00n)" in r.stdout
