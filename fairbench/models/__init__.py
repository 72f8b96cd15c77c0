"""Model construction: CLIP backbones by arch name (and, in moe.py, the mixture-of-experts layers)."""

from fairbench.models.backbones import ARCHS, Backbone, WeightsUnavailableError, create_backbone

__all__ = ["ARCHS", "Backbone", "WeightsUnavailableError", "create_backbone"]
