"""Model construction: archs by name (`archs`, light) and CLIP backbones with their weights (`backbones`, torch);
methods swap their own layers in through `Method.build`. What needs torch is imported on first use, so
`import fairbench.models` stays cheap for the CLI."""

from fairbench.models.archs import Arch, PretrainRecipe, WeightsUnavailableError, get_arch, list_archs, register_arch

_LAZY = {"Backbone": "fairbench.models.backbones", "create_backbone": "fairbench.models.backbones"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fairbench.models' has no attribute {name!r}")


__all__ = ["Arch", "PretrainRecipe", "WeightsUnavailableError", "get_arch", "list_archs", "register_arch", *_LAZY]
