"""Helpers for the training tests: a miniature pose network and synthetic host batches.

`TinyPoseNet` has what the trainer relies on in EfficientHRNet, at a compile cost of a second
instead of a minute: a `backbone` parameter collection, batch norm with running statistics,
sample-wise drop-connect drawing from the "dropout" rng, and `PoseOutputs` at 1/4 and 1/2.
`SyntheticData` yields host batches in the input pipeline's format (uint8 images and masks,
integer keypoint positions), each a pure function of its step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax.models import PoseOutputs

JOINTS = 17
PEOPLE = 30


def _batch_norm(x, train, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(x)


def _drop_connect(x, rate, rng):
  """Drops whole samples with probability `rate` (as the real backbone's residuals do)."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0], 1, 1, 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class TinyBackbone(nn.Module):
  """Conv-BN (no conv bias before BN, as in the real model) with a drop-connect residual."""
  @nn.compact
  def __call__(self, images, train):
    x = nn.Conv(8, (4, 4), strides=(4, 4), use_bias=False, name="stem")(images)  # (B, S/4, S/4, 8)
    x = nn.relu(_batch_norm(x, train, "bn"))
    y = nn.Conv(8, (3, 3), use_bias=False, name="residual")(x)
    if train:
      y = _drop_connect(y, 0.5, self.make_rng("dropout"))
    return x + y


class TinyPoseNet(nn.Module):
  @nn.compact
  def __call__(self, images, train):
    x = TinyBackbone(name="backbone")(images, train)
    x = nn.relu(_batch_norm(nn.Conv(8, (3, 3), use_bias=False, name="neck")(x), train, "bn"))
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
  """`TrainData` of random host batches keyed by step: `batches` yields them flat (b, ...) as the
  contract says, `batch(step)` shaped (devices, per_device, ...)."""

  def __init__(self, num_examples: int, per_device_batch: int, size: int, devices: int = 1):
    self.num_examples = num_examples
    self._per_device, self._size, self._devices = per_device_batch, size, devices

  def batch(self, step: int) -> dict[str, np.ndarray]:
    flat = host_batch(np.random.default_rng(step), self._devices * self._per_device, self._size)
    return {k: v.reshape(self._devices, self._per_device, *v.shape[1:]) for k, v in flat.items()}

  def batches(self, start_step: int):
    step = start_step
    while True:
      yield {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.batch(step).items()}
      step += 1


def init_tiny(size: int, seed: int = 0) -> dict:
  return TinyPoseNet().init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False)
