"""BNSScheduler: a diffusers-style loop gives the sample of `bns_export.solvers.sample`; pipelines run with it."""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from netfactories import diffusers_unet  # noqa: E402

from bns_export.diffusers import BNSScheduler  # noqa: E402
from bns_export.errors import BNSError  # noqa: E402
from bns_export.fields import NetworkField  # noqa: E402
from bns_export.fields.schedules import DDPMDiscrete  # noqa: E402
from bns_export.solvers import baseline, sample  # noqa: E402


class Eps(torch.nn.Module):
    """net(x, t) -> eps for our NetworkField, from a diffusers UNet2DModel."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


@pytest.fixture(scope="module")
def unet():
    return diffusers_unet((8, 16), 4).eval()


@pytest.fixture(scope="module")
def field(unet):
    return NetworkField(Eps(unet), DDPMDiscrete.linear(1000), (1, 8, 8), prediction="eps", time_input="index")


@pytest.mark.parametrize("spec", ["dpm++2m", "unipc:karras"])
def test_diffusers_loop_equals_our_sampler(unet, field, spec):
    solver = baseline(spec, 6, field.schedule, field.t_lo, field.t_hi)
    sched = BNSScheduler.from_solver(solver, field)
    sched.set_timesteps(6)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(eps, t, x).prev_sample
        ours = sample(field, solver, noise)
    assert (x - ours).abs().max().item() <= 1e-5 * max(1.0, ours.abs().max().item())


def test_config_round_trip_and_refusals(field, tmp_path):
    solver = baseline("deis", 5, field.schedule, field.t_lo, field.t_hi)
    sched = BNSScheduler.from_solver(solver, field)
    sched.save_pretrained(tmp_path)
    back = BNSScheduler.from_pretrained(tmp_path)
    assert np.array_equal(back.solver.b, solver.b) and back.config.prediction_type == "epsilon"
    assert torch.equal(back.timesteps, sched.timesteps) and len(back) == 5
    with pytest.raises(BNSError, match="exactly 5 steps"):
        back.set_timesteps(10)
    with pytest.raises(BNSError, match="takes no timesteps"):
        back.set_timesteps(timesteps=[999, 500])


def test_a_pipeline_runs_with_the_scheduler_swapped_in(unet, field):
    solver = baseline("dpm++2m", 4, field.schedule, field.t_lo, field.t_hi)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=BNSScheduler.from_solver(solver, field))
    images = pipe(
        batch_size=2, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_loops_stay_close_to_fp32(unet, field, dtype, tol):
    """step() computes in fp32 and returns the sample's dtype: the loop's error is the network's, not the solver's."""
    solver = baseline("dpm++2m", 6, field.schedule, field.t_lo, field.t_hi)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(dt):
        sched = BNSScheduler.from_solver(solver, field)
        sched.set_timesteps(6)
        x = (noise * sched.init_noise_sigma).to(dt)
        with torch.no_grad():
            for t in sched.timesteps.to(dt):  # pipelines cast timesteps to their dtype too
                eps = unet(sched.scale_model_input(x, t).float(), t.float()).sample.to(dt)
                x = sched.step(eps, t, x).prev_sample
        assert x.dtype == dt
        return x.float()

    ref = run(torch.float32)
    assert ((run(dtype) - ref).norm() / ref.norm()).item() < tol


def test_config_keeps_the_schedule_under_diffusers_keys(field, tmp_path):
    solver = baseline("dpm++2m", 4, field.schedule, field.t_lo, field.t_hi)
    sched = BNSScheduler.from_solver(solver, field)
    other = diffusers.DPMSolverMultistepScheduler.from_config(sched.config)
    assert np.allclose(other.betas.double().numpy(), field.schedule.betas.numpy(), rtol=1e-6)
    assert other.config.prediction_type == "epsilon" and "DPMSolverMultistepScheduler" in sched._compatibles
    assert len(repr(sched)) < 200 and isinstance(BNSError("x"), ValueError)


def test_sigmas_begin_index_and_add_noise(field):
    solver = baseline("euler", 4, field.schedule, field.t_lo, field.t_hi)
    sched = BNSScheduler.from_solver(solver, field)
    sched.set_timesteps(sigmas=sched.sigmas[:-1].tolist())  # a pipeline passing the table's own sigmas
    with pytest.raises(BNSError, match="no sigmas but its own"):
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4))
    sched.set_begin_index(0)
    with pytest.raises(BNSError, match="pass strength 1"):
        sched.set_begin_index(2)
    x0, eps = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    t = sched.timesteps[1:2].repeat(2)
    noisy = sched.add_noise(x0, eps, t)
    ab = field.schedule.alpha(torch.tensor(float(solver.t[1]), dtype=torch.float64)).item()
    s = field.schedule.sigma(torch.tensor(float(solver.t[1]), dtype=torch.float64)).item()
    assert torch.allclose(noisy, ab * x0 + s * eps, atol=1e-6)


@pytest.mark.parametrize(
    "folder_scheduler,settings",
    [
        ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
        ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
    ],
)
def test_other_schedulers_from_the_bns_config_are_the_folders(unet, tmp_path, folder_scheduler, settings):
    """`X.from_config(bns.config)` gives what `X.from_pretrained(folder)` gives, for the folder's own class too:
    the BNS config carries the folder's scheduler settings beside its own keys."""
    folder = tmp_path / "p"
    unet.save_pretrained(folder / "unet")
    getattr(diffusers, folder_scheduler)(beta_schedule="scaled_linear", **settings).save_pretrained(
        folder / "scheduler"
    )
    field = NetworkField(Eps(unet), DDPMDiscrete.linear(1000), (1, 8, 8), prediction="eps", time_input="index")
    solver = baseline("euler", 4, field.schedule, field.t_lo, field.t_hi)
    solver.meta["model"] = {"sample_shape": [1, 8, 8]}
    bns = BNSScheduler.from_solver(solver, str(folder))
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    names = ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"]
    for name in names:
        ours, theirs = (getattr(diffusers, name).from_config(c) for c in (bns.config, _folder_config(folder)))
        assert torch.allclose(ours.alphas_cumprod.double(), theirs.alphas_cumprod.double(), atol=1e-6), name
        ours.set_timesteps(10)
        theirs.set_timesteps(10)
        assert torch.equal(ours.timesteps, theirs.timesteps), name
        for t in ours.timesteps[:3]:
            a, b = ours.step(out, t, x).prev_sample, theirs.step(out, t, x).prev_sample
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (name, float((a - b).abs().max()))


def _folder_config(folder):
    return diffusers.DDIMScheduler.load_config(folder / "scheduler")
