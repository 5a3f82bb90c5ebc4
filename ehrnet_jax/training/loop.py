"""`train(config, workdir)`: the training job, from a config to a trained, evaluated model.

One loop trains both models of the project: the pose network on COCO and the backbone-only
classifier on imagenet2012 / cifar100; `data.dataset` picks the task (`tasks.py`), which supplies
the model, the loss, the input pipeline, the evaluation and its ranking metric (AP or top-1).

The step is one SPMD program over a mesh of all devices of all processes (`step.spmd_train_step`,
`mesh.py`): the train state is a replicated global array, and each step's global batch of
`data.batch` examples is assembled from the processes' local batches (`data.batch / processes`
examples each, the input pipeline's flat host batches) and split over the devices. Checkpoints
are written from the devices (orbax, asynchronously); metrics and the host copies of the model
for evaluation and the final save are read from this process's own replica, so any number of
processes works.

The loop resumes automatically from the latest checkpoint in `<workdir>/checkpoints` (state and
data position), so the same command restarts a preempted run and ends with the same parameters
as an uninterrupted one (bit-identical on CPU and TPU; on GPUs with `train.deterministic`).
Before training, process 0 says on stderr which it is (`start_line`): a new run, a resumed one
(step, checkpoint), or a complete one (nothing left to train).

Files in the work dir:
  config.json          the resolved config (process 0)
  checkpoints/<step>/  orbax training checkpoints (latest N + best by AP or top-1)
  metrics.jsonl        one JSON object per log step and per evaluation
  runs.jsonl           one per (re)start: the step, JAX, the devices, the matmul precision
                       (`run_conditions`)
  tensorboard/         the same scalars as TensorBoard events
  variables/           the final model (`ehrnet_jax.weights` format: evaluate, predict, export;
                       for the classifier with its number of classes)
  best/                the model with the best AP / top-1 so far, when evaluation runs
  tfds/                pose: the TFDS build of data.coco_dir (unless data.tfds_dir says otherwise)
"""

import collections
import dataclasses
import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ehrnet_jax import backbones
from ehrnet_jax.config import Config
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import init_variables
from ehrnet_jax.training import distributed, mesh as mesh_lib, optim, step as step_lib
from ehrnet_jax.training.checkpointing import Checkpointer
from ehrnet_jax.training.input import Batch, TrainData
from ehrnet_jax.training.state import TrainState, abstract_train_state, create_train_state
from ehrnet_jax.training.tasks import EvaluateFn, Task, make_task
from ehrnet_jax.training.writers import MetricWriter, ProgressBar


class NonFiniteLossError(UserError):
  """The loss became NaN or infinite; the message names the step and the batch."""


def total_steps(config: Config, steps_per_epoch: int) -> int:
  return config.train.steps or max(1, round(config.train.epochs * steps_per_epoch))


def _initial_variables(task: Task, model: nn.Module, rng: jax.Array) -> dict[str, Any] | None:
  """Variables of `init.checkpoint`, or None for random init. With `init.backbone_only`, the
  backbone of a pose or classifier checkpoint or of an EfficientNet state dict
  (`ehrnet_jax.backbones`) over a random init of the rest."""
  init = task.config.init
  if not init.checkpoint:
    return None
  if not init.backbone_only:
    return task.load_whole(init.checkpoint)
  backbone = backbones.load_backbone(init.checkpoint, task.spec)
  return backbones.with_backbone(init_variables(model, rng), backbone)


class _NonFiniteGuard:
  """Checks each step's loss one step late, so the check never stalls the device queue.

  Keeps the host batches of the steps not yet checked; on a non-finite loss saves that batch
  (this process's rows of it) to `<workdir>/nonfinite_step_<step>.npz` (with several processes
  `nonfinite_step_<step>_process_<index>.npz`) and raises `NonFiniteLossError`.
  """

  def __init__(self, workdir: str, steps_per_epoch: int):
    self._workdir, self._steps_per_epoch = workdir, steps_per_epoch
    self._pending = collections.deque()

  def push(self, step: int, loss: jax.Array, batch: Batch) -> None:
    """Registers the (replicated device) loss and this process's host batch of optimiser step
    `step` (0-based)."""
    self._pending.append((step, loss, batch))

  def check(self, keep: int = 1) -> None:
    """Checks all but the newest `keep` registered steps."""
    while len(self._pending) > keep:
      step, loss, batch = self._pending.popleft()
      value = float(mesh_lib.host_value(loss))
      if np.isfinite(value):
        continue
      process = f"_process_{jax.process_index()}" if jax.process_count() > 1 else ""
      path = os.path.join(self._workdir, f"nonfinite_step_{step}{process}.npz")
      np.savez_compressed(path, **batch)
      epoch, index = divmod(step, self._steps_per_epoch)
      ids = batch.get("image_id")
      named = f", COCO image ids {np.asarray(ids).ravel().tolist()}" if ids is not None else ""
      raise NonFiniteLossError(
          f"loss is {value} at optimiser step {step} (batch {index} of epoch {epoch}{named}; "
          f"saved to {path}). The checkpoints before it are intact. Lower "
          f"train.learning_rate, raise train.warmup_epochs, or inspect the batch.")


@dataclasses.dataclass
class _Throughput:
  """Images per second of the training steps between log steps.

  The first step (compilation) and the time spent saving and evaluating are left out.
  """
  global_batch: int
  start_time: float | None = None
  start_step: int = 0
  excluded: float = 0.0

  def exclude(self, seconds: float) -> None:
    self.excluded += seconds

  def mark(self, step: int) -> float | None:
    """Images/s since the previous mark (None at the first), and restarts the clock."""
    now = time.perf_counter()
    rate = None
    if self.start_time is not None and step > self.start_step:
      rate = (step - self.start_step) * self.global_batch / (
          now - self.start_time - self.excluded)
    self.start_time, self.start_step, self.excluded = now, step, 0.0
    return rate


def run_conditions(config: Config) -> dict[str, Any]:
  """What the run's figures depend on beyond its config: JAX, the devices, the precision in
  force (`train.matmul_precision` once `train` has set it) and the compute dtype."""
  device = jax.devices()[0]
  return {"jax": jax.__version__, "backend": device.platform,
          "devices": f"{jax.device_count()} x {device.device_kind}",
          "processes": jax.process_count(),
          "matmul_precision": jax.config.jax_default_matmul_precision,
          "compute_dtype": config.train.compute_dtype}


def train(config: Config, workdir: str, *, data: TrainData | None = None,
          evaluate: EvaluateFn | None = None, model: nn.Module | None = None) -> TrainState:
  """Trains (or resumes training) and returns the final state (host copy).

  Everything runs under `train.matmul_precision` (JAX's default precision of float32
  convolutions and products): the compiled step and the evaluation. `run_conditions` goes to
  runs.jsonl and is the console's first line.

  Args:
    config: the run's config.
    workdir: where checkpoints, logs and the final model go (created if missing).
    data: the input pipeline (flat host-local batches of `data.batch / processes` examples);
      default the task's (`CocoTrainData`, `ClassificationTrainData`).
    evaluate: the evaluation hook; its task metric ("ap" for pose, "top1" for classification)
      ranks the checkpoints. Default COCO AP (`CocoEvaluator`) or top-1/top-5
      (`ClassificationEvaluator`) on `config.run.eval_split`, unless `data` is given or
      `config.run.eval_every_steps` is -1.
    model: the network; default the task's (`EfficientHRNet`, `EfficientNetClassifier`, in the
      form of `train.execution_form` and `train.batch_norm`; a given model brings its own).

  Raises:
    NonFiniteLossError: when the loss becomes NaN or infinite.
    UserError: e.g. when `data.batch` does not split evenly over the devices.
  """
  try:
    precision = jax.default_matmul_precision(config.train.matmul_precision)
  except ValueError as error:
    raise UserError(f"train.matmul_precision={config.train.matmul_precision!r}: "
                    f"{error}") from error
  with precision:
    return _train(config, workdir, data, evaluate, model)


def _train(config: Config, workdir: str, data: TrainData | None, evaluate: EvaluateFn | None,
           model: nn.Module | None) -> TrainState:
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  distributed.check_deterministic_ops(config.train.deterministic)
  global_batch = config.data.batch
  mesh_lib.check_batch(global_batch, jax.device_count())
  mesh = mesh_lib.data_mesh()
  task = make_task(config)
  spec = task.spec
  model = model or task.make_model()
  if data is None:
    data = task.train_data(workdir)
    if evaluate is None and config.run.eval_every_steps >= 0:
      evaluate = task.evaluator(data, model)
  steps_per_epoch = max(1, data.num_examples // global_batch)
  num_steps = total_steps(config, steps_per_epoch)
  tx = optim.make_optimizer(config.train, steps_per_epoch)
  schedule = optim.learning_rate_schedule(config.train, steps_per_epoch)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.run.keep_checkpoints,
                              metric=task.metric)
  if checkpointer.latest_step() is None:
    state = mesh_lib.put_replicated(_fresh_state(task, model, tx), mesh)
  else:  # Resume: the abstract state gives the structure and placement, the checkpoint values.
    state, meta = checkpointer.restore(
        mesh_lib.abstract_replicated(abstract_train_state(model, tx), mesh))
    _check_resumable(meta, task.name, global_batch, checkpointer.directory)
  start = int(mesh_lib.host_value(state.step))
  if is_main:
    print(start_line(workdir, checkpointer.directory, start, num_steps), file=sys.stderr,
          flush=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      json.dump(config.to_dict(), f, indent=2)

  train_step = step_lib.spmd_train_step(step_lib.make_train_step(
      model, tx, task.loss_fn, config.train.freeze_backbone,
      axis_name=mesh_lib.AXIS), mesh, prepare=task.prepare)
  writer = MetricWriter(workdir, enabled=is_main)
  progress = ProgressBar(start, num_steps, enabled=is_main)
  conditions = run_conditions(config)
  writer.write_run(start, conditions)
  progress.write(", ".join(f"{k} {v}" for k, v in conditions.items()))
  guard = _NonFiniteGuard(workdir, steps_per_epoch)
  throughput = _Throughput(global_batch)
  best = checkpointer.best_value()

  def log(step: int, metrics: dict[str, jax.Array]) -> None:
    done = step + 1
    scalars = {k: float(v) for k, v in mesh_lib.host_copy(metrics).items()}
    rate = throughput.mark(done)
    if rate is not None:
      scalars["images_per_second"] = rate
    scalars["learning_rate"] = float(schedule(step))
    scalars["epoch"] = done / steps_per_epoch
    writer.write(done, scalars)
    progress.update(0, loss=scalars["loss"], lr=scalars["learning_rate"],
                    **({"img/s": rate} if rate is not None else {}))

  def evaluate_and_save(state: TrainState, done: int) -> None:
    nonlocal best
    result = None
    if evaluate and _eval_due(config, done, num_steps):
      variables = mesh_lib.host_copy(state.variables)
      result = evaluate(variables, spec)
      writer.write(done, {f"eval/{k}": v for k, v in result.items()})
      progress.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
      if result[task.metric] > best:  # Every process: orbax's saves are collective.
        best = result[task.metric]
        task.save(os.path.join(workdir, "best"), variables, source=f"ehrnet train, step {done}")
    epoch, index = divmod(done, steps_per_epoch)
    meta = {"step": done, "epoch": epoch, "batch_in_epoch": index, "model": task.name,
            "global_batch": global_batch, "config": config.to_dict()}
    metrics = {task.metric: result[task.metric]} if result else None
    checkpointer.save(state, meta, metrics=metrics, data=batches)

  batches = data.batches(start)
  if start:
    checkpointer.restore_data(batches, start)
  for step in range(start, num_steps):
    host_batch = next(batches)
    batch = mesh_lib.global_batch(host_batch, mesh)
    if step == start:  # Every batch has the same shapes: compile once, ahead of the first step.
      train_step = step_lib.compile_step(train_step, state, batch)
    state, metrics = train_step(state, batch)
    guard.push(step, metrics["loss"], host_batch)
    guard.check(keep=1)
    done = step + 1
    if step == start:  # The first step compiles; time the throughput from its end.
      jax.block_until_ready(metrics)
      throughput.mark(done)
    if done % config.run.log_every_steps == 0 or done == num_steps:
      log(step, metrics)
    progress.update(1)
    if done % config.run.checkpoint_every_steps == 0 or _eval_due(config, done, num_steps) or (
        done == num_steps):
      guard.check(keep=0)  # Never save a non-finite state.
      started = time.perf_counter()
      evaluate_and_save(state, done)
      throughput.exclude(time.perf_counter() - started)
  guard.check(keep=0)
  progress.close()
  checkpointer.close()
  getattr(batches, "close", lambda: None)()  # Grain's worker processes.
  final = mesh_lib.host_copy(state)
  task.save(os.path.join(workdir, "variables"), final.variables,  # Collective, as above.
            source=f"ehrnet train, step {int(final.step)}")
  writer.close()
  return final


def start_line(workdir: str, checkpoints: str, start: int, num_steps: int) -> str:
  """What the run does with `workdir`, whose latest checkpoint (in `checkpoints`) is of step
  `start` (0: none)."""
  if not start:
    return f"training: new run in {workdir} (no checkpoint in {checkpoints})"
  checkpoint = os.path.join(checkpoints, str(start))
  if start >= num_steps:
    return (f"training: the run in {workdir} is complete (step {start} of {num_steps}, "
            f"checkpoint {checkpoint}); nothing to train")
  return f"training: resuming {workdir} at step {start} of {num_steps} (checkpoint {checkpoint})"


def _eval_due(config: Config, done: int, num_steps: int) -> bool:
  every = config.run.eval_every_steps
  return (every > 0 and done % every == 0) or (every >= 0 and done == num_steps)


def _fresh_state(task: Task, model: nn.Module, tx) -> TrainState:
  """The step-0 state: random or `init.checkpoint` variables, the seed's training key."""
  config = task.config
  rng = jax.random.key(config.train.seed)
  if config.train.freeze_backbone and not config.init.checkpoint:
    print("warning: train.freeze_backbone=True with a randomly initialised backbone (no "
          "init.checkpoint): only the layers after the backbone will learn.")
  # The same init key as create_train_state's, so the non-loaded parts match a random start.
  init_rng = jax.random.split(rng)[0]
  return create_train_state(model, tx, rng,
                            _initial_variables(task, model, init_rng))


def _check_resumable(meta: dict, name: str, global_batch: int, where: str) -> None:
  if meta["model"] != name or meta["global_batch"] != global_batch:
    raise UserError(f"{where}: the run there trains {meta['model']} with a global batch of "
                    f"{meta['global_batch']}, this config {name} with {global_batch}; use "
                    f"another --workdir")
