"""Learning-rate schedule and optimiser (the reference: Adam, 1e-3, x0.1 at epochs 200 and 260).

Steps are optimiser steps; epochs are converted with `steps_per_epoch`. Backbone freezing is an
`optax.multi_transform` that gives the backbone `set_to_zero` (no Adam moments are stored for it),
and the step function also skips its gradient computation (see `step.py`).
"""

from typing import Any

import optax

from ehrnet_jax.config import TrainConfig

FROZEN, TRAINABLE = "frozen", "trainable"
BACKBONE = "backbone"  # The top-level params collection of the EfficientNet features.


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  """Piecewise-constant decay at `lr_milestones` (epochs), after an optional linear warm-up."""
  boundaries = {round(epoch * steps_per_epoch): config.lr_factor
                for epoch in config.lr_milestones}
  decay = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  warmup_steps = round(config.warmup_epochs * steps_per_epoch)
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, config.learning_rate, warmup_steps)
  # After the warm-up, continue the decay schedule at the same global step.
  return optax.join_schedules([warmup, lambda step: decay(step + warmup_steps)], [warmup_steps])


def param_labels(params: Any, freeze_backbone: bool) -> dict[str, Any]:
  """FROZEN for every backbone leaf when freezing, TRAINABLE otherwise (top-level keys only)."""
  return {name: (FROZEN if freeze_backbone and name == BACKBONE else TRAINABLE)
          for name in params}


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8), no weight decay, as the
  reference (which ignores TRAIN.WD for Adam)."""
  adam = optax.adam(learning_rate_schedule(config, steps_per_epoch), b1=0.9, b2=0.999, eps=1e-8)
  return optax.multi_transform(
      {TRAINABLE: adam, FROZEN: optax.set_to_zero()},
      lambda params: param_labels(params, config.freeze_backbone))
