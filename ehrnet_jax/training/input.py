"""The trainer's view of the input pipeline: `TrainData`, and its COCO and TFDS-classification
implementations.

`TrainData.batches(start_step)` yields this process's batches, already shaped for pmap
`(local_devices, per_device_batch, ...)`, in a compact host format: for pose that of
`ehrnet_jax.data.pipeline` (uint8 images and masks, integer keypoint positions), for
classification that of `ehrnet_jax.data.classification` (uint8 images, int32 labels). The task's
`prepare` (`tasks.py`) turns them into the float training batch on device, inside the pmapped
step.
"""

import os
import pathlib
from typing import Any, Callable, Iterator, Protocol

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
    builder = _build_once(lambda: coco_tfds.build(coco_dir, self.tfds_dir))
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


class ClassificationTrainData:
  """Augmented batches of TFDS `imagenet2012` or `cifar100` (`ehrnet_jax.data.classification`):
  random-resized crops of `input_size`, flips and colour jitter, per `config`."""

  def __init__(self, config: DataConfig, input_size: int, seed: int):
    from ehrnet_jax.data import classification  # TensorFlow: only when used.
    self.builder = _build_once(lambda: classification.load_builder(
        config.dataset, config.tfds_dir, config.manual_dir))
    self.num_examples = classification.split_size(self.builder, config.split, "data.split")
    self._classification, self._config = classification, config
    self._input_size, self._seed = input_size, seed
    self._augment = classification.CropAugment(
        area=_range(config.crop_area, "data.crop_area", 0.0, 1.0),
        aspect=_range(config.crop_aspect, "data.crop_aspect", 0.0, float("inf")),
        flip_probability=config.flip_probability, color_jitter=config.color_jitter)

  def batches(self, start_step: int) -> Iterator[Batch]:
    return self._classification.train_iterator(
        self.builder, input_size=self._input_size,
        batch=self._config.batch // jax.process_count(),
        seed=self._seed, start_step=start_step, split=self._config.split,
        shuffle_buffer=self._config.shuffle_buffer, augment=self._augment)


def _range(values: tuple[float, ...], field: str, low: float, high: float) -> tuple[float, float]:
  """`values` as (min, max) with low < min <= max <= high; UserError naming `field` otherwise."""
  if len(values) != 2 or not low < values[0] <= values[1] <= high:
    raise UserError(f"{field}={','.join(map(str, values))}: expected MIN,MAX with "
                    f"{low:g} < MIN <= MAX <= {high:g}")
  return float(values[0]), float(values[1])


def _build_once(build: Callable[[], Any]):
  """Runs `build` (returns a TFDS builder) on process 0 first; the others then open the
  finished build."""
  if jax.process_index() == 0:
    builder = build()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("ehrnet_jax: TFDS dataset built")
  if jax.process_index() != 0:
    builder = build()
  return builder
