"""EfficientHRNet model family as Flax Linen modules, parameterised by a `ScalingSpec`."""

from ehrnet_jax.models.efficienthrnet import EfficientHRNet, PoseOutputs
from ehrnet_jax.models.efficientnet import (BACKBONE, EfficientNetClassifier, EfficientNetFeatures,
                                            backbone_variables)

__all__ = ["BACKBONE", "EfficientHRNet", "EfficientNetClassifier", "EfficientNetFeatures",
           "PoseOutputs", "backbone_variables"]
