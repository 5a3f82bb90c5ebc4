"""The training loop with the tiny net and synthetic batches: logs, checkpoints, resume, guard."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from ehrnet_jax import weights
from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from ehrnet_jax.errors import UserError
from ehrnet_jax.training import distributed, loop
from ehrnet_jax.training.checkpointing import Checkpointer
from support.tiny_pose import SyntheticData, TinyPoseNet

SIZE = 32


def _config(steps: int, **train) -> Config:
  return Config(model=ModelConfig(variant="H-4", input_size=SIZE),
                data=DataConfig(batch=2),
                train=TrainConfig(steps=steps, **train),
                run=RunConfig(log_every_steps=2, checkpoint_every_steps=1, keep_checkpoints=1,
                              eval_every_steps=1))


class _ScriptedAP:
  """An evaluation hook returning a fixed AP sequence, one value per call."""

  def __init__(self, values):
    self.values, self.calls = list(values), 0

  def __call__(self, variables, spec):
    self.calls += 1
    return {"ap": self.values[self.calls - 1], "ar": 0.0}


def _tensorboard_scalars(directory) -> dict[tuple[str, int], float]:
  scalars = {}
  for path in directory.glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  return scalars


@pytest.mark.slow
def test_logs_checkpoints_best_and_resume(tmp_path, capsys):
  data = SyntheticData(num_examples=8, batch=2, size=SIZE)  # 4 steps per epoch
  aps = [0.1, 0.5, 0.2, 0.3, 0.05, 0.0, 0.4, 0.45]
  evaluate = _ScriptedAP(aps)
  state = loop.train(_config(6, lr_milestones=(1.0,)), str(tmp_path), data=data,
                     evaluate=evaluate, model=TinyPoseNet())
  assert int(state.step) == 6 and evaluate.calls == 6
  checkpoints = tmp_path / "checkpoints"
  assert (f"training: new run in {tmp_path} (no checkpoint in {checkpoints})"
          in capsys.readouterr().err.splitlines())

  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = {r["step"]: r for r in rows if "loss" in r}
  assert sorted(train_rows) == [2, 4, 6]
  for row in train_rows.values():
    parts = row["heatmap_4"] + row["heatmap_2"] + row["pull"] + row["push"]
    assert row["loss"] == pytest.approx(parts, rel=1e-5)
    assert row["images_per_second"] > 0
  # Step 2 ran step index 1 (epoch 0): 1e-3; step 6 ran index 5 (epoch 1, after the milestone).
  assert train_rows[2]["learning_rate"] == pytest.approx(1e-3)
  assert train_rows[6]["learning_rate"] == pytest.approx(1e-4)
  assert [r["eval/ap"] for r in rows if "eval/ap" in r] == aps[:6]
  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars[("loss", 4)] == pytest.approx(train_rows[4]["loss"], rel=1e-6)
  assert scalars[("eval/ap", 2)] == pytest.approx(0.5)

  # Kept: the latest checkpoint and the best by AP (step 2).
  checkpointer = Checkpointer(tmp_path / "checkpoints", keep=1)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == [2, 6]
  assert checkpointer.best_step() == 2
  assert weights.read_spec(tmp_path / "best").name == "H-4"
  final = ocp.StandardCheckpointer().restore(tmp_path / "variables" / "variables")
  np.testing.assert_array_equal(final["params"]["head_4"]["kernel"],
                                state.params["head_4"]["kernel"])

  # The same command with more steps resumes at step 6 (no re-initialisation, no replay).
  resumed = loop.train(_config(8, lr_milestones=(1.0,)), str(tmp_path), data=data,
                       evaluate=evaluate, model=TinyPoseNet())
  assert int(resumed.step) == 8 and evaluate.calls == 8
  assert (f"training: resuming {tmp_path} at step 6 of 8 (checkpoint {checkpoints / '6'})"
          in capsys.readouterr().err.splitlines())
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8]
  # APs 0.4 and 0.45 after the resume do not beat step 2's 0.5: best/ is still step 2's.
  best = weights.read_metadata(tmp_path / "best")
  assert best["source"].endswith("step 2")

  # Once more: nothing left to train, and it says so.
  again = loop.train(_config(8, lr_milestones=(1.0,)), str(tmp_path), data=data,
                     evaluate=evaluate, model=TinyPoseNet())
  assert int(again.step) == 8 and evaluate.calls == 8
  assert (f"training: the run in {tmp_path} is complete (step 8 of 8, checkpoint "
          f"{checkpoints / '8'}); nothing to train" in capsys.readouterr().err.splitlines())


def test_non_finite_loss_stops_naming_step_and_batch(tmp_path):
  data = SyntheticData(num_examples=8, batch=2, size=SIZE)
  with pytest.raises(loop.NonFiniteLossError) as error:
    loop.train(_config(6, learning_rate=1e30), str(tmp_path), data=data, model=TinyPoseNet())
  message = str(error.value)
  bad_step = int(message.split("optimiser step ")[1].split(" ")[0])
  assert f"batch {bad_step % 4} of epoch {bad_step // 4}" in message
  saved = np.load(tmp_path / f"nonfinite_step_{bad_step}.npz")
  np.testing.assert_array_equal(saved["image"], data.batch(bad_step)["image"])
  # No checkpoint holds the step that produced the non-finite loss, or a later one.
  assert all(int(p.name) <= bad_step for p in (tmp_path / "checkpoints").iterdir()
             if p.name.isdigit())


def test_a_global_batch_of_no_examples_is_refused_before_anything_starts(tmp_path):
  config = dataclasses.replace(_config(1), data=DataConfig(batch=0))
  with pytest.raises(UserError, match="data.batch=0: the global batch must be a positive "
                                      "multiple of the device count, 1"):
    loop.train(config, str(tmp_path), data=SyntheticData(8, 2, SIZE), model=TinyPoseNet())
  assert not (tmp_path / "checkpoints").exists()


def test_deterministic_ops_flag_joins_xla_flags_before_jax_starts():
  """The flag is added once, beside the flags already set, and XLA knows it: XLA aborts the
  process at start-up on an unknown flag (e.g. a misspelt one)."""
  script = ("from ehrnet_jax.training import distributed\n"
            "distributed.request_deterministic_ops(); distributed.request_deterministic_ops()\n"
            "import jax, os\n"
            "print(jax.device_count(), jax.jit(lambda x: x + 1)(1), os.environ['XLA_FLAGS'])\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
  result = subprocess.run([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120, check=False)
  assert result.returncode == 0, result.stdout.decode()[-2000:]
  assert result.stdout.decode().split() == [
      "3", "2", "--xla_force_host_platform_device_count=3", distributed.DETERMINISTIC_OPS_FLAG]
