"""The optimiser schedule and the step function on one device, against hand-derived updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ehrnet_jax import losses
from ehrnet_jax.config import TrainConfig
from ehrnet_jax.data import targets
from ehrnet_jax.training import optim, step as step_lib
from ehrnet_jax.training.state import create_train_state
from support.tiny_pose import TinyPoseNet, host_batch

SIZE = 32


def test_reference_schedule_per_epoch():
  # Defaults = the reference: 1e-3, x0.1 at epochs 200 and 260, no warm-up; 7 steps per epoch.
  schedule = optim.learning_rate_schedule(TrainConfig(), steps_per_epoch=7)
  steps = [0, 200 * 7 - 1, 200 * 7, 260 * 7 - 1, 260 * 7, 300 * 7 - 1]
  np.testing.assert_allclose([schedule(s) for s in steps],
                             [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_warmup_then_decay():
  config = TrainConfig(learning_rate=2e-3, lr_milestones=(3.0,), warmup_epochs=1.0)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
  # Linear from 0 over the first 10 steps, then 2e-3, then 2e-4 from epoch 3 (step 30).
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 29, 30)],
                             [0.0, 1e-3, 2e-3, 2e-3, 2e-4], rtol=1e-6, atol=1e-12)


def _setup(freeze_backbone: bool):
  model = TinyPoseNet()
  tx = optim.make_optimizer(TrainConfig(freeze_backbone=freeze_backbone), steps_per_epoch=10)
  state = create_train_state(model, tx, jax.random.key(0))
  batch = targets.prepare_batch(host_batch(np.random.default_rng(0), 2, SIZE))
  step = jax.jit(step_lib.make_train_step(model, tx, losses.pose_loss, freeze_backbone))
  return model, state, batch, step


@pytest.fixture(scope="module")
def unfrozen_step():
  model, state, batch, step = _setup(freeze_backbone=False)
  rng = jax.random.key(0)  # Drop-connect keeps at least one sample with this key.
  return model, state, batch, rng, step(state, batch, rng)


@pytest.mark.slow
def test_first_step_is_adam_on_the_loss_gradient(unfrozen_step):
  model, state, batch, rng, (new_state, metrics) = unfrozen_step

  def loss_fn(params):
    outputs, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                   batch["image"], train=True, rngs={"dropout": rng},
                                   mutable=["batch_stats"])
    return losses.pose_loss(outputs, batch)[0], updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # Adam's first step with bias correction: m_hat = g, v_hat = g^2, so delta = -lr g/(|g|+eps).
  expected = jax.tree.map(lambda p, g: p - 1e-3 * g / (jnp.abs(g) + 1e-8), state.params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new_state.params, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new_state.batch_stats, batch_stats)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
  assert int(new_state.step) == 1
  assert not np.array_equal(new_state.params["backbone"]["residual"]["kernel"],
                            state.params["backbone"]["residual"]["kernel"])


def test_frozen_backbone_keeps_weights_but_updates_statistics(unfrozen_step):
  _, _, _, rng, (unfrozen, _) = unfrozen_step
  _, state, batch, step = _setup(freeze_backbone=True)
  frozen, _ = step(state, batch, rng)
  # Backbone weights untouched; its batch-norm statistics still move (train-mode BN).
  jax.tree.map(np.testing.assert_array_equal, frozen.params["backbone"],
               state.params["backbone"])
  assert not np.allclose(frozen.batch_stats["backbone"]["bn"]["mean"],
                         state.batch_stats["backbone"]["bn"]["mean"])
  # Everything after the backbone gets the same update as when the backbone trains too. The two
  # steps are separately compiled programs, so their gradients agree up to rounding (~1e-6
  # relative); Adam's first step, lr * g / (|g| + eps), turns that into at most ~1e-6 of lr
  # (its slope in g peaks at |g| = eps). 1e-4 of lr it is; a wrong freeze moves whole steps.
  lr = TrainConfig().learning_rate
  for name in ("neck", "head_4", "head_2"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * lr),
                 frozen.params[name], unfrozen.params[name])
  # No Adam moments are kept for the frozen backbone.
  adam_state = frozen.opt_state.inner_states[optim.FROZEN].inner_state
  assert jax.tree.leaves(adam_state) == []
  trainable_mu = frozen.opt_state.inner_states[optim.TRAINABLE].inner_state[0].mu
  assert isinstance(trainable_mu["backbone"], optax.MaskedNode)
