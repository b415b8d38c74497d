"""`-m diffusers:PATH`: a local folder written by diffusers' `save_pretrained` as a velocity field.

The folder is a pipeline (`model_index.json`, `unet/` or `transformer/`, `scheduler/`) or holds
those subfolders.  The model class's adapter (loaders.adapters) says how it is called, what it is
conditioned on and its sample shape; the ODE (schedule, prediction type, time input) and the pipeline's
default grid come from the scheduler config as diffusers computes them (loaders.schedulers); explicit
options override.
Weights are read from safetensors only (nothing is unpickled).  Needs the `diffusers` package.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checks import read_json
from ..errors import EXIT_MISSING_BACKEND, BNSError
from ..fields import NetworkField
from .adapters import MASKS, TIME_IDS_KEY, AdaptedNet, adapter_for
from .conditions import condition_set, load_condition_set
from .schedulers import read_scheduler


def import_diffusers():
    """The diffusers package with its loading notices silenced (e.g. "install accelerate"), or exit code 3."""
    try:
        import diffusers
    except ImportError:
        raise BNSError(
            "diffusers models need the diffusers package: pip install diffusers", EXIT_MISSING_BACKEND
        ) from None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


#: legacy class names that diffusers itself loads as a pipeline-specific class, chosen by a config key (its
#: model_loading_utils._CLASS_REMAPPING_DICT): the Hub's DiT-XL-2 and PixArt-alpha folders name Transformer2DModel
REMAPPED_CLASSES = {
    "Transformer2DModel": (
        "norm_type",
        {"ada_norm_zero": "DiTTransformer2DModel", "ada_norm_single": "PixArtTransformer2DModel"},
    )
}


def class_name(cfg) -> str:
    """The model class a config.json stands for, as diffusers resolves it (legacy names remapped)."""
    name = str(cfg.get("_class_name")) if isinstance(cfg, dict) else "None"
    if name in REMAPPED_CLASSES:
        key, table = REMAPPED_CLASSES[name]
        name = table.get(cfg.get(key), name)
    return name


def model_class(cfg, folder: Path) -> type[nn.Module]:
    """The diffusers model class a save_pretrained config.json names (its `_class_name`, remapped as diffusers
    does)."""
    diffusers = import_diffusers()
    cls_name = class_name(cfg)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise BNSError(f"{folder}/config.json names {cls_name!r}, not a diffusers model class")
    return cls


def pretrained(cls: type, folder: Path) -> nn.Module:
    """cls.from_pretrained(folder) in eval mode, from safetensors only (nothing is unpickled); a weights file
    with missing, unexpected or mis-shaped tensors is refused (diffusers would leave memory uninitialised)."""
    if not list(folder.glob("*.safetensors")):
        raise BNSError(f"{folder} has no .safetensors weights; bns-export never unpickles .bin files")
    fp32_parts = bool(getattr(cls, "_keep_in_fp32_modules", None))  # diffusers loads these only through accelerate
    if fp32_parts:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise BNSError(
                f"{cls.__name__} loads only with the accelerate package (diffusers keeps some of its modules in "
                "fp32): pip install accelerate",
                EXIT_MISSING_BACKEND,
            ) from None
    try:
        model, info = cls.from_pretrained(
            str(folder), use_safetensors=True, output_loading_info=True, low_cpu_mem_usage=fp32_parts
        )
    except Exception as e:
        raise BNSError(
            f"cannot load {cls.__name__} from {folder}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    for key, what in (
        ("missing_keys", "lacks"),
        ("unexpected_keys", "has unexpected"),
        ("mismatched_keys", "has mis-shaped"),
    ):
        names = [k[0] if isinstance(k, tuple) else k for k in (info or {}).get(key) or []]
        if names:
            shown = ", ".join(map(str, names[:3])) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise BNSError(f"{folder}: the weights file {what} tensor(s) {shown} for {cls.__name__}")
    errors = (info or {}).get("error_msgs") or []
    if errors:
        raise BNSError(f"{folder}: loading the weights failed: {str(errors[0]).splitlines()[0][:200]}")
    return model.eval()


#: the largest |scale| a LoRA may be fused at
MAX_LORA_SCALE = 100.0


def parse_lora(entry: str) -> tuple[Path, float]:
    """`FILE` or `FILE:SCALE` (scale 1 by default): the one parser of a --lora entry."""
    path, _, scale = str(entry).rpartition(":")
    try:
        value = float(scale) if path else 1.0
    except ValueError:
        path, value = "", 1.0
    path = Path(path or entry).expanduser()
    if not (abs(value) <= MAX_LORA_SCALE):  # NaN too
        raise BNSError(f"--lora {entry}: the scale must be a number within +-{MAX_LORA_SCALE:g}")
    if path.suffix != ".safetensors" or not path.is_file():
        raise BNSError(f"--lora {entry}: not a .safetensors LoRA file (bns-export never unpickles)")
    return path, value


def merge_loras(model: nn.Module, loras: tuple[str, ...]) -> nn.Module:
    """Each LoRA (diffusers' / PEFT's safetensors format, prefixed `unet.` or `transformer.` or not) fused into the
    network's weights at its scale with diffusers' own load_lora_adapter and fuse_lora, its adapter layers then
    removed: the same architecture with merged weights (what a compiled graph, a refit or a solver sees)."""
    if not loras:
        return model
    try:
        import peft  # noqa: F401
    except ImportError:
        raise BNSError("--lora needs the peft package: pip install peft", EXIT_MISSING_BACKEND) from None
    if not hasattr(model, "load_lora_adapter"):
        raise BNSError(f"{type(model).__name__} takes no LoRA adapters")
    from safetensors.torch import load_file

    for k, entry in enumerate(loras):
        path, scale = parse_lora(entry)
        tensors = load_file(str(path))
        prefix = next((p for p in ("unet", "transformer") if any(key.startswith(p + ".") for key in tensors)), None)
        if not any("lora" in key for key in tensors):
            raise BNSError(f"--lora {entry}: no LoRA weights in it (diffusers' or PEFT's lora_A / lora_B format)")
        try:
            model.load_lora_adapter(tensors, prefix=prefix, adapter_name=f"bns_lora_{k}")
            model.fuse_lora(lora_scale=scale, adapter_names=[f"bns_lora_{k}"])
            model.unload_lora()
        except Exception as e:
            first = (str(e).splitlines() or [""])[0][:200]
            raise BNSError(f"--lora {entry} does not fit {type(model).__name__}: {type(e).__name__}: {first}") from None
    return model


def pipeline_facts(root: Path, model_cfg: dict) -> dict:
    """The model config with what only the pipeline's model_index.json says: the SDXL refiner's 5 time ids
    (requires_aesthetics_score)."""
    index = root / "model_index.json"
    facts = read_json(index, "model_index.json") if index.is_file() else {}
    if isinstance(facts, dict) and facts.get("requires_aesthetics_score"):
        return {**model_cfg, TIME_IDS_KEY: 5}
    return model_cfg


def _conditions(adapter, model_cfg: dict, sample_shape, opt, cls_name: str):
    """The condition set a class needs, from --cond-set, checked against its config (fit_conditions)."""
    cset = load_condition_set(opt.cond_set) if opt.cond_set else None
    if cset is None and adapter.needs(model_cfg):
        needs = ", ".join(f"{n} {tuple('L' if d is None else d for d in s)}" for n, s in adapter.needs(model_cfg))
        raise BNSError(
            f"{cls_name} is conditioned on {needs}: give --cond-set FILE.safetensors with one (N, ...) tensor "
            "per name (and null.NAME, its unconditional value); `bns-export conditions` writes one from prompts"
        )
    return fit_conditions(adapter, model_cfg, sample_shape, cset, cls_name, str(opt.cond_set))


def fit_conditions(adapter, model_cfg: dict, sample_shape, cset, cls_name: str, where: str):
    """A condition set checked against what a class needs (names, shapes), with the class's defaults (SDXL's
    time_ids) and the optional conditions it holds (attention masks) added: the set the network is called with."""
    if cset is not None and "time_ids" in cset.layout.names and TIME_IDS_KEY not in model_cfg:
        model_cfg = {**model_cfg, TIME_IDS_KEY: cset.record("time_ids").shape[-1]}  # 5: a refiner's, with the score
    needs = adapter.needs(model_cfg)
    if cset is not None:
        needs = needs + [n for n in adapter.optional(model_cfg) if n[0] in cset.layout.names]
    if not needs:
        if cset is not None:
            raise BNSError(f"{cls_name} takes no tensor conditions; drop --cond-set")
        return None
    names = ", ".join(f"{n} {tuple('L' if d is None else d for d in s)}" for n, s in needs)
    have = set(cset.layout.names)
    if cset.layout.legacy:  # today's single `cond`: the prompt embedding; the class must need nothing else
        have = {needs[0][0]}
    entries = {p.name: cset.record(p.name) for p in cset.layout.parts}
    nulls = {p.name: cset.layout.unpack(cset.null[None])[p.name][0] for p in cset.layout.parts}
    for name, default in adapter.defaults.items():
        if name not in have and any(n == name for n, _ in needs):
            value, null = default(model_cfg, sample_shape)
            entries[name] = value.expand(cset.cond.shape[0], *value.shape).clone()
            nulls[name] = null
            have.add(name)
    missing = [n for n, _ in needs if n not in have]
    extra = sorted(have - {n for n, _ in needs})
    if missing or extra:
        raise BNSError(
            f"{where}: {cls_name} needs {names}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    for name, shape in needs:
        key = "cond" if cset.layout.legacy and name == needs[0][0] else name
        got = tuple(entries[key].shape[1:])
        if len(got) != len(shape) or any(d is not None and d != g for d, g in zip(shape, got)):
            want = tuple("L" if d is None else d for d in shape)
            raise BNSError(f"{where}: {key!r} has shape {got} per condition, {cls_name} needs {want}")
    for mask, of in MASKS.items():
        if mask in entries and entries[mask].shape[1] != entries[of].shape[1]:
            raise BNSError(
                f"{where}: {mask!r} covers {entries[mask].shape[1]} tokens, {of!r} has {entries[of].shape[1]}"
            )
    if cset.layout.legacy:
        return cset
    order = [n for n, _ in needs]
    return condition_set(entries, nulls, order=order, where=where)


def model_folder(root: Path) -> tuple[Path, dict]:
    """The network's subfolder of a save_pretrained folder (unet/ or transformer/) and its config."""
    sub = next((root / s for s in ("unet", "transformer") if (root / s / "config.json").is_file()), None)
    if sub is None:
        raise BNSError(f"{root} has no unet/ or transformer/ folder with a config.json (save_pretrained layout)")
    model_cfg = read_json(sub / "config.json", "model config")
    if not isinstance(model_cfg, dict):
        raise BNSError(f"{sub}/config.json is not a JSON object")
    return sub, model_cfg


def scheduler_config(root: Path) -> dict:
    """scheduler/scheduler_config.json (with the non-finite literals diffusers writes there)."""
    cfg = read_json(root / "scheduler" / "scheduler_config.json", "scheduler config", constants=True)
    if not isinstance(cfg, dict):
        raise BNSError(f"{root}/scheduler/scheduler_config.json is not a JSON object")
    return cfg


def read_folder(path: str | Path) -> tuple[Path, Path, dict, str, object]:
    """A save_pretrained folder's root, network subfolder, model config (with the pipeline's facts), model
    class name and that class's adapter, or one line."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BNSError(f"diffusers folder not found: {root}")
    sub, model_cfg = model_folder(root)
    model_cfg = pipeline_facts(root, model_cfg)
    cls_name = class_name(model_cfg)
    return root, sub, model_cfg, cls_name, adapter_for(cls_name)


def load_diffusers_field(path: str, opt) -> NetworkField:
    """The velocity field of a diffusers folder through its class's adapter; explicit options override the
    configs (None means not given)."""
    import_diffusers()  # exit 3 before anything is read when diffusers is missing
    root, sub, model_cfg, cls_name, adapter = read_folder(path)
    shape = opt.shape or adapter.shape(model_cfg)
    if shape is None:
        raise BNSError(f"{cls_name}'s config does not give the latent size: pass --shape C,H,W (e.g. 16,64,64)")
    shape = tuple(shape)
    adapter.check_shape(model_cfg, shape)
    cset = _conditions(adapter, model_cfg, shape, opt, cls_name)
    classes = adapter.classes(model_cfg)
    cls = model_class(model_cfg, sub)
    spec = read_scheduler(scheduler_config(root), shape, cls_name)
    schedule, prediction, time_input = spec.schedule, spec.prediction, spec.time_input
    model = merge_loras(pretrained(cls, sub), opt.loras)
    net = AdaptedNet(model, adapter, None if cset is None else cset.layout, adapter.constants(model_cfg, shape))
    try:
        field = NetworkField(
            net,
            schedule,
            shape,
            prediction=opt.prediction or prediction,
            time_input=opt.time_input or time_input,
            num_classes=None if cset is not None else (opt.num_classes if opt.num_classes is not None else classes),
            name=f"diffusers:{root.name}",
            cond_set=None if cset is None else cset.cond,
            null_cond=None if cset is None else cset.null,
            condition_layout=None if cset is None else cset.layout,
        )
    except ValueError as e:
        raise BNSError(str(e)) from None
    field.size_step = adapter.size_step(model_cfg)
    field.size_limit = adapter.size_limit(model_cfg)
    field.embedded_guidance = adapter.embedded_guidance(model_cfg)
    if field.embedded_guidance:
        field.set_embedded_guidance(1.0)  # until GuidedField gives the scale (-w)
    return field
