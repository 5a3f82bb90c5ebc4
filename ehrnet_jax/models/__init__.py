"""EfficientHRNet model family as Flax Linen modules, parameterised by a `ScalingSpec`."""

from ehrnet_jax.models.efficienthrnet import EfficientHRNet, PoseOutputs
from ehrnet_jax.models.efficientnet import EfficientNetClassifier, EfficientNetFeatures

__all__ = ["EfficientHRNet", "EfficientNetClassifier", "EfficientNetFeatures", "PoseOutputs"]
