"""Conformance with diffusers on the scheduler configs public pipelines ship (tests/data/scheduler_configs):
the ODE's alpha and sigma at every training step against the scheduler object's own alphas_cumprod, and the
`:pipeline` grid against what the matching pipeline's set_timesteps call produces at 4, 8, 16 and its default
step count.  A config bns-export cannot mirror is refused in one line, never read wrongly."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bns_export.errors import BNSError
from bns_export.fields.adapters import network_time, to_velocity
from bns_export.fields.pipelines import DiscreteGrid, EDMGrid, FlowGrid
from bns_export.loaders.schedulers import DIFFUSERS_PREDICTIONS, read_scheduler

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

CORPUS = Path(__file__).resolve().parent / "data" / "scheduler_configs"
INDEX = json.loads((CORPUS / "index.json").read_text())["configs"]
#: configs refused in one line, and the words that say why
REFUSED: dict[str, str] = {}
#: discrete pipelines whose last step calls the network at training step 0, where bns-export's ODE ends
ENDS_ON_STEP_ZERO = {"dit"}


def _config(name: str) -> dict:
    return json.loads((CORPUS / f"{name}.json").read_text())


def _calculate_shift(seq_len: int, cfg: dict) -> float:
    """The pipelines' calculate_shift (diffusers.pipelines.flux.pipeline_flux), with their config defaults."""
    base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return seq_len * m + base - m * base_len


def pipeline_set_timesteps(entry: dict, cfg: dict, n: int):
    """The folder's scheduler object after the set_timesteps call its pipeline makes at n steps (each pipeline's
    `# 5. Prepare timesteps` block in diffusers)."""
    sched = getattr(diffusers, cfg["_class_name"]).from_config(cfg)
    shape, pipe = entry["sample_shape"], entry["pipeline"]
    if pipe == "FluxPipeline":  # packed 2x2 latents: (H/2)(W/2) tokens
        mu = _calculate_shift((shape[-2] // 2) * (shape[-1] // 2), cfg)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    elif pipe == "LTXPipeline":  # frames x height x width latent tokens
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=_calculate_shift(int(np.prod(shape[1:])), cfg))
    elif pipe == "Lumina2Pipeline":  # latents.shape[1] (the channels) is what it passes; no dynamic shift here
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=_calculate_shift(shape[0], cfg))
    elif pipe == "HunyuanVideoPipeline":
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])
    elif cfg.get("use_dynamic_shifting"):  # SD3 with dynamic shifting: tokens of its 2x2 patches
        sched.set_timesteps(n, mu=_calculate_shift((shape[-2] // 2) * (shape[-1] // 2), cfg))
    else:
        sched.set_timesteps(n)
    return sched


def test_the_corpus_is_the_public_pipelines():
    names = sorted(p.stem for p in CORPUS.glob("*.json") if p.name != "index.json")
    assert names == sorted(INDEX) and len(names) >= 22
    for name, entry in INDEX.items():
        assert entry["source"] and _config(name)["_class_name"], name


@pytest.mark.parametrize("name", sorted(INDEX))
def test_ode_and_pipeline_grid_match_diffusers(name):
    entry, cfg = INDEX[name], _config(name)
    shape, model_class = tuple(entry["sample_shape"]), entry["model_class"]
    if name in REFUSED:
        with pytest.raises(BNSError, match=REFUSED[name]) as e:
            read_scheduler(cfg, shape, model_class)
        assert "\n" not in str(e.value)
        return
    spec = read_scheduler(cfg, shape, model_class)
    grid = spec.schedule.pipeline
    ptype = cfg.get("prediction_type", "epsilon")
    assert spec.prediction == ("flow" if isinstance(grid, FlowGrid) else DIFFUSERS_PREDICTIONS[ptype])
    reference = pipeline_set_timesteps(entry, cfg, 4)
    if isinstance(grid, DiscreteGrid):  # the ODE: alpha and sigma at every training step
        k = torch.arange(spec.schedule.steps, dtype=torch.float64)
        t = 1.0 - (k + 1.0) / spec.schedule.steps
        ab = reference.alphas_cumprod.double()
        assert torch.allclose(spec.schedule.alpha(t), ab.sqrt(), atol=1e-6, rtol=0)
        # sigma^2, not sigma: diffusers' float32 alpha_bar near 1 leaves sqrt(1 - alpha_bar) only 3e-6 exact
        assert torch.allclose(spec.schedule.sigma(t) ** 2, 1 - ab, atol=1e-6, rtol=0)
    for n in (4, 8, 16, entry["default_steps"]):
        sched = pipeline_set_timesteps(entry, cfg, n)
        if isinstance(grid, EDMGrid):  # noise levels sigma, then 0: t = 1 / (1 + sigma); the network's atan time
            ours = grid.times(spec.schedule, n)
            assert np.allclose(ours, 1.0 / (1.0 + sched.sigmas.double().numpy()), atol=1e-6, rtol=0), (n, ours)
            sigma_ve = spec.schedule.sigma(torch.as_tensor(ours)) / spec.schedule.alpha(torch.as_tensor(ours))
            assert np.allclose(sigma_ve.numpy(), sched.sigmas.double().numpy(), rtol=1e-6, atol=1e-6)
            network = network_time(spec.schedule, spec.time_input, torch.as_tensor(ours[:-1])).numpy()
            assert np.allclose(network, sched.timesteps.double().numpy(), atol=1e-6, rtol=0)
            continue
        if isinstance(grid, FlowGrid):
            ours = grid.times(spec.schedule, n)
            assert np.allclose(ours, 1.0 - sched.sigmas.double().numpy(), atol=2e-6, rtol=0), (n, ours)
            network = network_time(spec.schedule, spec.time_input, torch.as_tensor(ours[:-1])).numpy()
            truncates = sched.timesteps.dtype == torch.int64  # DPM-Solver / UniPC flow sigmas: int timesteps
            assert np.allclose(network, sched.timesteps.double().numpy(), atol=1.0 if truncates else 1e-3, rtol=0)
            continue
        theirs = np.unique(sched.timesteps.double().numpy())[::-1]  # PNDM repeats one: its distinct steps
        assert np.allclose(grid.timesteps(spec.schedule, n), theirs, atol=1e-4, rtol=0), n
        if name in ENDS_ON_STEP_ZERO:
            with pytest.raises(BNSError, match="calls the network at training step 0"):
                grid.times(spec.schedule, n)
        else:
            times = grid.times(spec.schedule, n)
            assert np.allclose(times[:-1], 1.0 - (theirs + 1) / spec.schedule.steps) and times[-1] == spec.schedule.t_hi


def test_zero_terminal_snr_is_the_models_schedule():
    """CogVideoX-2b: zero terminal SNR and its SNR shift, as diffusers computes them (alpha_bar 0.096 at step 499)."""
    spec = read_scheduler(_config("cogvideox-2b"), (13, 16, 60, 90), "CogVideoXTransformer3DModel")
    t = torch.tensor([0.0, 0.5, 1.0 - 1.0 / 1000], dtype=torch.float64)
    ab = spec.schedule.alpha(t) ** 2
    assert ab[0] == 0.0 and abs(float(ab[1]) - 0.0960) < 5e-4
    assert torch.isfinite(spec.schedule.d_alpha(t)).all() and spec.schedule.sigma(t[:1]).item() == 1.0


def test_edm_preconditioning_is_the_vp_v_form():
    """Stable Audio's CosineDPMSolverMultistepScheduler: the network sees c_in x_ve, which is our sample on the
    EDMPreconditioned path, and c_skip x_ve + c_out F is the data our v-form conversion reads from F; the velocity
    is finite at the data end, where the pipeline's last step lands."""
    pytest.importorskip("torchsde", reason="diffusers' cosine DPM-Solver needs torchsde (test-only)")
    cfg = _config("stable-audio-open")
    spec = read_scheduler(cfg, (64, 1024), "StableAudioDiTModel")
    sched = diffusers.CosineDPMSolverMultistepScheduler.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for sigma in (500.0, 12.0, 1.0, 0.3):
        t = torch.tensor(1.0 / (1.0 + sigma), dtype=torch.float64)
        a, s = spec.schedule.alpha(t), spec.schedule.sigma(t)
        x_ve = x0 + sigma * eps
        x = sched.precondition_inputs(x_ve, torch.tensor(sigma, dtype=torch.float64))
        assert torch.allclose(x, a * x0 + s * eps, atol=1e-12)
        denoised = sched.precondition_outputs(x_ve, out, torch.tensor(sigma, dtype=torch.float64))
        assert torch.allclose(denoised, a * x - s * out, atol=1e-10)
    u = to_velocity(spec.schedule, spec.prediction, x0, torch.tensor(1.0, dtype=torch.float64), out)
    assert torch.isfinite(u).all()


@pytest.mark.parametrize(
    "change,words",
    [
        ({"prediction_type": "epsilon"}, "prediction_type"),
        ({"sigma_data": 0.5}, "sigma_data"),
        ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
        ({"sigma_schedule": "linear"}, "sigma_schedule"),
        ({"sigma_max": 0.1}, "sigma_max"),
    ],
)
def test_edm_choices_not_mirrored_are_refused(change, words):
    with pytest.raises(BNSError, match=words) as e:
        read_scheduler({**_config("stable-audio-open"), **change}, (64, 1024), "StableAudioDiTModel")
    assert "\n" not in str(e.value)


def test_other_edm_schedulers_are_refused():
    cfg = {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}
    with pytest.raises(BNSError, match="sigma_min"):
        read_scheduler(cfg, (4, 64, 64), "UNet2DConditionModel")


@pytest.mark.parametrize(
    "change,words",
    [
        ({"timestep_type": "continuous"}, "timestep_type"),
        ({"interpolation_type": "log_linear"}, "interpolation_type"),
        ({"use_beta_sigmas": True}, "use_beta_sigmas"),
        ({"invert_sigmas": True}, "invert_sigmas"),
        ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "more than one"),
        ({"timestep_spacing": "random"}, "timestep_spacing"),
        ({"snr_shift_scale": -1}, "snr_shift_scale"),
    ],
)
def test_keys_that_would_change_the_ode_unread_are_refused(change, words):
    with pytest.raises(BNSError, match=words):
        read_scheduler({**_config("sdxl-base"), **change}, (4, 128, 128), "UNet2DConditionModel")


@pytest.mark.parametrize("sigmas", ["use_karras_sigmas", "use_exponential_sigmas"])
@pytest.mark.parametrize("name", ["sdxl-base", "pixart-alpha"])
def test_respaced_sigmas_match_diffusers(name, sigmas):
    entry, cfg = INDEX[name], {**_config(name), sigmas: True}
    spec = read_scheduler(cfg, tuple(entry["sample_shape"]), entry["model_class"])
    for n in (4, 8, 20):
        theirs = pipeline_set_timesteps(entry, cfg, n).timesteps.double().numpy()
        assert np.allclose(spec.schedule.pipeline.timesteps(spec.schedule, n), theirs, atol=1e-3, rtol=0), (n, theirs)
