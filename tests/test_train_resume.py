"""Kill-and-resume: a run SIGKILLed mid-way and restarted ends with an uninterrupted run's state.

Each run is a subprocess of this file training the tiny net on the sample images bundled in the
package through the real input pipeline (TFDS build, tf.data augmentation, on-device targets):
  python tests/test_train_resume.py WORKDIR TFDS_DIR OUT.npz [KILL_AT_STEP]
With KILL_AT_STEP the process kills itself (SIGKILL: no clean-up, possibly mid-save) when the
batch of that step is requested, after the checkpoint of step 2 is on disk.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
STEPS = 5
# Only against a hung subprocess, not a speed limit: ~30 s each on an idle 2-core machine.
HANG_GUARD_S = 1200


def _config():
  from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
  return Config(model=ModelConfig(variant="H-4", input_size=64),
                data=DataConfig(split="train", batch=2, shuffle_buffer=16),
                train=TrainConfig(steps=STEPS, lr_milestones=(1.0,), seed=3),
                run=RunConfig(log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=2,
                              eval_every_steps=-1))


class _KillingData:
  """Wraps a `TrainData`; SIGKILLs this process when the batch of `kill_at` is requested."""

  def __init__(self, data, kill_at: int, checkpoint_dir: pathlib.Path):
    self.num_examples, self._data = data.num_examples, data
    self._kill_at, self._checkpoint_dir = kill_at, checkpoint_dir

  def batches(self, start_step):
    for step, batch in enumerate(self._data.batches(start_step), start_step):
      if step == self._kill_at:
        # However slow the machine: the asynchronous save of step 2 must have landed first (a
        # save that never lands is caught by the caller's hang guard).
        while not (self._checkpoint_dir / "2").is_dir():
          time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
      yield batch


def _run(workdir: str, tfds_dir: str, out: str, kill_at: int | None):
  import dataclasses
  import jax
  from ehrnet_jax.training import loop
  from ehrnet_jax.training.input import CocoTrainData
  from support.tiny_pose import TinyPoseNet
  config = _config()
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, tfds_dir=tfds_dir))
  data = CocoTrainData(config.data, 64, config.train.seed, workdir)
  if kill_at is not None:
    data = _KillingData(data, kill_at, pathlib.Path(workdir) / "checkpoints")
  state = loop.train(config, workdir, data=data, model=TinyPoseNet())
  leaves = jax.tree_util.tree_leaves_with_path(state)
  np.savez(out, **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})


def _train(tmp_path, name: str, kill_at: int | None = None, workdir: str | None = None):
  workdir = workdir or str(tmp_path / name)
  out = tmp_path / f"{name}.npz"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
         "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
  args = [sys.executable, __file__, workdir, str(tmp_path / "tfds"), str(out)]
  result = subprocess.run(args + ([str(kill_at)] if kill_at is not None else []), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=HANG_GUARD_S)
  return result, out, workdir


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
  result, uninterrupted, _ = _train(tmp_path, "uninterrupted")
  assert result.returncode == 0, result.stdout.decode()[-3000:]

  result, killed, workdir = _train(tmp_path, "killed", kill_at=3)
  assert result.returncode == -signal.SIGKILL, result.stdout.decode()[-3000:]
  assert not killed.exists()
  steps = sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps and max(steps) < STEPS  # It really stopped part-way.

  result, resumed, _ = _train(tmp_path, "resumed", workdir=workdir)
  assert result.returncode == 0, result.stdout.decode()[-3000:]
  logged = [json.loads(line)["step"]
            for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  assert logged.count(1) == 1 and logged[-1] == STEPS  # Resumed, not restarted from scratch.
  expected, actual = np.load(uninterrupted), np.load(resumed)
  assert sorted(expected.files) == sorted(actual.files)
  assert int(actual[".step"]) == STEPS
  # Exact: both runs execute the same compiled step on the same machine from the same state and
  # batches (XLA:CPU's ops are deterministic), so any difference is a resume bug.
  for key in expected.files:  # Parameters, BN statistics, Adam moments, step and key.
    np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


if __name__ == "__main__":
  _run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
