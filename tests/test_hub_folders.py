"""Folders as the Hub ships them: legacy class names diffusers remaps (Transformer2DModel as DiT / PixArt),
PixArt-alpha's size micro-conditions, the SDXL refiner's five time ids, UNets with class embeddings, and a
checked Flux --shape.  Tiny random-weight folders written by save_pretrained, edited as the Hub's are."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from cliresult import run as cli  # noqa: E402
from families import L, _cond_set, _unet_kw, build_family  # noqa: E402

from bns_export.compile.build import compile_artifact  # noqa: E402
from bns_export.errors import BNSError  # noqa: E402
from bns_export.loaders import ModelOptions, load_model  # noqa: E402


def _rename_class(folder, name: str) -> None:
    cfg_path = folder / "transformer" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "_class_name": name}))


@pytest.mark.parametrize("family,norm", [("dit", "ada_norm_zero"), ("pixart", "ada_norm_single")])
def test_legacy_transformer2d_folders_load_as_diffusers_does(family, norm, tmp_path):
    folder, opts, guidance = build_family(family, tmp_path / family)
    assert json.loads((folder / "transformer" / "config.json").read_text())["norm_type"] == norm
    before = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1] if opts else None), float(guidance))
    _rename_class(folder, "Transformer2DModel")  # what the Hub's DiT-XL-2 and PixArt-alpha configs say
    after = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1] if opts else None), float(guidance))
    x, t = torch.randn(2, *after.sample_shape, generator=torch.Generator().manual_seed(0)), torch.tensor(0.5)
    cond = after.cond_set[:2] if opts else torch.tensor([1, 2])
    assert torch.equal(before(x, t, cond), after(x, t, cond))


def test_pixart_alpha_size_conditions_are_graph_constants(tmp_path):
    folder, opts, _ = build_family("pixart", tmp_path / "pixart")
    cfg_path = folder / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    # its micro-conditioning embedders need a width divisible by 3: 2 heads of 6 (cross-attention at that width)
    model = diffusers.PixArtTransformer2DModel.from_config(
        {**cfg, "use_additional_conditions": True, "attention_head_dim": 6, "cross_attention_dim": 12}
    )
    model.save_pretrained(folder / "transformer")  # as the 1024 px models have them
    field = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1]), 3.0)
    consts = field.field.net.consts()
    assert consts["resolution"].tolist() == [64.0, 64.0] and consts["aspect_ratio"].tolist() == [1.0]
    x = torch.zeros(2, *field.sample_shape)
    assert torch.isfinite(field(x, torch.tensor(0.0), field.cond_set[:2])).all()  # t = 0 ran before: None.flatten
    m = compile_artifact(
        f"diffusers:{folder}", "euler", "onnx", tmp_path / "art", options=ModelOptions(cond_set=opts[1]),
        nfe=2, max_batch=2, guidance=3.0, log=lambda m: None,
    )  # fmt: skip
    assert m["validation"]["passed"], m["validation"]


def _refiner(folder, with_index: bool):
    """An SDXL-refiner-shaped UNet: text_time with 5 time ids (sizes, crop, aesthetic score)."""
    unet = diffusers.UNet2DConditionModel(
        **_unet_kw(), cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 5 * 8,
    )  # fmt: skip
    unet.save_pretrained(folder / "unet")
    diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", steps_offset=1).save_pretrained(
        folder / "scheduler"
    )
    if with_index:
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline",
                                                             "requires_aesthetics_score": True}))  # fmt: skip


def test_sdxl_refiner_takes_five_time_ids_with_the_aesthetic_score(tmp_path):
    _refiner(tmp_path / "r", with_index=True)
    cond = _cond_set(tmp_path / "c.safetensors", {"encoder_hidden_states": (L, 32), "text_embeds": (16,)})
    field = load_model(f"diffusers:{tmp_path / 'r'}", ModelOptions(cond_set=cond), 3.0)
    ids = field.condition_layout.unpack(field.cond_set)["time_ids"]
    null = field.condition_layout.unpack(field.field.null_cond[None])["time_ids"]
    assert ids[0].tolist() == [64.0, 64, 0, 0, 6.0] and null[0].tolist() == [64.0, 64, 0, 0, 2.5]
    x = torch.zeros(2, *field.sample_shape)
    assert torch.isfinite(field(x, torch.tensor(0.3), field.cond_set[:2])).all()
    # without the pipeline's model_index.json, the condition set's (N, 5) time ids say it
    _refiner(tmp_path / "bare", with_index=False)
    given = _cond_set(
        tmp_path / "c5.safetensors", {"encoder_hidden_states": (L, 32), "text_embeds": (16,), "time_ids": (5,)}
    )
    bare = load_model(f"diffusers:{tmp_path / 'bare'}", ModelOptions(cond_set=given), 3.0)
    assert bare.condition_layout.names == ("encoder_hidden_states", "text_embeds", "time_ids")


@pytest.mark.parametrize("kind", ["num_class_embeds", "timestep"])
def test_unets_with_class_embeddings_take_class_labels(kind, tmp_path):
    extra = {"num_class_embeds": 10} if kind == "num_class_embeds" else {"class_embed_type": "timestep"}
    unet = diffusers.UNet2DConditionModel(**_unet_kw(), cross_attention_dim=32, **extra)
    unet.save_pretrained(tmp_path / "u" / "unet")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "u" / "scheduler")
    cond = _cond_set(tmp_path / "c.safetensors", {"encoder_hidden_states": (L, 32), "class_labels": (1,)})
    if kind == "num_class_embeds":  # indices into the embedding table
        from safetensors.torch import load_file, save_file

        d = load_file(cond)
        d["class_labels"], d["null.class_labels"] = torch.arange(6.0)[:, None], torch.zeros(1)
        save_file(d, cond)
    code, out, err = cli("eval", "-m", f"diffusers:{tmp_path / 'u'}", "--cond-set", cond, "-w", 2, "-s", "euler",
                         "--nfe", 2, "-n", 2, "--rtol", 1e-3, "--atol", 1e-3, "--json")  # fmt: skip
    assert code == 0 and np.isfinite(json.loads(out)["psnr_mean"]), err
    unlabelled = _cond_set(tmp_path / "no-labels.safetensors", {"encoder_hidden_states": (L, 32)})
    code, _, err = cli("eval", "-m", f"diffusers:{tmp_path / 'u'}", "--cond-set", unlabelled, "-s", "euler", "--nfe", 2)
    assert code == 2 and "missing class_labels" in err, err


def test_flux_shape_channels_are_checked(tmp_path):
    folder, opts, _ = build_family("flux", tmp_path / "flux")
    with pytest.raises(BNSError, match="packs 2x2 patches of 4 latent channels"):
        load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1], shape=(16, 8, 8)))
