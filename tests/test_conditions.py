"""`bns-export conditions`: prompts -> a condition set with the folder's own tokenizers and text encoders.

Each tiny pipeline (tests/textencoders.py: character-level CLIP and T5 tokenizers built here, 1-2 layer
encoders) is run by diffusers itself with classifier-free guidance up to its network's first call; the
set the command wrote must hold exactly what that call received: the prompts' conditions and the
negative's (the null), SDXL's pooled embeddings, SD3's three encoders, Flux's T5 + CLIP, PixArt's mask.
"""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")
pytest.importorskip("transformers", reason="transformers (test-only dependency) is not installed")

from cliresult import run as cli  # noqa: E402
from textencoders import PIPELINES, build_pipeline  # noqa: E402

PROMPTS = ["a red cat", "a photo of a dog, at sunset", "x"]


class _FirstCall(Exception):
    pass


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    (root / "prompts.txt").write_text("\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n")
    return root


def _network_inputs(folder, name: str, negative: str | None) -> dict:
    """What the pipeline's network receives at its first call, for PROMPTS at guidance 3."""
    cls, net = PIPELINES[name]
    pipe = getattr(diffusers, cls).from_pretrained(str(folder))
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)
        if args:
            seen["encoder_hidden_states"] = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        raise _FirstCall

    getattr(pipe, net).register_forward_pre_hook(hook, with_kwargs=True)
    kw = {"negative_prompt": [negative] * len(PROMPTS)} if negative is not None and name != "flux" else {}
    if name == "pixart":
        kw["use_resolution_binning"] = False
    with pytest.raises(_FirstCall):
        pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.0, output_type="latent", height=16, width=16, **kw)
    return seen


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("negative", [None, "blurry"])
def test_the_set_is_what_the_pipeline_passes_its_network(root, name, negative):
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = root / name / "pipe"
    if not folder.exists():
        build_pipeline(name, root / name)
    out = root / f"{name}-{negative}.safetensors"
    args = ["conditions", "-m", f"diffusers:{folder}", "-p", root / "prompts.txt", "-o", out]
    code, stdout, err = cli(*args, *(["--negative", negative] if negative is not None else []))
    assert code == 0, err
    got = load_file(str(out))
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompts"]) == PROMPTS and json.loads(meta["negative"]) == negative
    seen = _network_inputs(folder, name, negative)
    n = len(PROMPTS)
    ehs = seen["encoder_hidden_states"]
    if name == "flux":  # embedded guidance: one branch, the prompts'
        assert torch.equal(ehs, got["encoder_hidden_states"])
        assert torch.equal(seen["pooled_projections"], got["pooled_projections"])
        assert "null.encoder_hidden_states" in got
        return
    expected = {"encoder_hidden_states": ehs}
    if name == "sdxl":
        expected["text_embeds"] = seen["added_cond_kwargs"]["text_embeds"]
    if name == "sd3":
        expected["pooled_projections"] = seen["pooled_projections"]
    if name == "pixart":
        expected["encoder_attention_mask"] = seen["encoder_attention_mask"].float()
    assert sorted(k for k in got if not k.startswith("null.")) == sorted(expected)
    for key, both in expected.items():  # classifier-free guidance: the negative's rows first, then the prompts'
        assert torch.allclose(got[key], both[n:], atol=1e-6), key
        assert torch.allclose(got[f"null.{key}"].expand(n, *both.shape[1:]), both[:n], atol=1e-6), key


def test_a_set_with_a_mask_runs_and_compiles_with_the_mask_as_an_input(root, tmp_path):
    import numpy as np

    from bns_export.loaders import ModelOptions, load_model
    from bns_export.runtime import load

    folder = root / "pixart" / "pipe"
    if not folder.exists():
        build_pipeline("pixart", root / "pixart")
    cset = tmp_path / "set.safetensors"
    args = ["-m", f"diffusers:{folder}", "-p", root / "prompts.txt", "-o", cset, "--max-tokens", 12]
    assert cli("conditions", *args)[0] == 0
    field = load_model(f"diffusers:{folder}", ModelOptions(cond_set=str(cset)))
    cond = field.field.cond_set[:1]
    layout = field.field.condition_layout
    parts = layout.unpack(cond)
    assert parts["encoder_attention_mask"].shape == (1, 12) and parts["encoder_attention_mask"].min() == 0
    unmasked = layout.pack({**parts, "encoder_attention_mask": torch.ones(1, 12)})
    x, t = torch.randn(1, *field.sample_shape), torch.tensor([0.5])
    with torch.no_grad():
        assert not torch.allclose(field.field(x, t, cond), field.field(x, t, unmasked), atol=1e-5)
    solver = tmp_path / "s.json"
    art = tmp_path / "art"
    spec = ["-m", f"diffusers:{folder}", "--cond-set", cset]
    assert cli("compile", *spec, "-s", "euler", "--nfe", 2, "-o", art, "--max-batch", 1)[0] == 0
    runner = load(art)
    assert "encoder_attention_mask" in runner.condition_names
    cond = {n: np.zeros((1, *runner.condition_shapes[n]), np.float32) for n in runner.condition_names}
    noise = np.zeros((1, *runner.sample_shape), np.float32)
    assert np.isfinite(runner(noise, cond)).all()
    assert not solver.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-m", "digits"], "diffusers:FOLDER"),
        (["-m", "diffusers:{model}"], "no model_index.json"),
        (["-p", "{empty}"], "holds no prompts"),
        (["-p", "{binary}"], "not UTF-8"),
        (["-p", "/no/such/prompts.txt"], "prompts file not found"),
        (["-o", "{root}/set.pt"], ".safetensors"),
        (["-o", "/no/such/dir/set.safetensors"], "does not exist"),
        (["--max-tokens", "0"], "--max-tokens"),
    ],
)
def test_bad_input_is_one_line(root, tmp_path, args, needle):
    from families import build_family

    model, _, _ = build_family("sd", tmp_path / "bare")  # a model folder without its pipeline's text encoders
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00a")
    folder = root / "sd" / "pipe"
    if not folder.exists():
        build_pipeline("sd", root / "sd")
    fill = {"model": model, "empty": tmp_path / "empty.txt", "binary": tmp_path / "binary.txt", "root": tmp_path}
    base = {"-m": f"diffusers:{folder}", "-p": str(root / "prompts.txt"), "-o": str(tmp_path / "ok.safetensors")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value.format(**fill)
    code, out, err = cli("conditions", *[x for kv in base.items() for x in kv])
    assert code == 2, (code, out, err)
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*.tmp"))
