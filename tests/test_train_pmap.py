"""Data parallelism: the pmapped step over 8 simulated CPU devices, and over 2 processes.

The independent truth is a single-device step written without pmap or collectives: the loss is
the mean over the device shards of the per-shard loss, each shard normalised with its own batch
statistics (data parallelism without SyncBN, as in the reference's DDP) and drop-connect keyed
by `fold_in(rng, shard)`, the new BN statistics the mean of the shards'. The optimiser is plain
SGD with learning rate 1, so the parameter change *is* the averaged gradient (Adam's first step,
about -lr*sign(g), would hide gradient errors).

The device count must be set before JAX starts, so the work runs in subprocesses of this file:
  python tests/test_train_pmap.py OUT.npz [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

PER_DEVICE = 2
SIZE = 32
HERE = pathlib.Path(__file__).resolve().parent
# Only against a hung subprocess (e.g. a collective waiting forever), not a speed limit.
HANG_GUARD_S = 1200


def _run_step(out: str, coordinator: str = "", num_processes: int = 0, process_id: int = -1):
  """One pmapped step of the tiny net on this process's shard; process 0 also computes the
  single-device reference and writes both to `out`."""
  from ehrnet_jax.training import distributed
  distributed.initialize(coordinator, num_processes, process_id)
  import jax
  import optax
  from ehrnet_jax import losses
  from ehrnet_jax.data import targets
  from ehrnet_jax.training import step as step_lib
  from ehrnet_jax.training.state import create_train_state
  from support.tiny_pose import SyntheticData, TinyPoseNet

  model, tx = TinyPoseNet(), optax.sgd(1.0)
  state = create_train_state(model, tx, jax.random.key(0))
  rng = jax.random.key(3)
  total, local = jax.device_count(), jax.local_device_count()
  batch = SyntheticData(0, PER_DEVICE, SIZE, devices=total).batch(0)  # (devices, 2, ...)
  shard = {k: v[jax.process_index() * local:(jax.process_index() + 1) * local]
           for k, v in batch.items()}
  p_step = step_lib.pmap_train_step(
      step_lib.make_train_step(model, tx, losses.pose_loss, False, axis_name=step_lib.AXIS),
      prepare=targets.prepare_batch)
  replicated, metrics = p_step(step_lib.replicate(state), shard, rng)
  replicated, metrics = jax.device_get((replicated, metrics))
  if jax.process_index() != 0:
    return
  spread = max(float(np.abs(x - x[:1]).max()) for x in jax.tree.leaves(replicated.params))

  def reference_loss(params):
    def shard_loss(index, shard_batch):
      outputs, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, shard_batch["image"], train=True,
          rngs={"dropout": jax.random.fold_in(rng, index)}, mutable=["batch_stats"])
      return losses.pose_loss(outputs, shard_batch)[0], updates["batch_stats"]
    shard_losses, stats = jax.vmap(shard_loss)(jax.numpy.arange(total),
                                               targets.prepare_batch(batch))
    return shard_losses.mean(), jax.tree.map(lambda s: s.mean(0), stats)

  (loss, stats), grads = jax.value_and_grad(reference_loss, has_aux=True)(state.params)
  params = optax.apply_updates(state.params, tx.update(grads, state.opt_state)[0])
  flat = lambda tree, prefix: {prefix + jax.tree_util.keystr(p): np.asarray(x)
                               for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  np.savez(out, devices=total, processes=jax.process_count(), spread=spread,
           loss=metrics["loss"][0], ref_loss=loss,
           **flat(jax.tree.map(lambda x: x[0], replicated.params), "pmap/params"),
           **flat(jax.tree.map(lambda x: x[0], replicated.batch_stats), "pmap/stats"),
           **flat(params, "ref/params"), **flat(stats, "ref/stats"))


def _env(devices: int) -> dict[str, str]:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


def _check(out: pathlib.Path, devices: int, processes: int):
  result = np.load(out)
  assert int(result["devices"]) == devices and int(result["processes"]) == processes
  # Exact: every replica receives the same all-reduced gradient and runs the same update on it
  # (one program), so replicas that differ in any bit have diverged.
  assert float(result["spread"]) == 0.0, "replicas diverged"
  np.testing.assert_allclose(result["loss"], result["ref_loss"], rtol=1e-5)
  keys = [k[len("ref/"):] for k in result.files if k.startswith("ref/")]
  assert any(k.startswith("params['backbone']") for k in keys)
  for key in keys:
    np.testing.assert_allclose(result["pmap/" + key], result["ref/" + key], atol=1e-5, rtol=0,
                               err_msg=key)


@pytest.mark.slow
def test_pmap_step_over_8_devices_matches_single_device(tmp_path):
  out = tmp_path / "step.npz"
  subprocess.run([sys.executable, __file__, str(out)], env=_env(8), check=True,
                 timeout=HANG_GUARD_S)
  _check(out, devices=8, processes=1)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed(tmp_path):
  """2 processes x 2 CPU devices on localhost (gloo collectives), with a hang guard."""
  out, coordinator = tmp_path / "step.npz", f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, __file__, str(out), coordinator, "2", str(i)],
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=HANG_GUARD_S)[0].decode() for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  _check(out, devices=4, processes=2)


if __name__ == "__main__":
  if len(sys.argv) == 5:
    _run_step(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
  else:
    _run_step(sys.argv[1])
