"""EfficientHRNet model family as Flax Linen modules, parameterised by a `ScalingSpec` and run in
the `ExecutionForm` the caller chooses, and their variables (initialisation, abstract shapes)."""

from ehrnet_jax.models.efficienthrnet import EfficientHRNet, PoseOutputs
from ehrnet_jax.models.efficientnet import (BACKBONE, EfficientNetClassifier, EfficientNetFeatures,
                                            backbone_variables)
from ehrnet_jax.models.execution import ExecutionForm
from ehrnet_jax.models.layers import fold_batch_norm
from ehrnet_jax.models.variables import abstract_variables, init_variables

__all__ = ["BACKBONE", "EfficientHRNet", "EfficientNetClassifier", "EfficientNetFeatures",
           "ExecutionForm", "PoseOutputs", "abstract_variables", "backbone_variables",
           "fold_batch_norm", "init_variables"]
