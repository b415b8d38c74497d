"""Peak memory of an ONNX export against the weights' bytes, on two random-weight SD-style UNets (about 3M and
21M parameters) at NFE 2, each export in its own process reporting its peak resident memory.

The weights go to model.onnx.data, as for every model over 512 MB (a smaller graph embeds them, and its
checks hold copies: fine at that size).  At this size fixed costs (the libraries, the traced graph) dominate
the peak, so the test compares the two widths: the memory that grows with the weights (the peak's difference
over the weights' difference) stays under 2.5x their bytes, the target for real model sizes
(docs/benchmarks.md, "Model scale").  NFE 2 unrolls the network twice, so a copy of the weights per step would
show there as a ratio near 2 above the export's own (tests/test_weights_once.py checks the NFE 2 initializers are
the weights' bytes once).  Memory, not time, is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

CHILD = """
import json, resource, sys
import diffusers, onnx, onnxruntime, onnxscript, torch  # the libraries' own memory, before the export
import bns_export.backends.onnx
from bns_export.compile.build import compile_artifact
bns_export.backends.onnx.EXTERNAL_DATA_BYTES = 0  # the path of every model over 512 MB: weights in model.onnx.data
from bns_export.loaders import ModelOptions
folder, nfe, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
options = ModelOptions(cond_set=folder + "/cond.safetensors")
compile_artifact("diffusers:" + folder, "euler", "onnx", out, options=options, nfe=nfe, guidance=3.0, max_batch=1,
                 validate=False, log=lambda m: None)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def unet_folder(root, channels: tuple[int, int, int]) -> tuple[str, int]:
    """A save_pretrained folder of an SD-style UNet with these widths and a two-prompt condition set; its bytes."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, cross_attention_dim=256, attention_head_dim=8,
    )  # fmt: skip
    unet.save_pretrained(root / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear").save_pretrained(root / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    (root / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "DDPMScheduler"]}))
    g = torch.Generator().manual_seed(1)
    save_file(
        {"cond": torch.randn(2, 16, 256, generator=g), "null": torch.zeros(16, 256)}, str(root / "cond.safetensors")
    )
    return str(root), sum(p.numel() * p.element_size() for p in unet.parameters())


def peak_bytes(folder: str, nfe: int, out) -> int:
    r = subprocess.run([sys.executable, "-c", CHILD, folder, str(nfe), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["peak"]


def test_export_memory_grows_with_the_weights_by_at_most_2_5x_their_bytes(tmp_path):
    narrow, narrow_bytes = unet_folder(tmp_path / "narrow", (32, 64, 128))
    wide, wide_bytes = unet_folder(tmp_path / "wide", (64, 192, 320))
    assert 15e6 < wide_bytes / 4 < 30e6  # about 20M parameters
    grown = peak_bytes(wide, 2, tmp_path / "w2") - peak_bytes(narrow, 2, tmp_path / "n2")
    ratio = grown / (wide_bytes - narrow_bytes)
    assert ratio <= 2.5, f"NFE 2: the peak grows by {ratio:.2f}x the weights' bytes"
