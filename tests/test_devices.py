"""Device hygiene: every tensor the code creates follows its input's device.

Running the sampler, the distillation loss, dopri5 and torch.export with the model and inputs on
the `meta` device raises on any tensor left on the CPU, so these CPU-only tests catch a device
mix-up that would otherwise only show on a GPU.
"""

import pytest
import torch
from click.testing import CliRunner

from bns_export.backends import ExportRequest
from bns_export.backends.torch_export import export_program
from bns_export.cli import main
from bns_export.compile.build import signature_of
from bns_export.compile.unroll import UnrolledSampler
from bns_export.devices import resolve_device
from bns_export.distill import BNSParams
from bns_export.errors import BNSError
from bns_export.groundtruth import dopri5
from bns_export.loaders import ModelOptions, load_model
from bns_export.solvers import baseline, ns_sample, sample

MODELS = [
    ("digits", 1.0, None),
    ("mnist", 3.0, None),
    ("analytic:gmm-cond", 2.0, None),
    (
        "netfactories:tiny_cond",
        2.0,
        ModelOptions(prediction="eps", schedule="ddpm", time_input="index", shape=(1, 4, 4), num_classes=3),
    ),
]


def _meta(spec, guidance, options):
    field = load_model(spec, options, guidance, device="meta")
    dtype = field.default_dtype
    noise = torch.randn(3, *field.sample_shape, device="meta", dtype=dtype)
    labels = None if field.num_classes is None else torch.tensor([0, 1, -1], device="meta")
    return field, noise, labels


@pytest.mark.parametrize("spec,guidance,options", MODELS, ids=[m[0] for m in MODELS])
def test_sampler_distillation_loss_and_dopri5_stay_on_the_inputs_device(spec, guidance, options, monkeypatch):
    field, noise, labels = _meta(spec, guidance, options)
    for name in ("dpm++2m", "heun:karras", "ddim"):
        out = sample(field, baseline(name, 4, field.schedule, field.t_lo, field.t_hi), noise, labels)
        assert out.device.type == "meta" and out.shape == noise.shape
    params = BNSParams(baseline("midpoint", 4, field.schedule, field.t_lo, field.t_hi)).to("meta")
    t, a, b = params.tables(noise.dtype, noise.device)
    x = ns_sample(field, t, a, b, noise * field.init_scale, labels)
    torch.log(((x - noise) ** 2).flatten(1).mean(1)).mean().backward()
    assert params.a.grad is not None and params.a.grad.device.type == "meta"
    # dopri5: the step-size control reads one number per step; let it read 0.5 on meta
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda s: 0.5 if s.device.type == "meta" else real_item(s))
    with torch.no_grad():
        res = dopri5(lambda x, t: field(x, t, labels), noise, field.t_lo, field.t_hi)
    assert res.x.device.type == "meta" and res.steps > 0


@pytest.mark.parametrize("spec,guidance,options", MODELS[1:2] + MODELS[3:], ids=["mnist", "tiny_cond"])
def test_torch_export_traces_on_the_models_device(spec, guidance, options):
    field, _, _ = _meta(spec, guidance, options)
    sampler = UnrolledSampler(field, baseline("dpm++2m", 3, field.schedule, field.t_lo, field.t_hi)).eval()
    request = ExportRequest(tuple(field.sample_shape), signature_of(field), 4, 2)
    program = export_program(sampler, request)
    devices = {n.meta["val"].device.type for n in program.graph.nodes if hasattr(n.meta.get("val"), "device")}
    assert devices == {"meta"}


def test_device_specs():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BNSError, match="bad device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BNSError, match="needs a CUDA GPU") as e:
            resolve_device("cuda:0")
        assert e.value.exit_code == 3


@pytest.mark.parametrize("cmd", ["eval", "sample", "distill", "compile", "demo"])
def test_every_command_takes_a_device(cmd, tmp_path):
    args = {
        "eval": ["eval", "-m", "analytic:gmm", "-s", "euler", "-n", 4],
        "sample": ["sample", "-m", "analytic:gmm", "-s", "euler", "-n", 4, "-o", tmp_path / "s.npz"],
        "distill": ["distill", "-m", "analytic:gmm", "--nfe", 2, "-o", tmp_path / "s.json", "--iterations", 1],
        "compile": ["compile", "-m", "analytic:gmm", "-s", "euler", "-o", tmp_path / "a"],
        "demo": ["demo", "-o", tmp_path / "demo"],
    }[cmd]
    r = CliRunner().invoke(main, [str(a) for a in [*args, "--device", "tpu"]])
    assert r.exit_code == 2 and "bad device 'tpu'" in r.stderr and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []
    if not torch.cuda.is_available():
        r = CliRunner().invoke(main, [str(a) for a in [*args, "--device", "cuda"]])
        assert r.exit_code == 3 and r.stderr.count("\n") == 1 and "needs a CUDA GPU" in r.stderr


def test_network_dtype_bf16_runs_the_network_in_bf16_and_keeps_the_fingerprint():
    fp32 = load_model("digits")
    bf16 = load_model("digits", network_dtype="bf16")
    assert fp32.fingerprint() == bf16.fingerprint()
    noise = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = baseline("dpm++2m", 8, fp32.schedule, fp32.t_lo, fp32.t_hi)
    a, b = sample(fp32, s, noise), sample(bf16, s, noise)
    assert a.dtype == b.dtype == torch.float32  # solver state stays fp32
    err = (a - b).abs().max().item()
    assert 0 < err < 0.2
    with pytest.raises(BNSError, match="needs a network model"):
        load_model("analytic:gmm", network_dtype="bf16")


def test_full_fp32_turns_tf32_off_inside_and_restores_the_flags():
    from bns_export.devices import full_fp32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with full_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
