"""The trainer's view of the input pipeline: `TrainData` and its COCO implementation.

`TrainData.batches(start_step)` yields this process's batches, already shaped for pmap
`(local_devices, per_device_batch, ...)`, in the host format of `ehrnet_jax.data.pipeline`
(uint8 images and masks, integer keypoint positions); `ehrnet_jax.data.targets.prepare_batch`
turns them into the float training batch on device, inside the pmapped step.
"""

import os
import pathlib
from typing import Iterator, Protocol

import jax
import numpy as np

from ehrnet_jax import samples
from ehrnet_jax.config import DataConfig
from ehrnet_jax.errors import UserError

Batch = dict[str, np.ndarray]


class TrainData(Protocol):
  """What the loop needs from an input pipeline."""
  num_examples: int  # Training examples of one epoch, all processes together.

  def batches(self, start_step: int) -> Iterator[Batch]:
    """Batches of optimiser steps start_step, start_step + 1, ... (endless).

    A batch must be a pure function of the seed and its step, so that a resumed run sees the
    same stream as an uninterrupted one.
    """


class CocoTrainData:
  """Augmented COCO keypoint batches from `ehrnet_jax.data` (TFDS built once, then tf.data)."""

  def __init__(self, config: DataConfig, input_size: int, seed: int, workdir: str):
    from ehrnet_jax.data import augment, coco_tfds, pipeline  # TensorFlow: only when used.
    coco_dir = (pathlib.Path(config.coco_dir).expanduser() if config.coco_dir
                else samples.coco_dir())
    self.tfds_dir = config.tfds_dir or os.path.join(workdir, "tfds")
    builder = _build_once(coco_tfds, coco_dir, self.tfds_dir)
    if config.split not in builder.info.splits:
      raise UserError(f"data.split={config.split!r}: not in {coco_dir} (built splits: "
                      f"{', '.join(builder.info.splits)})")
    self.num_examples = builder.info.splits[config.split].num_examples
    self._pipeline, self._augment = pipeline, augment
    self._config, self._input_size, self._seed = config, input_size, seed

  def batches(self, start_step: int) -> Iterator[Batch]:
    return self._pipeline.train_iterator(
        self.tfds_dir, input_size=self._input_size,
        per_device_batch=self._config.per_device_batch, num_devices=jax.local_device_count(),
        seed=self._seed, start_step=start_step, split=self._config.split,
        shuffle_buffer=self._config.shuffle_buffer,
        augment_config=self._augment.AugmentConfig(
            max_rotation=self._config.max_rotation, min_scale=self._config.min_scale,
            max_scale=self._config.max_scale, max_translate=self._config.max_translate,
            flip_probability=self._config.flip_probability))


def _build_once(coco_tfds, coco_dir: pathlib.Path, tfds_dir: str):
  """Builds the dataset on process 0 first; the others then open the finished build."""
  if jax.process_index() == 0:
    builder = coco_tfds.build(coco_dir, tfds_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("ehrnet_jax: TFDS dataset built")
  if jax.process_index() != 0:
    builder = coco_tfds.build(coco_dir, tfds_dir)
  return builder
