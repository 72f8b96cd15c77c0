"""Model construction: CLIP backbones by arch name (methods swap their own layers in through `Method.build`)."""

from fairbench.models.backbones import ARCHS, Backbone, WeightsUnavailableError, create_backbone

__all__ = ["ARCHS", "Backbone", "WeightsUnavailableError", "create_backbone"]
