"""The diffusers model classes users bring, each as a tiny random-weight save_pretrained folder (no download):
eval, a 10-iteration distillation (one step: the export's cost grows with the steps, and the NS loop around the
network is the same code for every class, tested on its own), ONNX compile with parity, the torch-free runtime
fed every named input, and the Triton config parsed against Triton's schema.  `python tools/family_table.py` fills
docs' table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from cliresult import run as cli  # noqa: E402
from families import FAMILIES, build_family  # noqa: E402

from bns_export.errors import BNSError  # noqa: E402
from bns_export.loaders import ModelOptions, load_model  # noqa: E402
from bns_export.runtime import load  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


#: compile flags per family beyond the defaults: SDXL's time embedding is fp32 beside fp16 text embeddings, so
#: its fp16 graph checks that the concatenations get one type
COMPILE_FLAGS = {"sdxl": ["--fp16"]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_end_to_end(family, root):
    folder, opts, guidance = build_family(family, root / family)
    spec = f"diffusers:{folder}"
    args = ["-m", spec, *opts, "-w", guidance]
    code, out, err = cli("eval", *args, "-s", "dpm++2m", "--nfe", 4, "-n", 4, "--rtol", 1e-3, "--atol", 1e-3, "--json")
    assert code == 0, err
    assert np.isfinite(json.loads(out)["psnr_mean"])
    solver = root / f"{family}.json"
    code, _, err = cli(
        "distill", *args, "--nfe", 1, "-o", solver, "--iterations", 10, "--batch-size", 4, "--train-pairs", 8,
        "--val-pairs", 4, "--val-every", 5, "--rtol", 1e-3, "--atol", 1e-3, "--base", "euler",
    )  # fmt: skip
    assert code == 0, err
    art = root / f"{family}-art"
    code, out, err = cli("compile", *args, *COMPILE_FLAGS.get(family, []), "-s", solver, "--max-batch", 2, "-o", art,
                         "--json")  # fmt: skip
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["validation"]["passed"], manifest["validation"]
    assert manifest["precision"] == ("fp16" if "--fp16" in COMPILE_FLAGS.get(family, []) else "fp32")
    runner = load(art)
    assert runner.input_names == [i["name"] for i in manifest["inputs"]]
    noise = np.random.default_rng(0).standard_normal((2, *runner.sample_shape)).astype(np.float32)
    cond = None
    if runner.named_conditions:
        cond = {n: np.zeros((2, *runner.condition_shapes[n]), np.float32) for n in runner.condition_names}
    elif runner.condition_name == "labels":
        cond = np.array([0, -1])
    elif runner.conditional:
        cond = np.zeros((2, *runner.cond_shape), np.float32)
    assert np.isfinite(runner(noise, cond)).all()
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (test-only) is not installed")
    from google.protobuf import text_format

    code, _, err = cli("triton", art, "--repo", root / "repo", "--name", family)
    assert code == 0, err
    cfg = text_format.Parse((root / "repo" / family / "config.pbtxt").read_text(), mc.ModelConfig())
    assert [i.name for i in cfg.input] == runner.input_names


def test_named_conditions_are_graph_inputs_and_checked(root):
    folder, opts, guidance = build_family("sd3", root / "sd3-named")
    field = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1]), guidance=float(guidance))
    assert field.condition_layout.names == ("encoder_hidden_states", "pooled_projections")
    assert field.schedule.pipeline.shift == 3.0
    import diffusers

    from bns_export.solvers import baseline

    grid = baseline("euler:pipeline", 4, field.schedule, field.t_lo, field.t_hi).t
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)  # what StableDiffusion3Pipeline steps on
    sched.set_timesteps(4)
    assert np.allclose(1 - np.asarray(grid), sched.sigmas.numpy()[:4], atol=1e-6)


def test_sdxl_time_ids_default_from_the_size_and_missing_conditions_are_one_line(root, tmp_path):
    from safetensors.torch import save_file

    folder, opts, _ = build_family("sdxl", root / "sdxl-ids")
    field = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1]))
    assert field.condition_layout.names == ("encoder_hidden_states", "text_embeds", "time_ids")
    ids = field.condition_layout.unpack(field.cond_set)["time_ids"]
    assert torch.equal(ids[0], torch.tensor([64.0, 64, 0, 0, 64, 64]))
    save_file({"encoder_hidden_states": torch.zeros(2, 5, 32)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(BNSError, match="missing text_embeds"):
        load_model(f"diffusers:{folder}", ModelOptions(cond_set=str(tmp_path / "c.safetensors")))


def test_unsupported_class_lists_the_supported_ones(tmp_path):
    (tmp_path / "p" / "transformer").mkdir(parents=True)
    config = {"_class_name": "Lumina2Transformer2DModel"}
    (tmp_path / "p" / "transformer" / "config.json").write_text(json.dumps(config))
    code, _, err = cli("eval", "-m", f"diffusers:{tmp_path / 'p'}", "-s", "euler")
    assert code == 2 and "not supported; supported: UNet2DModel" in err and "FluxTransformer2DModel" in err


def test_flux_needs_a_shape_and_uses_the_guidance_embedding(root):
    folder, opts, _ = build_family("flux", root / "flux-shape")
    with pytest.raises(BNSError, match="--shape"):
        load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1]))
    field = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1], shape=(4, 8, 8)), guidance=3.5)
    assert field.embedded_guidance and float(field.net.consts()["guidance"]) == 3.5
    calls = []
    field.field.net.model.register_forward_hook(lambda module, args, output: calls.append(1))
    x = torch.zeros(2, 4, 8, 8)
    field(x, torch.tensor(0.5), field.cond_set[:2])
    assert len(calls) == 1  # one network call per step, batch 2: no CFG doubling
