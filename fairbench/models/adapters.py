"""Parameter-efficient fine-tuning: LoRA adapters on the backbone, as a trainer-level setting (`--set adapter=lora`).

The adapters come from `peft` (the `[peft]` extra), injected in place so the model keeps its class and every
method's loss code runs on it unchanged; `peft` freezes every parameter that is not an adapter, and the layers a
method added to the backbone (Fair-MoE's experts and gates) are made trainable again: LoRA adapts the backbone, a
method's own layers train fully.

Targets, per what the model contains (research-21 §4.2, all tested bit-exact for the base weights):

* open_clip's `nn.MultiheadAttention` blocks (OpenAI layout, open_clip text towers): the packed input projection
  `attn.in_proj_weight` through peft's `target_parameters` (a ParamWrapper applies W + BA during the block's
  forward). peft's own MultiheadAttention layer is not used: its forward merges and unmerges the adapter into the
  base weight at every call, so the frozen base drifts by float rounding; and peft cannot reach `out_proj` of an
  `nn.MultiheadAttention` at all (MHA never calls its forward), so the adapters sit on q, k and v together (one
  rank-r update of the stacked 3E×E matrix, peft's only form for the packed projection);
* BERT-style Hugging Face text towers (BiomedCLIP): the `query`, `key` and `value` Linears; timm image towers: the
  packed `attn.qkv` Linear (FairMedFM's LoRA targets, configs/models/*.json).

The adapters are saved with the run (`adapter.safetensors`: every trainable tensor of the selected epoch, adapters
and a method's own layers), and `export_merged` writes the merged weights: base + BA, in the backbone's own names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTERS = ("none", "lora")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_INFO = "adapter.json"


class AdapterError(RuntimeError):
    """Adapters that cannot be applied as asked (peft missing, nothing to adapt); one line naming the fix."""


def lora_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(target_modules, target_parameters) for peft, read from the modules the model has (see the module doc)."""
    modules, parameters = set(), set()
    for name, module in model.named_modules():
        tail = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.MultiheadAttention) or (
                tail == "attn" and isinstance(getattr(module, "in_proj_weight", None), nn.Parameter)):
            parameters.add("attn.in_proj_weight")
        elif isinstance(module, nn.Linear) and tail in ("query", "key", "value"):
            modules.add(tail)
        elif isinstance(module, nn.Linear) and name.endswith("attn.qkv"):
            modules.add("attn.qkv")
    return sorted(modules), sorted(parameters)


def apply_lora(model: nn.Module, base: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Inject LoRA adapters of `rank` and `alpha` into `model` in place (the method's built model; `base` is the
    backbone it was built from, whose parameters are the ones adapted and frozen)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise AdapterError("adapter=lora needs peft: pip install 'fairbench-medvlm[peft]'") from None
    base_ids = {id(p) for p in base.parameters()}
    own = [p for p in model.parameters() if id(p) not in base_ids and p.requires_grad]
    modules, parameters = lora_targets(model)
    if not modules and not parameters:
        raise AdapterError(f"adapter=lora found no attention projection to adapt in {type(base).__name__}; "
                           "use adapter=none for this arch")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=modules,
                        target_parameters=parameters)
    model = inject_adapter_in_model(config, model)
    for p in own:  # a method's own layers (not the backbone's) train fully
        p.requires_grad_(True)
    return model


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def save_adapter(run_dir: Path, state: dict[str, torch.Tensor], names: list[str], info: dict[str, Any]) -> list[str]:
    """Write the trainable tensors `names` of `state` (the selected epoch's weights) and what they adapt."""
    from safetensors.torch import save_file

    from fairbench.files import atomic_path, write_json_atomic

    tensors = {n: state[n].detach().cpu().contiguous() for n in names}
    with atomic_path(run_dir / ADAPTER_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(run_dir / ADAPTER_INFO, info)
    return [ADAPTER_FILE, ADAPTER_INFO]


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapted model's weights with every adapter merged (W + scale·BA, peft's own delta) under the names the
    model had before the adapters were injected; a method's own layers are kept as they are."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        raise AdapterError("merging adapters needs peft: pip install 'fairbench-medvlm[peft]'") from None

    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().clone()
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or not module.active_adapters:
            continue
        target = getattr(module, "parameter_name", None) or "weight"
        key = f"{name}.{target}"
        for adapter in module.active_adapters:
            state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return state


def export_merged(run_dir: Path, out: Path) -> Path:
    """Rebuild a finished LoRA run's model (backbone + method + adapters), load its saved adapter and write the
    merged weights to `out` (safetensors), loadable with `--pretrained` for the same method's model."""
    from safetensors.torch import load_file, save_file

    from fairbench.files import atomic_path
    from fairbench.runs.results import load_result

    run_dir = Path(run_dir)
    if not (run_dir / ADAPTER_FILE).is_file():
        raise AdapterError(f"{run_dir}: no {ADAPTER_FILE}; only runs trained with --set adapter=lora have adapters")
    record = load_result(run_dir / "result.json")
    model = rebuild_adapted(record, json.loads((run_dir / ADAPTER_INFO).read_text()))
    saved = load_file(str(run_dir / ADAPTER_FILE))
    missing = set(trainable_names(model)) - set(saved)
    if missing:
        raise AdapterError(f"{run_dir / ADAPTER_FILE} lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})")
    model.load_state_dict(saved, strict=False)
    state = merged_state_dict(model)
    with atomic_path(Path(out)) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return Path(out)


def rebuild_adapted(record: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    """The model a LoRA run trained, before training: its backbone weights, its method's layers, fresh adapters."""
    from fairbench.models.backbones import create_backbone
    from fairbench.registry import get_dataset, get_method
    from fairbench.training.trainer import seed_everything

    config = record["config"]
    weights = (record.get("pretrained") or {}).get("path") or (record.get("pretrained") or {}).get("weights")
    weights = None if weights in (None, "random init") else weights
    seed_everything(int(record["seed"]))
    backbone = create_backbone(record["arch"], pretrained=weights)
    cls = get_method(record["method"])
    settings = _settings_from(cls.Settings, config.get("method_settings") or {})
    attribute = record.get("attribute")
    n_groups = len(get_dataset(record["dataset"].get("name")).attributes[attribute]) if attribute else 0
    model = cls(settings, attribute, n_groups).build(backbone.model)
    return apply_lora(model, backbone.model, int(info["rank"]), float(info["alpha"]))


def _settings_from(settings_cls: type, values: dict[str, Any]) -> Any:
    """A method's settings dataclass from the plain dict a result recorded (nested groups, lists for tuples)."""
    import dataclasses

    kwargs = {}
    for f in dataclasses.fields(settings_cls):
        if f.name not in values:
            continue
        value = values[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _settings_from(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return settings_cls(**kwargs)
