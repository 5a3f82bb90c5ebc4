"""Training checkpoints with orbax's `CheckpointManager`.

One checkpoint per saved step under `<workdir>/checkpoints/<step>/`, with two or three items:
- `state`: the whole `TrainState` (parameters, BN statistics, optimiser state, step, base key);
- `meta`: JSON with the data position (optimiser step, epoch, batch within the epoch) and the
  run's config and model, for humans and for the resume check;
- `data`, when the input pipeline is a Grain `DatasetIterator` (COCO): its state, one JSON file
  per process (Grain's orbax handler), restored into the resumed run's iterator.

Saves are asynchronous and atomic: orbax copies the state's arrays from the devices to host
memory (each process its own replica's share), returns, and writes the files while training
continues; it writes to a temporary directory and renames it, so a run killed at any moment
resumes from the last complete checkpoint. Every process takes part in every save and restore.
Kept: the latest `keep` checkpoints plus the best one by the task's metric (a save with
`metrics={metric: ...}`: "ap" for pose, "top1" for classification).
Restoring uses the abstract target (shapes, dtypes, shardings and the optax named tuples of a
freshly built state), so the optimiser state comes back with its structure, straight onto the
devices the target names.
"""

import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from ehrnet_jax.errors import UserError
from ehrnet_jax.training.mesh import host_value
from ehrnet_jax.training.state import TrainState


class Checkpointer:
  """Saves and restores `TrainState`s in `directory` (made absolute; orbax requires it); the
  best checkpoint is the one with the highest `metric` (higher is better)."""

  def __init__(self, directory: str | os.PathLike, keep: int, metric: str = "ap"):
    self.directory = os.path.abspath(os.fspath(directory))
    self.metric = metric
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda metrics: metrics[metric], reverse=False, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    # best_fn also makes orbax write each save's metrics to disk (for the policy after a restart).
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation, best_fn=lambda metrics: metrics[metric],
        best_mode="max", keep_checkpoints_without_metrics=True, create=True,
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta", "data"),
                                          options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState, meta: dict[str, Any],
           metrics: dict[str, float] | None = None, data: Any = None) -> None:
    """Starts an asynchronous save of `state` (global arrays, e.g. replicated over the mesh, or
    host arrays), and of the state of `data`, the input iterator, when it is a Grain
    `DatasetIterator`.

    Waits for the previous save first; returns once the arrays are copied to host memory (so the
    caller may then donate their buffers to the next step; the iterator's state is taken now:
    that of the batch after `state.step`'s).
    """
    step = int(host_value(state.step))
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if isinstance(data, grain.DatasetIterator):
      items["data"] = grain.checkpoint.CheckpointSave(data)
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore_data(self, data: Any, step: int) -> bool:
    """Sets the Grain iterator `data` to its state saved at `step`; False (nothing done) when
    `data` is no Grain iterator or the checkpoint holds no input state."""
    if not (isinstance(data, grain.DatasetIterator) and
            os.path.isdir(os.path.join(self.directory, str(step), "data"))):
      return False
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data)))
    except (ValueError, FileNotFoundError) as error:
      raise UserError(f"{self.directory}/{step}/data: cannot restore the input pipeline's state "
                      f"(saved by another number of processes?): {error}") from error
    return True

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """The state and meta of `step` (default: the latest), shaped and placed like `target`.

    `target`: `jax.ShapeDtypeStruct`s with shardings (`mesh.abstract_replicated` of the state
    constructor's `jax.eval_shape`), or arrays; the state comes back as arrays of those
    shardings.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"{self.directory}: no checkpoint to restore")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError) as error:
      raise UserError(f"{self.directory}/{step}: the checkpoint does not match this model or "
                      f"optimiser (was it written with another config?): {error}") from error
    return restored.state, restored.meta

  def best_step(self) -> int | None:
    """The saved step with the best metric (the latest step when no save had metrics)."""
    return self._manager.best_step()

  def best_value(self) -> float:
    """The best metric saved so far (-inf when no save had metrics)."""
    step = self._manager.best_step()
    metrics = self._manager.metrics(step) if step is not None else None
    return float(metrics[self.metric]) if metrics and self.metric in metrics else float("-inf")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
