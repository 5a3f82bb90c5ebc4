"""Data parallelism: the SPMD step over 8 simulated CPU devices, and `ehrnet train` over 2
processes.

One step on 8 devices (`step.spmd_train_step`) against independent single-device truths:
- per-device batch norm (the default, the reference's DDP without SyncBN): a step written without
  shard_map or collectives, the loss the mean over the 8 shards of the per-shard loss, each shard
  normalised with its own batch statistics and drop-connect keyed by `fold_in(rng, shard)`, the
  new BN statistics the mean of the shards';
- cross-replica batch norm (`ExecutionForm.batch_norm_axis`, plain and with the written
  gradient): the ordinary single-device step (`axis_name=None`) on the whole global batch, whose
  batch norm sees the global batch by construction. Drop-connect is off there: its per-device
  keys have no single-device equivalent.
The optimiser is plain SGD with learning rate 1, so the parameter change *is* the averaged
gradient (Adam's first step, about -lr*sign(g), would hide gradient errors).

Two processes: the real `ehrnet train` command over `jax.distributed` (gloo on localhost, one CPU
device each) ends with the parameters of one process with two simulated devices on the same
global batches.

The device count must be set before JAX starts, so the work runs in subprocesses:
  python tests/test_train_spmd.py OUT.npz
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from support import console_lines

BATCH = 16  # Global: 2 per device.
SIZE = 32
HERE = pathlib.Path(__file__).resolve().parent
# Only against a hung subprocess (e.g. a collective waiting forever), not a speed limit.
HANG_GUARD_S = 1200


def _flat(tree, prefix: str) -> dict:
  import jax
  return {prefix + jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _spread(tree) -> float:
  """The largest difference between the devices' copies of a replicated tree."""
  import jax
  return max(float(np.abs(np.asarray(s.data) - np.asarray(x.addressable_shards[0].data)).max())
             for x in jax.tree.leaves(tree) for s in x.addressable_shards)


def _spmd_step(model, state, batch):
  """One SPMD step of `model` on the global host batch: (host state, host metrics, spread)."""
  import jax
  import optax
  from ehrnet_jax import losses
  from ehrnet_jax.data import targets
  from ehrnet_jax.training import mesh as mesh_lib, step as step_lib
  mesh = mesh_lib.data_mesh()
  step = step_lib.spmd_train_step(
      step_lib.make_train_step(model, optax.sgd(1.0), losses.pose_loss, False,
                               axis_name=mesh_lib.AXIS), mesh, prepare=targets.prepare_batch)
  new_state, metrics = step(mesh_lib.put_replicated(state, mesh),
                            mesh_lib.global_batch(batch, mesh))
  return mesh_lib.host_copy(new_state), mesh_lib.host_copy(metrics), _spread(new_state)


def _per_device_truth(model, state, batch, devices: int):
  """(loss, params, batch_stats) of the per-shard reference (no collectives)."""
  import jax
  import optax
  from ehrnet_jax import losses
  from ehrnet_jax.data import targets
  rng = state.step_key(0)
  shards = jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]),
                        targets.prepare_batch(batch))

  def loss(params):
    def shard_loss(index, shard):
      outputs, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, shard["image"], train=True,
          rngs={"dropout": jax.random.fold_in(rng, index)}, mutable=["batch_stats"])
      return losses.pose_loss(outputs, shard)[0], updates["batch_stats"]
    shard_losses, stats = jax.vmap(shard_loss)(jax.numpy.arange(devices), shards)
    return shard_losses.mean(), jax.tree.map(lambda s: s.mean(0), stats)

  (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  return value, optax.apply_updates(state.params, jax.tree.map(lambda g: -g, grads)), stats


def _global_batch_truth(model, state, batch):
  """(loss, params, batch_stats) of the plain single-device step on the whole batch."""
  import jax
  import optax
  from ehrnet_jax import losses
  from ehrnet_jax.data import targets
  from ehrnet_jax.training import step as step_lib
  step = jax.jit(step_lib.make_train_step(model, optax.sgd(1.0), losses.pose_loss, False))
  new_state, metrics = step(state, targets.prepare_batch(batch), state.step_key(0))
  return metrics["loss"], new_state.params, new_state.batch_stats


def _run_steps(out: str):
  """The SPMD step and its truth for each batch-norm setting, all written to `out`."""
  import jax
  import optax
  from ehrnet_jax.models import ExecutionForm
  from ehrnet_jax.training import mesh as mesh_lib
  from ehrnet_jax.training.state import create_train_state
  from support.tiny_pose import SyntheticData, TinyPoseNet

  devices = jax.device_count()
  batch = SyntheticData(0, BATCH, SIZE).batch(0)
  cases = {
      "per_device": (TinyPoseNet(), lambda model, state: _per_device_truth(
          model, state, batch, devices)),
      "cross_replica": (TinyPoseNet(ExecutionForm(batch_norm_axis=mesh_lib.AXIS), drop_rate=0),
                        lambda model, state: _global_batch_truth(
                            TinyPoseNet(drop_rate=0), state, batch)),
      "cross_replica_written": (
          TinyPoseNet(ExecutionForm(written_gradients=True, batch_norm_axis=mesh_lib.AXIS),
                      drop_rate=0),
          lambda model, state: _global_batch_truth(TinyPoseNet(drop_rate=0), state, batch)),
  }
  results = {"devices": devices}
  for name, (model, truth) in cases.items():
    state = jax.device_get(create_train_state(model, optax.sgd(1.0), jax.random.key(0)))
    new_state, metrics, spread = _spmd_step(model, state, batch)
    loss, params, stats = truth(model, state)
    results.update({f"{name}/spread": spread, f"{name}/loss": metrics["loss"],
                    f"{name}/ref_loss": loss,
                    **_flat(new_state.params, f"{name}/spmd/params"),
                    **_flat(new_state.batch_stats, f"{name}/spmd/stats"),
                    **_flat(params, f"{name}/ref/params"), **_flat(stats, f"{name}/ref/stats")})
  np.savez(out, **results)


def _env(devices: int) -> dict[str, str]:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


def _uncached_env(devices: int) -> dict[str, str]:
  """`_env` without the persistent compilation cache (conftest's): a 2-process run whose step
  was loaded from it hung in the step's first all-reduce (JAX 0.12.1, CPU, gloo)."""
  env = _env(devices)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


@pytest.fixture(scope="module")
def eight_device_steps(tmp_path_factory):
  out = tmp_path_factory.mktemp("spmd") / "steps.npz"
  subprocess.run([sys.executable, __file__, str(out)], env=_env(8), check=True,
                 timeout=HANG_GUARD_S)
  return np.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["per_device", "cross_replica", "cross_replica_written"])
def test_step_over_8_devices_matches_single_device(eight_device_steps, case):
  result = eight_device_steps
  assert int(result["devices"]) == 8
  # Exact: every device receives the same all-reduced gradient and runs the same update on it
  # (one program), so copies that differ in any bit have diverged.
  assert float(result[f"{case}/spread"]) == 0.0, "replicas diverged"
  # float32 rounding: the truth sums the loss, gradients and statistics in other orders
  # (one device, another program) than the 8-way all-reduce.
  np.testing.assert_allclose(result[f"{case}/loss"], result[f"{case}/ref_loss"], rtol=1e-5)
  prefix = f"{case}/ref/"
  keys = [k[len(prefix):] for k in result.files if k.startswith(prefix)]
  assert any(k.startswith("params['backbone']") for k in keys)
  assert any(k.startswith("stats['backbone']") for k in keys)
  for key in keys:
    np.testing.assert_allclose(result[f"{case}/spmd/{key}"], result[prefix + key], atol=1e-5,
                               rtol=0, err_msg=key)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_command(workdir: pathlib.Path, tfds_dir: pathlib.Path) -> list[str]:
  """`ehrnet train`, tiny: H-4 (the smallest pose model) at 64 pixels, 3 steps of 4 images, and
  the periodic COCO evaluation at the end on 4 images (shared by the processes)."""
  settings = ["model.input_size=64", "data.batch=4", "train.steps=3", "run.log_every_steps=1",
              "run.checkpoint_every_steps=2", "run.eval_every_steps=0", "run.eval_max_images=4",
              f"data.tfds_dir={tfds_dir}"]
  return [sys.executable, "-m", "ehrnet_jax", "train", "--config",
          str(HERE.parent / "experiments" / "smoke.py"), "--workdir", str(workdir),
          *[arg for setting in settings for arg in ("--set", setting)]]


def _evaluation(workdir: pathlib.Path) -> dict[str, float]:
  """The evaluation metrics the run logged (process 0's metrics.jsonl)."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {k: v for r in records for k, v in r.items() if k.startswith("eval/")}


def _final_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
  from ehrnet_jax import weights
  return _flat(weights.load_variables(workdir / "variables")[0]["params"], "")


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
  """2 processes x 1 CPU device (gloo collectives), with a hang guard, against 1 process x 2."""
  tfds_dir = tmp_path / "tfds"
  single = subprocess.run(_train_command(tmp_path / "single", tfds_dir), env=_env(2),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=HANG_GUARD_S)
  assert single.returncode == 0, single.stdout.decode()[-3000:]
  # A fresh process (TFDS build, a save without metrics, the COCO evaluation): only the
  # command's own lines and progress bars, none of TFDS's, absl's, orbax's or pycocotools'.
  assert console_lines.foreign_lines(single.stdout.decode(), console_lines.TRAIN) == []

  command = _train_command(tmp_path / "multi", tfds_dir) + [
      "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
  procs = [subprocess.Popen(command + ["--process-id", str(i)], env=_uncached_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  try:
    logs = [p.communicate(timeout=HANG_GUARD_S)[0].decode() for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "3"]

  expected, actual = _final_params(tmp_path / "single"), _final_params(tmp_path / "multi")
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    # Two programs (gloo's all-reduce across processes, XLA's within one) add the gradients in
    # possibly different orders: float32 rounding, ~1e-7 of a gradient. Adam's updates
    # (lr * m / (sqrt(v) + eps), lr 1e-3) change by far less than 1e-3 of lr under that; a wrong
    # batch, key or scale moves parameters by whole steps of ~lr.
    np.testing.assert_allclose(actual[key], value, atol=1e-6, rtol=0, err_msg=key)
  # The evaluation ran in the loop of both runs, the images split over the processes (exact
  # agreement of shared and single-process evaluation on one model: test_evaluate_sharded.py);
  # models this close score alike.
  single_eval, multi_eval = _evaluation(tmp_path / "single"), _evaluation(tmp_path / "multi")
  assert sorted(single_eval) == ["eval/ap", "eval/ap50", "eval/ar"]
  assert multi_eval == pytest.approx(single_eval, abs=1e-6)


if __name__ == "__main__":
  _run_steps(sys.argv[1])
