"""tf.data input pipelines over the built dataset: training (augmented, per host) and evaluation.

Training, per host:
  records of this host's shard -> per epoch e a shuffle seeded by (seed, e) -> element index ->
  skip to the start step -> decode + augment in parallel (OpenCV in `tf.numpy_function`, which
  releases the GIL) -> batch [devices * per_device] -> reshape [devices, per_device, ...] ->
  prefetch.
Every random draw is keyed by (seed, process index, element index), so a batch depends only on
the seed and its step: the stream is identical across runs, parallelism and resumption. Resuming
skips records of the current epoch only (read, not decoded). The epoch shuffle is a buffered
shuffle (`shuffle_buffer`) of the stored order, which TFDS already shuffled at build time.

The batch holds uint8 images and masks and integer target positions; `targets.prepare_batch`
builds the trainer's float batch on device (see docs/CONTRACTS.md, "Training batch").
"""

import atexit
from collections.abc import Callable, Iterator
import pathlib
import weakref

import cv2
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ehrnet_jax import images as images_lib
from ehrnet_jax.data import annotations, coco_tfds
from ehrnet_jax.data import augment as augment_lib
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import transforms

_SKIP = tfds.decode.SkipDecoding()
_TRAIN_KEYS = ("image", "mask_4", "mask_2", "keypoints_4", "keypoints_2")  # From NumPy.


def load_builder(data_dir: str | pathlib.Path, config: str = "coco") -> coco_tfds.CocoKeypoints:
  """The prepared builder in `data_dir`; a UserError says how to build it when absent."""
  builder = coco_tfds.CocoKeypoints(config=config, data_dir=str(data_dir))
  coco_tfds.check_version(builder)
  if not builder.is_prepared():
    raise UserError(f"{data_dir}: no '{config}' dataset built there; run "
                    f"`ehrnet data --coco-dir ROOT --data-dir {data_dir}` first")
  return builder


def split_of_host(builder, split: str, process_index: int, process_count: int,
                  drop_remainder: bool) -> str:
  """This host's part of `split` (training drops the remainder, evaluation keeps every image)."""
  if split not in builder.info.splits:
    raise UserError(f"split '{split}' not built; available: {', '.join(builder.info.splits)}")
  return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(process index, process count): the given ones, or JAX's when either is None."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # Only when the caller did not say.
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _augment_fn(seed: int, process_index: int, input_size: int, flip_index: tuple[int, ...],
                config: augment_lib.AugmentConfig):
  """The NumPy function mapped over (index, encoded image, mask RLE, keypoints, counts)."""

  def fn(index, encoded_image, mask_rle, keypoints, num_keypoints):
    image = images_lib.decode_image(encoded_image)
    ignore = annotations.decode_mask(mask_rle, image.shape[0], image.shape[1])
    rng = np.random.default_rng((seed, process_index, int(index)))
    params = augment_lib.sample_params(rng, image.shape[0], image.shape[1], config)
    out = augment_lib.augment(image, ignore, keypoints[num_keypoints > 0], params, input_size,
                              flip_index, annotations.MAX_PEOPLE)
    return tuple(out[k] for k in _TRAIN_KEYS)

  return fn


def _train_shapes(input_size: int, num_joints: int) -> dict[str, tuple[tuple[int, ...], tf.DType]]:
  s, p, j = input_size, annotations.MAX_PEOPLE, num_joints
  return {
      "image": ((s, s, 3), tf.uint8),
      "mask_4": ((s // 4, s // 4), tf.uint8),
      "mask_2": ((s // 2, s // 2), tf.uint8),
      "keypoints_4": ((p, j, 3), tf.int32),
      "keypoints_2": ((p, j, 3), tf.int32),
      "image_id": ((), tf.int64),
  }


def endless_batches(records: tf.data.Dataset, example: Callable, *, epoch_size: int,
                    num_devices: int, per_device_batch: int, seed: int, start_step: int,
                    shuffle_buffer: int) -> tf.data.Dataset:
  """Batches `(num_devices, per_device_batch, ...)` of `example(index, record)`, endless.

  Epoch e visits `records` in an order keyed by (seed, e); `index` counts the examples from the
  start of training, so the stream from `start_step` on is the same whether or not the run was
  interrupted (the element's randomness is keyed by `index`).
  """
  host_batch = num_devices * per_device_batch
  start_element = start_step * host_batch
  start_epoch = start_element // epoch_size

  def epoch(e):
    return records.shuffle(min(shuffle_buffer, epoch_size), seed=seed * 1_000_003 + e,
                           reshuffle_each_iteration=False)

  def per_device(batch):
    return {k: tf.reshape(v, (num_devices, per_device_batch) + tuple(v.shape[1:]))
            for k, v in batch.items()}

  ds = (tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
        .flat_map(epoch)
        .enumerate(start=start_epoch * epoch_size)
        .skip(start_element - start_epoch * epoch_size)
        .map(example, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(host_batch, drop_remainder=True)
        .map(per_device)
        .prefetch(tf.data.AUTOTUNE))
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_dataset(data_dir: str | pathlib.Path, *, input_size: int, per_device_batch: int,
                  num_devices: int, seed: int, start_step: int = 0, split: str = "train",
                  config: str = "coco", process_index: int | None = None,
                  process_count: int | None = None, shuffle_buffer: int = 2048,
                  augment_config: augment_lib.AugmentConfig = augment_lib.AugmentConfig()
                  ) -> tf.data.Dataset:
  """Endless augmented training batches of this host, from step `start_step` on.

  Each element is a dict (D devices, B per-device batch, S input size, P = 30, J joints):
    image_id int64 (D, B); image uint8 (D, B, S, S, 3) RGB; mask_4 uint8 (D, B, S/4, S/4) and
    mask_2 (D, B, S/2, S/2), 1 = valid; keypoints_4 / keypoints_2 int32 (D, B, P, J, 3):
    truncated (x, y) at 1/4 and 1/2 of the input and a valid flag.
  """
  if input_size % 4:
    raise UserError(f"input size {input_size} is not a multiple of 4")
  process_index, process_count = process_shard(process_index, process_count)
  builder = load_builder(data_dir, config)
  keypoint_set = builder.builder_config.keypoint_set
  host_split = split_of_host(builder, split, process_index, process_count, drop_remainder=True)
  records = builder.as_dataset(split=host_split, shuffle_files=False,
                               decoders={"image": _SKIP})
  epoch_size = builder.info.splits[host_split].num_examples
  if epoch_size == 0:
    raise UserError(f"{data_dir}: split '{host_split}' has no examples")
  fn = _augment_fn(seed, process_index, input_size, keypoint_set.flip_index, augment_config)
  shapes = _train_shapes(input_size, keypoint_set.num_joints)

  def example(index, record):
    people = record["people"]
    outputs = tf.numpy_function(
        fn, [index, record["image"], record["ignore_mask_rle"], people["keypoints"],
             people["num_keypoints"]], [shapes[k][1] for k in _TRAIN_KEYS], stateful=False)
    for tensor, key in zip(outputs, _TRAIN_KEYS):
      tensor.set_shape(shapes[key][0])
    return {"image_id": record["image_id"], **dict(zip(_TRAIN_KEYS, outputs))}

  return endless_batches(records, example, epoch_size=epoch_size, num_devices=num_devices,
                         per_device_batch=per_device_batch, seed=seed, start_step=start_step,
                         shuffle_buffer=shuffle_buffer)


class NumpyIterator:
  """NumPy elements of a tf.data dataset, released at interpreter exit.

  tf.data threads still running a `numpy_function` while Python shuts down abort the process
  ("terminate called without an active exception", exit 134); closing first avoids that.
  """
  _live: "weakref.WeakSet[NumpyIterator]" = weakref.WeakSet()

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(tfds.as_numpy(dataset))
    NumpyIterator._live.add(self)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._iterator)

  def close(self) -> None:
    self._iterator = iter(())

  @classmethod
  def close_all(cls) -> None:
    for iterator in list(cls._live):
      iterator.close()


atexit.register(NumpyIterator.close_all)


def train_iterator(data_dir: str | pathlib.Path, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """`train_dataset(data_dir, **kwargs)` as NumPy batches ready for `jax.pmap`."""
  cv2.setNumThreads(1)  # tf.data runs the warps in parallel already; no nested thread pools.
  return NumpyIterator(train_dataset(data_dir, **kwargs))


def eval_dataset(data_dir: str | pathlib.Path, *, input_size: int, split: str = "validation",
                 config: str = "coco", process_index: int | None = None,
                 process_count: int | None = None) -> tf.data.Dataset:
  """This host's images one by one, in a fixed order, at their original size.

  Each element: image uint8 (H, W, 3) RGB (read as the reference does), image_id int64,
  height / width int32, and the reference's single-scale test transform: input uint8
  (h', w', 3), the image warped to the network input size; center float64 (2,) and scale
  float64 (2,), with which `augment.affine_matrix(center, scale[0], 0, (w', h'))` maps image to
  input and its inverse maps predictions back.
  """
  process_index, process_count = process_shard(process_index, process_count)
  builder = load_builder(data_dir, config)
  host_split = split_of_host(builder, split, process_index, process_count, drop_remainder=False)
  records = builder.as_dataset(split=host_split, shuffle_files=False, decoders={"image": _SKIP})

  def fn(encoded):
    image = images_lib.decode_image(encoded)
    size = transforms.multi_scale_size(image.shape[1::-1], input_size, 1.0, 1.0)
    warped = transforms.warp_image(image, size)
    return (cv2.cvtColor(image, cv2.COLOR_BGR2RGB), cv2.cvtColor(warped, cv2.COLOR_BGR2RGB),
            np.asarray(size.center, np.float64), np.asarray(size.scale, np.float64))

  def example(record):
    image, warped, center, scale = tf.numpy_function(
        fn, [record["image"]], [tf.uint8, tf.uint8, tf.float64, tf.float64], stateful=False)
    image.set_shape((None, None, 3))
    warped.set_shape((None, None, 3))
    center.set_shape((2,))
    scale.set_shape((2,))
    return {"image": image, "input": warped, "center": center, "scale": scale,
            "image_id": record["image_id"], "height": record["height"],
            "width": record["width"]}

  return records.map(example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_iterator(data_dir: str | pathlib.Path, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """`eval_dataset(data_dir, **kwargs)` as NumPy elements."""
  return NumpyIterator(eval_dataset(data_dir, **kwargs))
