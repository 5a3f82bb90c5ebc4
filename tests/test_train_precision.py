"""`train.matmul_precision` reaches the compiled training step and the run's record."""

import json

import jax
import pytest

from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from ehrnet_jax.errors import UserError
from ehrnet_jax.training import loop, step as step_lib
from support.tiny_pose import SyntheticData, TinyPoseNet

SIZE = 32


def _config(**train) -> Config:
  return Config(model=ModelConfig(variant="H-4", input_size=SIZE),
                data=DataConfig(batch=2), train=TrainConfig(steps=1, **train),
                run=RunConfig(eval_every_steps=-1))


@pytest.mark.slow
@pytest.mark.parametrize("precision, operand_precision", [
    (TrainConfig().matmul_precision, "operand_precision={highest,highest}"),
    ("default", None),  # XLA omits the default precision.
])
def test_the_step_is_compiled_with_the_configured_precision(tmp_path, monkeypatch, precision,
                                                             operand_precision):
  compiled_steps, compile_step = [], step_lib.compile_step

  def recording_compile_step(*args):
    compiled_steps.append(compile_step(*args))
    return compiled_steps[-1]

  monkeypatch.setattr(step_lib, "compile_step", recording_compile_step)
  loop.train(_config(matmul_precision=precision), str(tmp_path), model=TinyPoseNet(),
             data=SyntheticData(num_examples=2, batch=2, size=SIZE))

  (compiled,) = compiled_steps
  convolutions = [line for line in compiled.as_text().splitlines() if " convolution(" in line]
  assert convolutions  # Forward and backward, of TinyPoseNet's four layers.
  for line in convolutions:
    if operand_precision:
      assert operand_precision in line
    else:
      assert "operand_precision" not in line
  assert jax.config.jax_default_matmul_precision is None  # Set for the run only.
  (run,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
  assert run["matmul_precision"] == precision and run["jax"] == jax.__version__
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["matmul_precision"] == precision


def test_the_default_precision_is_float32():
  assert TrainConfig().matmul_precision == "highest"


def test_an_unknown_precision_is_refused_by_name(tmp_path):
  with pytest.raises(UserError, match="train.matmul_precision='fp32'"):
    loop.train(_config(matmul_precision="fp32"), str(tmp_path), model=TinyPoseNet(),
               data=SyntheticData(num_examples=2, batch=2, size=SIZE))
