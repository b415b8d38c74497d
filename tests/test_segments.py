"""Segments: tables for the part of the trajectory a pipeline runs (fields.segment), their ground truth, the CLI,
and BNSScheduler in SDXL's base + refiner (denoising_end / denoising_start) and img2img at strength < 1."""

from __future__ import annotations

import json

import pytest
import torch
from cliresult import run as cli

from bns_export.errors import BNSError
from bns_export.fields.segment import Segment, SegmentSpec
from bns_export.groundtruth import dopri5, ground_truth, make_inputs
from bns_export.loaders import load_model
from bns_export.solvers import baseline, sample


def test_a_later_segment_starts_from_the_exact_state_of_the_same_trajectory(tmp_path):
    field = load_model("analytic:gmm")
    seg = Segment(field, 0.5, field.t_hi)
    gt = ground_truth(seg, 16, 7, rtol=1e-7, atol=1e-7, cache_dir=tmp_path)
    whole = ground_truth(field, 16, 7, rtol=1e-7, atol=1e-7, cache_dir=tmp_path)
    noise, _ = make_inputs(field, 16, 7, field.default_dtype)
    mid = dopri5(lambda x, t: field(x, t, None), field.start(noise), field.t_lo, 0.5, 1e-7, 1e-7).x
    assert torch.allclose(gt.noise, mid, atol=1e-5)  # the pairs start at x(0.5) ...
    assert torch.allclose(gt.x1, whole.x1, atol=1e-4)  # ... and end where the whole trajectory does
    again = ground_truth(seg, 16, 7, rtol=1e-7, atol=1e-7, cache_dir=tmp_path)  # cached, its own key
    assert torch.equal(again.noise, gt.noise) and again.key != whole.key
    # a sampler on the segment starts from those states: a fine classic solve lands on the truth
    fine = baseline("dpm++2m", 64, seg.schedule, seg.t_lo, seg.t_hi)
    assert (sample(seg, fine, gt.noise, None) - gt.x1).abs().max() < 1e-3


@pytest.mark.parametrize(
    "args, bounds",
    [
        ({"interval": "0.2:0.7"}, (0.2, 0.7)),
        ({"strength": 0.3}, (0.7, 1.0)),
        ({"denoising_end": 0.8}, (0.0, 0.8)),
        ({"denoising_start": 0.8}, (0.8, 1.0)),
    ],
)
def test_segment_specs(args, bounds):
    assert SegmentSpec.parse(**args).bounds(0.0, 1.0) == pytest.approx(bounds)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--interval", "0.7:0.2"], "0 <= T0 < T1 <= 1"),
        (["--interval", "a:b"], "T0:T1"),
        (["--strength", "0"], "(0, 1]"),
        (["--denoising-end", "1"], "(0, 1)"),
        (["--strength", "0.5", "--denoising-end", "0.8"], "one of"),
    ],
)
def test_bad_segments_are_one_line(args, needle):
    code, _, err = cli("eval", "-m", "analytic:gmm", "-s", "euler", "-n", 2, *args)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_distill_and_eval_a_segment_and_compile_refuses_it(tmp_path):
    solver = tmp_path / "seg.json"
    gt = ["--rtol", 1e-5, "--atol", 1e-5, "--cache-dir", tmp_path / "gt"]
    code, out, err = cli(
        "distill", "-m", "analytic:gmm", "--nfe", 3, "--strength", 0.6, "-o", solver, "--iterations", 30,
        "--batch-size", 16, "--train-pairs", 32, "--val-pairs", 16, "--val-every", 10, *gt, "--json",
    )  # fmt: skip
    assert code == 0, err
    table = json.loads(solver.read_text())
    assert table["times"][0] == pytest.approx(0.4) and table["t_end"] == pytest.approx(1.0)
    code, out, err = cli("eval", "-m", "analytic:gmm", "-s", solver, "-n", 16, *gt, "--json")  # its own segment
    assert code == 0, err
    bns = json.loads(out)["psnr_mean"]
    code, out, _ = cli("eval", "-m", "analytic:gmm", "-s", "euler", "--nfe", 3, "--strength", 0.6, "-n", 16, *gt,
                       "--json")  # fmt: skip
    assert code == 0 and bns > json.loads(out)["psnr_mean"]
    code, _, err = cli("compile", "-m", "analytic:gmm", "-s", solver, "-o", tmp_path / "art")
    assert code == 2 and "solver runs [0.4, 1]" in err and "segment" in err and not (tmp_path / "art").exists()


# -- BNSScheduler in the pipelines that run segments -----------------------------------------------------------

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")


def _sd(tmp_path, family="sd"):
    from families import build_family
    from safetensors.torch import load_file

    from bns_export.loaders import ModelOptions

    folder, opts, _ = build_family(family, tmp_path / family)
    field = load_model(f"diffusers:{folder}", ModelOptions(cond_set=opts[1]), guidance=3.0)
    return field, load_file(opts[1])


def _vae(**kw):
    return diffusers.AutoencoderKL(
        block_out_channels=(16,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, **kw,
    )  # fmt: skip


def _close(out, ours, tol=1e-4):
    assert ((out - ours).abs().max() / ours.abs().max()).item() < tol


def test_sdxl_base_and_refiner_each_run_their_segment(tmp_path):
    from bns_export.diffusers import BNSScheduler

    field, conds = _sd(tmp_path, "sdxl")
    base = baseline("dpm++2m", 4, field.schedule, field.t_lo, 0.8)
    refiner = baseline("dpm++2m", 2, field.schedule, 0.8, field.t_hi)
    unet = field.field.net.model
    common = dict(vae=_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet)
    pipe = diffusers.StableDiffusionXLPipeline(**common, scheduler=BNSScheduler.from_solver([base, refiner], field))
    pipe.scheduler._pipe = __import__("weakref").ref(pipe)
    ref = diffusers.StableDiffusionXLImg2ImgPipeline(
        **common, scheduler=BNSScheduler.from_solver([base, refiner], field), requires_aesthetics_score=False
    )
    ref.scheduler._pipe = __import__("weakref").ref(ref)
    emb = {
        "prompt_embeds": conds["encoder_hidden_states"][:2],
        "negative_prompt_embeds": conds["null.encoder_hidden_states"][None].expand(2, -1, -1),
        "pooled_prompt_embeds": conds["text_embeds"][:2],
        "negative_pooled_prompt_embeds": conds["null.text_embeds"][None].expand(2, -1),
    }
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=10, guidance_scale=3.0, output_type="latent", **emb)
    latents = pipe(**kw, denoising_end=0.8, latents=noise.clone(), height=64, width=64).images
    ours = sample(Segment(field, field.t_lo, 0.8), base, noise, field.cond_set[:2])
    _close(latents, ours)  # the base ran its 4 steps of 10 and stopped at 0.8
    out = ref(**kw, denoising_start=0.8, image=latents).images
    _close(out, sample(Segment(field, 0.8, field.t_hi), refiner, ours, field.cond_set[:2]))
    with pytest.raises(BNSError, match=r"no table for the segment \[0.7"):
        ref(**kw, denoising_start=0.7, image=latents)
    with pytest.raises(BNSError, match=r"\[0, 0.8\] \(denoising_end=0.8\)"):  # the base table alone, no denoising_end
        pipe.scheduler = BNSScheduler.from_solver(base, field)
        pipe.scheduler._pipe = __import__("weakref").ref(pipe)
        pipe(**kw, latents=noise.clone(), height=64, width=64)


def test_img2img_at_a_strength_runs_the_table_of_that_segment(tmp_path):
    from diffusers.utils.torch_utils import randn_tensor

    from bns_export.diffusers import BNSScheduler

    field, conds = _sd(tmp_path)
    table = baseline("dpm++2m", 4, field.schedule, 0.5, field.t_hi)
    vae = _vae()
    sched = BNSScheduler.from_solver(table, field)
    pipe = diffusers.StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=field.field.net.model, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pe = conds["encoder_hidden_states"][:2]
    ne = conds["null.encoder_hidden_states"][None].expand(2, -1, -1)
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kw = dict(prompt_embeds=pe, negative_prompt_embeds=ne, guidance_scale=3.0, output_type="latent", image=image)
    out = pipe(strength=0.5, num_inference_steps=8, generator=torch.Generator().manual_seed(2), **kw).images
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        x0 = vae.encode(image).latent_dist.sample(g) * vae.config.scaling_factor
    start = sched.add_noise(x0, randn_tensor(x0.shape, generator=g), torch.tensor([sched.timesteps[4]] * 2))
    _close(out, sample(Segment(field, 0.5, field.t_hi), table, start, field.cond_set[:2]))
    with pytest.raises(BNSError, match=r"int\(num_inference_steps \* strength\) = 4"):
        pipe(strength=0.3, num_inference_steps=8, **kw)


def test_sd3_img2img_at_a_strength_uses_scale_noise_and_the_segment_table(tmp_path):
    from diffusers.utils.torch_utils import randn_tensor

    from bns_export.diffusers import BNSScheduler

    field, conds = _sd(tmp_path, "sd3")
    table = baseline("dpm++2m", 3, field.schedule, 0.4, field.t_hi)
    vae = _vae(shift_factor=0.1)
    sched = BNSScheduler.from_solver(table, field)
    pipe = diffusers.StableDiffusion3Img2ImgPipeline(
        transformer=field.field.net.model, scheduler=sched, vae=vae, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    emb = {
        "prompt_embeds": conds["encoder_hidden_states"][:2],
        "negative_prompt_embeds": conds["null.encoder_hidden_states"][None].expand(2, -1, -1),
        "pooled_prompt_embeds": conds["pooled_projections"][:2],
        "negative_pooled_prompt_embeds": conds["null.pooled_projections"][None].expand(2, -1),
    }
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = pipe(image=image, strength=0.6, num_inference_steps=5, guidance_scale=3.0, output_type="latent",
               generator=torch.Generator().manual_seed(2), **emb).images  # fmt: skip
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        x0 = vae.encode(image).latent_dist.sample(g)
    x0 = (x0 - vae.config.shift_factor) * vae.config.scaling_factor
    start = sched.scale_noise(x0, sched.timesteps[2:3].repeat(2), randn_tensor(x0.shape, generator=g))
    _close(out, sample(Segment(field, 0.4, field.t_hi), table, start, field.cond_set[:2]))
