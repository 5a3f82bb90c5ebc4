"""Helpers for the training tests: a miniature pose network and synthetic host batches.

`TinyPoseNet` has what the trainer relies on in EfficientHRNet, at a compile cost of a second
instead of a minute: a `backbone` parameter collection, the project's batch norm with running
statistics (`models.layers.BatchNorm`, so its `ExecutionForm` picks written gradients or
cross-replica statistics), sample-wise drop-connect drawing from the "dropout" rng, and
`PoseOutputs` at 1/4 and 1/2. `SyntheticData` yields flat host batches in the input pipeline's
format (uint8 images and masks, integer keypoint positions), each a pure function of its step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax.models import ExecutionForm, PoseOutputs
from ehrnet_jax.models.layers import BatchNorm

JOINTS = 17
PEOPLE = 30
WIDTH = 8


def _drop_connect(x, rate, rng):
  """Drops whole samples with probability `rate` (as the real backbone's residuals do)."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0], 1, 1, 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class TinyBackbone(nn.Module):
  """Conv-BN (no conv bias before BN, as in the real model) with a drop-connect residual."""
  form: ExecutionForm = ExecutionForm()
  drop_rate: float = 0.5

  @nn.compact
  def __call__(self, images, train):
    x = nn.Conv(WIDTH, (4, 4), strides=(4, 4), use_bias=False, name="stem")(images)  # S/4
    x = BatchNorm(WIDTH, self.form, name="bn")(x, train, nn.relu)
    y = nn.Conv(WIDTH, (3, 3), use_bias=False, name="residual")(x)
    if train and self.drop_rate:
      y = _drop_connect(y, self.drop_rate, self.make_rng("dropout"))
    return x + y


class TinyPoseNet(nn.Module):
  form: ExecutionForm = ExecutionForm()
  drop_rate: float = 0.5

  @nn.compact
  def __call__(self, images, train):
    x = TinyBackbone(self.form, self.drop_rate, name="backbone")(images, train)
    x = nn.Conv(WIDTH, (3, 3), use_bias=False, name="neck")(x)
    x = BatchNorm(WIDTH, self.form, name="bn")(x, train, nn.relu)
    out_4 = nn.Conv(2 * JOINTS, (1, 1), name="head_4")(x)
    out_2 = nn.Conv(JOINTS, (3, 3), name="head_2")(jnp.repeat(jnp.repeat(x, 2, 1), 2, 2))
    return PoseOutputs(out_4[..., :JOINTS], out_4[..., JOINTS:], out_2)


def host_batch(rng: np.random.Generator, batch: int, size: int) -> dict[str, np.ndarray]:
  """One host batch (batch, ...) like `ehrnet_jax.data.pipeline` yields, up to 3 people."""
  keypoints = {}
  for name, scale in (("keypoints_4", 4), ("keypoints_2", 2)):
    positions = rng.integers(0, size // scale, (batch, PEOPLE, JOINTS, 2))
    valid = np.zeros((batch, PEOPLE, JOINTS, 1), np.int32)
    valid[:, :3] = rng.integers(0, 2, (batch, 3, JOINTS, 1))
    keypoints[name] = np.concatenate([positions, valid], axis=-1).astype(np.int32)
  masks = {f"mask_{s}": (rng.random((batch, size // s, size // s)) > 0.1).astype(np.uint8)
           for s in (4, 2)}
  return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
          "image_id": np.arange(batch, dtype=np.int64), **masks, **keypoints}


class SyntheticData:
  """`TrainData` of random flat host batches of `batch` examples, keyed by step."""

  def __init__(self, num_examples: int, batch: int, size: int):
    self.num_examples = num_examples
    self._batch, self._size = batch, size

  def batch(self, step: int) -> dict[str, np.ndarray]:
    return host_batch(np.random.default_rng(step), self._batch, self._size)

  def batches(self, start_step: int):
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


def init_tiny(size: int, seed: int = 0) -> dict:
  return TinyPoseNet().init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False)
