"""The training step: a pure function `(state, batch, rng) -> (state, metrics)`.

The same step trains the pose model and the backbone classifier: it is bound to the task's loss
function `(model outputs, batch) -> (total, components)` (`losses.pose_loss`,
`losses.classification_loss`; see `tasks.py`).

Run under `jax.pmap` with `axis_name`, each device takes its shard of the batch, uses the key
`fold_in(rng, device_index)` for drop-connect, and the gradients, the updated batch-norm
statistics and the metrics are averaged over the device axis (`lax.pmean`), so every replica
stays identical. As in the reference (PyTorch DDP without SyncBN), batch normalisation uses the
statistics of each device's own shard. With `axis_name=None` the same function runs on one
device.

With a frozen backbone the gradient is taken with respect to the other parameters only: the
backbone's parameters enter the loss as constants, so no backward pass runs through the backbone
at all (nothing upstream needs a gradient). The optimiser's `set_to_zero` then sees zeros.
"""

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ehrnet_jax.host_memory import release_freed_memory
from ehrnet_jax.models import BACKBONE
from ehrnet_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
# (model outputs, batch) -> (total loss, {component name: scalar}), the components summing to it.
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]
AXIS = "devices"


def _split_frozen(params: dict[str, Any], freeze_backbone: bool):
  """(trainable, frozen) top-level sub-dicts of `params`."""
  frozen = {k: v for k, v in params.items() if freeze_backbone and k == BACKBONE}
  trainable = {k: v for k, v in params.items() if k not in frozen}
  return trainable, frozen


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, loss_fn: LossFn,
               freeze_backbone: bool, axis_name: str | None) -> tuple[TrainState, dict]:
  """One optimiser step on `batch` (the prepared batch: "image" (B, S, S, 3) and the targets
  `loss_fn` reads).

  Returns the new state and the metrics: the loss, its components and the gradient's global
  norm, averaged over the device axis.
  """
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  trainable, frozen = _split_frozen(state.params, freeze_backbone)

  def objective(trainable):
    variables = {"params": {**frozen, **trainable}, "batch_stats": state.batch_stats}
    outputs, updates = model.apply(variables, batch["image"], train=True, rngs={"dropout": rng},
                                   mutable=["batch_stats"])
    total, components = loss_fn(outputs, batch)
    return total, (components, updates["batch_stats"])

  grads, (components, batch_stats) = jax.grad(objective, has_aux=True)(trainable)
  metrics = {"loss": sum(components.values()), **components}
  if axis_name is not None:
    grads, batch_stats, metrics = jax.lax.pmean((grads, batch_stats, metrics), axis_name)
  metrics["grad_norm"] = optax.tree.norm(grads)
  grads = {**jax.tree.map(jnp.zeros_like, frozen), **grads}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss_fn: LossFn,
                    freeze_backbone: bool, axis_name: str | None = None) -> StepFn:
  """`train_step` with its static arguments bound (still un-jitted and pure)."""
  return functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn,
                           freeze_backbone=freeze_backbone, axis_name=axis_name)


def replicate(tree: Any) -> Any:
  """`tree` copied to every local device, with the layout the pmapped step gives its outputs.

  (`flax.jax_utils.replicate` gives another sharding, so the step's second call recompiles.)
  """
  devices = jax.local_device_count()
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))), tree)
  return jax.pmap(lambda x: x, axis_name=AXIS)(stacked)


def compile_step(p_step: StepFn, state: TrainState, batch: Batch, rng: jax.Array) -> StepFn:
  """`p_step` compiled ahead of time for the shapes of these arguments (others are an error), and
  the compiler's freed host memory returned to the OS before the first step allocates its
  buffers (`host_memory`): peak memory of H0's trained step 5.1-5.3 -> 3.8-4.1 GB. JAX's
  tracing and compilation caches are dropped first: they keep ~0.4 GB alive after compiling
  (H0 trained; deleting the pmapped function frees none of it), peak 3.82 -> 3.64 GB. The same
  is done before compiling, so that the compiler starts from what the state needs and not from
  what its initialisation left (H0 frozen: process peak 2.11 -> 1.86 GB). Functions compiled
  earlier recompile if they are called again."""
  jax.clear_caches()
  release_freed_memory()
  compiled = p_step.lower(state, batch, rng).compile()
  jax.clear_caches()
  release_freed_memory()
  return compiled


def pmap_train_step(step_fn: StepFn, prepare: Callable[[Batch], Batch] | None = None) -> StepFn:
  """`step_fn` (bound with `axis_name=AXIS`) pmapped over the local devices.

  State and batch carry a leading device axis; the rng is one key for all devices. `prepare`
  (the task's: `tasks.Task.prepare`) turns each device's host batch into the training batch on
  device first. The input state's buffers are donated.
  """
  def prepared_step(state, batch, rng):
    return step_fn(state, prepare(batch) if prepare else batch, rng)

  return jax.pmap(prepared_step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
