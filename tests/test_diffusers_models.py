"""`-m diffusers:PATH`: tiny random-weight diffusers folders saved to a temp dir (no download)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from netfactories import diffusers_unet  # noqa: E402

from bns_export.cli import main  # noqa: E402
from bns_export.errors import BNSError  # noqa: E402
from bns_export.loaders import ModelOptions, load_model  # noqa: E402


def _unet(num_class_embeds=None):
    return diffusers_unet((8, 16), 4, num_class_embeds=num_class_embeds)


def _save(tmp_path, scheduler, unet=None, name="pipe"):
    path = tmp_path / name
    diffusers.DDPMPipeline(unet=unet or _unet(), scheduler=scheduler).save_pretrained(path)
    return path


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type,ours", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_schedule_and_prediction_come_from_the_configs(tmp_path, beta_schedule, prediction_type, ours):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=500, beta_schedule=beta_schedule, prediction_type=prediction_type
    )
    field = load_model(f"diffusers:{_save(tmp_path, sched)}").field
    assert field.prediction == ours and field.time_input == "index" and field.sample_shape == (1, 8, 8)
    steps = np.arange(0, 500, 37)
    t = torch.as_tensor(1.0 - (steps + 1) / 500.0, dtype=torch.float64)
    ab = sched.alphas_cumprod.double().numpy()[steps]
    assert np.allclose(field.schedule.alpha(t).numpy() ** 2, ab, rtol=1e-5)


def test_flow_matching_folder(tmp_path):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    field = load_model(f"diffusers:{_save(tmp_path, sched)}").field
    assert field.schedule.name == "fm-ot" and field.prediction == "flow" and field.time_input == "flow-timestep"


def test_flags_override_and_cli_runs_end_to_end(tmp_path):
    path = _save(tmp_path, diffusers.DDPMScheduler(num_train_timesteps=1000), _unet(num_class_embeds=4))
    field = load_model(f"diffusers:{path}", ModelOptions(prediction="v")).field
    assert field.prediction == "v" and field.num_classes == 3  # 4 embeddings: 3 classes + the null class
    r = CliRunner().invoke(main, ["eval", "-m", f"diffusers:{path}", "-s", "unipc", "--nfe", "4", "-n", "4", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["nfe"] == 4
    out = tmp_path / "art"
    r = CliRunner().invoke(
        main, ["compile", "-m", f"diffusers:{path}", "-s", "dpm++2m", "--nfe", "3", "--max-batch", "2", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"]


def test_bad_folders(tmp_path):
    with pytest.raises(BNSError, match="not found"):
        load_model(f"diffusers:{tmp_path / 'nope'}")
    with pytest.raises(BNSError, match="no unet/ or transformer/"):
        load_model(f"diffusers:{tmp_path}")
    path = _save(tmp_path, diffusers.DDPMScheduler(), name="bin")
    for f in (path / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(BNSError, match="never unpickles"):
        load_model(f"diffusers:{path}")


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "SASolverScheduler"])
def test_folders_saved_with_non_finite_scheduler_literals_load(tmp_path, name):
    """diffusers writes `"lambda_min_clipped": -Infinity` into these configs: accepted there, and only there."""
    sched = getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule="scaled_linear")
    path = _save(tmp_path, sched)
    assert "Infinity" in (path / "scheduler" / "scheduler_config.json").read_text()
    field = load_model(f"diffusers:{path}").field
    assert field.prediction == "eps" and field.schedule.steps == 1000


@pytest.mark.parametrize("spacing,offset", [("linspace", 0), ("leading", 1), ("trailing", 0)])
def test_diffusers_grid_follows_the_folders_timestep_spacing(tmp_path, spacing, offset):
    from bns_export.solvers import baseline

    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    field = load_model(f"diffusers:{_save(tmp_path, sched)}").field
    grid = baseline("unipc:diffusers", 6, field.schedule, field.t_lo, field.t_hi).t
    sched.set_timesteps(6)
    ours = 1000 * (1 - np.asarray(grid)) - 1  # our time t = 1 - (k + 1) / T back to the step index k
    assert np.allclose(ours, sched.timesteps.numpy(), atol=1e-6)
