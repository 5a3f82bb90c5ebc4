"""The training step: a pure per-device function `(state, batch, rng) -> (state, metrics)`, and
the one SPMD program that runs it on every device.

The same step trains the pose model and the backbone classifier: it is bound to the task's loss
function `(model outputs, batch) -> (total, components)` (`losses.pose_loss`,
`losses.classification_loss`; see `tasks.py`).

`spmd_train_step` runs it as `jax.jit(jax.shard_map(...))` over the data mesh (`mesh.py`), the
form `jax.pmap` itself lowers to: each device takes its shard of the global batch, uses the key
`fold_in(rng, device_index)` for drop-connect, and the gradients, the updated batch-norm
statistics and the metrics are averaged over the mesh axis (`lax.pmean`), so the replicated
state stays identical on every device. By default (the reference's PyTorch DDP without SyncBN)
batch normalisation uses the statistics of each device's own shard; a model whose
`ExecutionForm.batch_norm_axis` names the mesh axis normalises with those of the global batch.
With `axis_name=None` the same function runs on one device.

With a frozen backbone the gradient is taken with respect to the other parameters only: the
backbone's parameters enter the loss as constants, so no backward pass runs through the backbone
at all (nothing upstream needs a gradient). The optimiser's `set_to_zero` then sees zeros.
"""

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import optax

from ehrnet_jax.host_memory import release_freed_memory
from ehrnet_jax.models import BACKBONE
from ehrnet_jax.training.mesh import AXIS
from ehrnet_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
# The compiled program: (replicated state, global batch) -> (state, metrics).
SpmdStepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
# (model outputs, batch) -> (total loss, {component name: scalar}), the components summing to it.
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


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


def spmd_train_step(step_fn: StepFn, mesh: Mesh,
                    prepare: Callable[[Batch], Batch] | None = None) -> SpmdStepFn:
  """`step_fn` (bound with `axis_name=AXIS`) as one SPMD program over `mesh`, jitted.

  The program takes the replicated state and the global host-format batch (split over `AXIS`
  along its leading axis) and returns the replicated new state and metrics; the input state's
  buffers are donated. The step's key is `state.step_key(state.step)`, the same on every device
  (`step_fn` folds in the device index). `prepare` (the task's: `tasks.Task.prepare`) turns each
  device's shard of the host batch into its training batch on device first.

  The body has per-device semantics, as under `jax.pmap` (`check_vma=False`): every value is the
  device's own, and `step_fn`'s `pmean` of the gradients is what averages them. (With shard_map's
  varying-axes checking, autodiff would already sum the gradients of the replicated parameters
  over the devices, and that `pmean` would leave them scaled by the device count.)
  """
  def per_device(state, batch):
    batch = prepare(batch) if prepare else batch
    return step_fn(state, batch, state.step_key(state.step))

  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


def compile_step(step: SpmdStepFn, *args) -> SpmdStepFn:
  """`step` (jitted) compiled ahead of time for the shapes and shardings of `args` (the state and
  the global batch; others are an error); multi-process safe.

  On CPU the compiler's freed host memory is also returned to the OS before the first step
  allocates its buffers (`host_memory`): peak memory of H0's trained step 5.1-5.3 -> 3.8-4.1
  GB. JAX's tracing and compilation caches are dropped first: they keep ~0.4 GB alive after
  compiling (H0 trained), peak 3.82 -> 3.64 GB. The same is done before compiling, so that the
  compiler starts from what the state needs and not from what its initialisation left (H0
  frozen: process peak 2.11 -> 1.86 GB). Functions compiled earlier recompile if they are
  called again. (Measured with the pmapped step of JAX 0.10; on accelerators the host's memory
  is not the limit, and nothing is dropped.)"""
  on_cpu = jax.default_backend() == "cpu"
  if on_cpu:
    jax.clear_caches()
    release_freed_memory()
  compiled = step.lower(*args).compile()
  if on_cpu:
    jax.clear_caches()
    release_freed_memory()
  return compiled
