"""Learning-rate schedule and optimiser.

Two recipes share these functions: the reference's pose training (Adam, 1e-3, x0.1 at epochs 200
and 260, no warm-up, no weight decay; the config defaults) and the paper's backbone classification
(SGD with momentum 0.9 and weight decay 1e-4, a linear warm-up from 1e-4 to 0.05 over 5 epochs,
x0.1 every 30 epochs; `experiments/backbone.py`).

Steps are optimiser steps; epochs are converted with `steps_per_epoch`. Backbone freezing is an
`optax.multi_transform` that gives the backbone `set_to_zero` (no optimiser state is stored for
it), and the step function also skips its gradient computation (see `step.py`).
"""

from typing import Any

import optax

from ehrnet_jax.config import TrainConfig
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import BACKBONE

FROZEN, TRAINABLE = "frozen", "trainable"


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  """Piecewise-constant decay at `lr_milestones` (epochs), after an optional linear warm-up
  from `warmup_init_lr`; the milestones count from step 0, warm-up included."""
  boundaries = {round(epoch * steps_per_epoch): config.lr_factor
                for epoch in config.lr_milestones}
  decay = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  warmup_steps = round(config.warmup_epochs * steps_per_epoch)
  if warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(config.warmup_init_lr, config.learning_rate, warmup_steps)
  # After the warm-up, continue the decay schedule at the same global step.
  return optax.join_schedules([warmup, lambda step: decay(step + warmup_steps)], [warmup_steps])


def param_labels(params: Any, freeze_backbone: bool) -> dict[str, Any]:
  """FROZEN for every backbone leaf when freezing, TRAINABLE otherwise (top-level keys only)."""
  return {name: (FROZEN if freeze_backbone and name == BACKBONE else TRAINABLE)
          for name in params}


def _update_rule(config: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  if config.optimizer == "adam":  # PyTorch's defaults.
    return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
  if config.optimizer == "sgd":  # optax's trace is PyTorch's momentum buffer (no dampening).
    return optax.sgd(schedule, momentum=config.momentum)
  raise UserError(f"train.optimizer={config.optimizer!r}: expected adam or sgd")


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """`train.optimizer` on the schedule, after PyTorch's coupled weight decay when it is set.

  The decay (grad += weight_decay * param) applies to every trainable parameter, biases and
  batch-norm scales included, as `torch.optim.SGD(weight_decay=...)` does. Without it the
  optimiser state is the bare Adam/SGD state, so pose checkpoints keep their layout.
  """
  tx = _update_rule(config, learning_rate_schedule(config, steps_per_epoch))
  if config.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
  return optax.multi_transform(
      {TRAINABLE: tx, FROZEN: optax.set_to_zero()},
      lambda params: param_labels(params, config.freeze_backbone))
