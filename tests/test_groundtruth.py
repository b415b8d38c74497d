import math

import pytest
import torch

from bns_export.fields import GuidedField
from bns_export.fields.analytic import gaussian, gmm_cond
from bns_export.groundtruth import dopri5, ground_truth


def test_dopri5_on_a_known_solution_and_counts_nfe():
    calls = []

    def f(x, t):
        calls.append(t)
        return -t * x  # x(t) = x0 exp(-t^2 / 2)

    x0 = torch.linspace(-2, 2, 10, dtype=torch.float64).reshape(2, 5)
    res = dopri5(f, x0, 0.0, 3.0, rtol=1e-8, atol=1e-8)
    assert torch.allclose(res.x, x0 * math.exp(-4.5), atol=1e-7)
    assert res.nfe == len(calls) == 1 + 6 * (res.steps + res.rejected)


def test_tolerance_controls_error_on_the_gaussian_flow():
    f = gaussian()
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    exact = f.means[0].reshape(1, 8, 8) + 0.5 * x0
    loose = dopri5(lambda x, t: f(x, t), x0, 0.0, 1.0, rtol=1e-3, atol=1e-3)
    tight = dopri5(lambda x, t: f(x, t), x0, 0.0, 1.0, rtol=1e-9, atol=1e-9)
    assert (tight.x - exact).abs().max() < 1e-7 < (loose.x - exact).abs().max()
    assert tight.nfe > loose.nfe


class CountingField(GuidedField):
    calls = 0

    def forward(self, x, t, labels=None):
        CountingField.calls += 1
        return super().forward(x, t, labels)


def test_cache_is_reused_and_keyed_by_guidance_and_tolerance(tmp_path):
    f = CountingField(gmm_cond(), 2.0)
    a = ground_truth(f, 8, seed=5, cache_dir=tmp_path)
    first = CountingField.calls
    b = ground_truth(f, 8, seed=5, cache_dir=tmp_path)
    assert CountingField.calls == first  # second run: no ODE solve
    assert torch.equal(a.x1, b.x1) and torch.equal(a.labels, b.labels) and a.nfe_mean == b.nfe_mean
    assert ground_truth(CountingField(gmm_cond(), 3.0), 8, seed=5, cache_dir=tmp_path).key != a.key
    assert ground_truth(f, 8, seed=5, rtol=1e-4, cache_dir=tmp_path).key != a.key
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_corrupt_cache_file_is_recomputed(tmp_path):
    f = GuidedField(gaussian())
    a = ground_truth(f, 4, seed=0, cache_dir=tmp_path)
    (tmp_path / f"{a.key}.safetensors").write_bytes(b"garbage")
    b = ground_truth(f, 4, seed=0, cache_dir=tmp_path)
    assert torch.equal(a.x1, b.x1)


def test_a_killed_solve_resumes_from_its_finished_batches(tmp_path, monkeypatch):
    """Each finished batch is cached on its own: a solve interrupted in its third batch solves only what is left
    next time, and gives the uninterrupted run's pairs."""
    import bns_export.groundtruth as gt_mod
    from bns_export.loaders import load_model

    field = load_model("analytic:gmm")
    whole = gt_mod.ground_truth(field, 12, 5, rtol=1e-4, atol=1e-4, cache_dir=tmp_path / "a", batch_size=4)
    real, calls = gt_mod.dopri5, []

    def counted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(gt_mod, "dopri5", counted)
    cache = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        gt_mod.ground_truth(field, 12, 5, rtol=1e-4, atol=1e-4, cache_dir=cache, batch_size=4)
    assert len(list(cache.glob("*.batch-*.safetensors"))) == 2
    calls.clear()
    again = gt_mod.ground_truth(field, 12, 5, rtol=1e-4, atol=1e-4, cache_dir=cache, batch_size=4)
    assert len(calls) == 1 and torch.equal(again.x1, whole.x1)
    assert [p.name for p in cache.iterdir()] == [f"{again.key}.safetensors"]  # the batches gave way to the entry


def test_a_classic_reference_is_a_cheaper_ground_truth_with_a_measured_ruler(tmp_path):
    """`--reference SOLVER:GRID@NFE`: the pairs solved by a classic solver at a fixed NFE (own cache key), its
    accuracy measured against dopri5 on the first pairs (the ruler), reported by eval."""
    import json

    from click.testing import CliRunner

    from bns_export.cli import main
    from bns_export.loaders import load_model
    from bns_export.metrics import psnr_per_sample
    from bns_export.solvers.resolve import classic_reference

    field = load_model("analytic:gmm")
    exact = ground_truth(field, 16, 3, cache_dir=tmp_path)
    ref = classic_reference("dpm++2m:karras@32")
    cheap = ground_truth(field, 16, 3, cache_dir=tmp_path, reference=ref)
    assert cheap.key != exact.key and cheap.nfe_mean == 32 and exact.ruler is None
    error = float(psnr_per_sample(cheap.x1, exact.x1).mean())
    assert 30 < error < 120 and abs(cheap.ruler - error) < 6  # the ruler is that error, on 8 of the pairs
    again = ground_truth(field, 16, 3, cache_dir=tmp_path, reference=ref)
    assert again.ruler == pytest.approx(cheap.ruler)  # cached with its ruler
    args = ["eval", "-m", "analytic:gmm", "-s", "euler", "--nfe", 4, "-n", 16, "--cache-dir", tmp_path]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--reference", "dpm++2m:karras@32", "--json"]])
    assert r.exit_code == 0, r.stderr
    assert 30 < json.loads(r.stdout)["gt_ruler"] < 120  # the eval pairs' own ruler
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--reference", "euler@4"]])
    assert r.exit_code == 0 and "within 10 dB of it: it measures the reference" in r.stdout
    for bad in ("dopri", "euler@1", "euler@x", "nosuch@8", "@8"):
        r = CliRunner().invoke(main, [str(a) for a in [*args, "--reference", bad]])
        assert r.exit_code == 2 and ("--reference" in r.stderr or "unknown solver" in r.stderr), (bad, r.stderr)
