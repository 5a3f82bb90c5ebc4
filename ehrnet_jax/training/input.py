"""The trainer's view of the input pipeline: `TrainData`, and its COCO and TFDS-classification
implementations.

`TrainData.batches(start_step)` yields this process's batches, host-local and flat (leading dim
`local_batch`: the global batch over the processes), in a compact host format: for pose that of
`ehrnet_jax.data.pipeline` (uint8 images and masks, integer keypoint positions), for
classification that of `ehrnet_jax.data.classification` (uint8 images, int32 labels). The task's
`prepare` (`tasks.py`) turns them into the float training batch on device, inside the step.
The pose iterator is a Grain `DatasetIterator`: the loop checkpoints its state.
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
    """Host-local batches of optimiser steps start_step, start_step + 1, ... (endless).

    A batch must be a pure function of the seed, its step and the process, so that a resumed
    run sees the same stream as an uninterrupted one. An iterator with Grain's
    `get_state`/`set_state` (a `grain.DatasetIterator`) is checkpointed with the state.
    """


class CocoTrainData:
  """Augmented COCO keypoint batches from `ehrnet_jax.data` (TFDS built once, then Grain).

  Building the dataset (the first run on a COCO folder) needs TensorFlow; reading it does not.
  `batches` returns a `pipeline.TrainBatches`, a Grain iterator whose state the loop
  checkpoints.
  """

  def __init__(self, config: DataConfig, input_size: int, seed: int, workdir: str):
    from ehrnet_jax.data import augment, coco_tfds, pipeline  # Grain, TFDS: only when used.
    coco_dir = (pathlib.Path(config.coco_dir).expanduser() if config.coco_dir
                else samples.coco_dir())
    self.tfds_dir = config.tfds_dir or os.path.join(workdir, "tfds")
    builder = _build_once(lambda: _coco_builder(coco_dir, self.tfds_dir))
    self._source = pipeline.open_split(builder, config.split)
    self.num_examples = len(self._source)
    self._pipeline, self._config, self._seed = pipeline, config, seed
    self._augmentation = pipeline.Augmentation(
        input_size, builder.builder_config.keypoint_set.flip_index, augment.AugmentConfig(
            max_rotation=config.max_rotation, min_scale=config.min_scale,
            max_scale=config.max_scale, max_translate=config.max_translate,
            flip_probability=config.flip_probability))

  def batches(self, start_step: int) -> Iterator[Batch]:
    stream = self._pipeline.Stream(
        seed=self._seed, global_batch=self._config.batch,
        num_records=self.num_examples, process_index=jax.process_index(),
        process_count=jax.process_count())
    return self._pipeline.train_iterator(self._source, stream, self._augmentation,
                                         start_step=start_step, workers=self._config.workers)


def _coco_builder(coco_dir: pathlib.Path, tfds_dir: str):
  """The build of `coco_dir` in `tfds_dir`: built (TensorFlow) only when not there yet."""
  from ehrnet_jax.data import coco_tfds  # pylint: disable=g-import-not-at-top
  builder = coco_tfds.CocoKeypoints(config="coco", data_dir=tfds_dir)
  if builder.is_prepared():
    coco_tfds.check_version(builder)
    return builder
  return coco_tfds.build(coco_dir, tfds_dir)


def local_batch(config: DataConfig) -> int:
  """This process's share of the global batch `data.batch` (its rows of every global batch)."""
  return config.batch // jax.process_count()


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
        self.builder, input_size=self._input_size, batch_size=local_batch(self._config),
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
