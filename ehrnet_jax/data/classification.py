"""TFDS classification data for the backbone-only classifier (the paper's Table 2).

Datasets: `imagenet2012` (TFDS manual download: ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in a folder, built once into TFDS's data dir) and `cifar100` (downloaded
by TFDS). `load_builder` builds either on first use.

Training, per host, the scheme of `pipeline.py`: records of this host's shard -> per epoch e a
shuffle seeded by (seed, e) -> element index -> skip to the start step -> decode + augment in
parallel -> flat batches of this host's share of the global batch -> prefetch.
Every random draw comes from stateless TF ops keyed by (seed, process index, element index), so
a batch depends only on the seed and its step: identical across runs and after a resume.

Augmentation, torchvision's ImageNet recipe in TF ops:
- RandomResizedCrop: a crop of 8-100% of the image's area with aspect (w/h) 3/4-4/3, resized
  (bilinear, antialiased) to the input size. TF's `sample_distorted_bounding_box` draws the
  aspect uniformly (torchvision: log-uniformly) and falls back to the whole image after 10
  failed attempts (torchvision: a central crop).
- horizontal flip;
- ColorJitter brightness, contrast and saturation, each factor uniform in [1 - j, 1 + j] and
  applied in this fixed order (torchvision shuffles the order per image).
CIFAR-100's 32x32 images take the same path, so they are upsampled to the variant's input size
(Table 2: 224 ... 128): the classifier trains on CIFAR at the same resolution as on ImageNet,
and its parameter count depends only on the number of classes.

Evaluation: the shorter side resized to `input_size / crop_fraction` (truncated, as
torchvision's `Resize(int)`), then the central `input_size` square (0.875: 256 -> 224).

Both yield uint8 RGB images and int32 labels; ImageNet normalisation happens on device
(`ehrnet_jax.images.normalize`).
"""

import dataclasses
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ehrnet_jax.data import pipeline
from ehrnet_jax.errors import UserError

_SKIP = tfds.decode.SkipDecoding()
_WHOLE_IMAGE = ((0.0, 0.0, 1.0, 1.0),)  # The crop sampler's box (ymin, xmin, ymax, xmax).


@dataclasses.dataclass(frozen=True)
class CropAugment:
  """The training augmentation's parameters (ehrnet_jax.config.DataConfig documents them)."""
  area: tuple[float, float] = (0.08, 1.0)
  aspect: tuple[float, float] = (3 / 4, 4 / 3)
  flip_probability: float = 0.5
  color_jitter: float = 0.4


def load_builder(name: str, data_dir: str = "", manual_dir: str = "") -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name` in `data_dir` ("" = TFDS's default), prepared on first use.

  `manual_dir` holds imagenet2012's tar files; cifar100 downloads itself.
  """
  builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except AssertionError as error:  # TFDS asserts that the manual files are there.
    raise UserError(f"data.manual_dir={manual_dir or ''!r}: {name} is not built in "
                    f"{builder.data_dir} and needs its manual download there ({error})") from None
  return builder


def split_size(builder: tfds.core.DatasetBuilder, split: str, field: str) -> int:
  """Examples in `split` (TFDS syntax, e.g. "train[:10%]"); UserError naming `field` if absent."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    raise UserError(f"{field}={split!r}: not a split of {builder.name} (splits: "
                    f"{', '.join(builder.info.splits) or 'none built'})") from None


def element_key(seed: int, process_index: int, index: tf.Tensor) -> tf.Tensor:
  """The stateless (2,) int64 seed of training element `index` of this process."""
  base = tf.constant([seed, process_index], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def adjust_colors(image: tf.Tensor, brightness: tf.Tensor, contrast: tf.Tensor,
                  saturation: tf.Tensor) -> tf.Tensor:
  """torchvision's adjust_brightness, _contrast, _saturation in turn, on float (h, w, 3) in
  [0, 255]: each blends the image with black, its mean grey level, its greyscale version, by
  `factor * image + (1 - factor) * other`, clipped to [0, 255]."""
  def blend(x, other, factor):
    return tf.clip_by_value(factor * x + (1.0 - factor) * other, 0.0, 255.0)

  image = blend(image, 0.0, brightness)
  image = blend(image, tf.reduce_mean(tf.image.rgb_to_grayscale(image)), contrast)
  return blend(image, tf.image.rgb_to_grayscale(image), saturation)


def augment_image(image: tf.Tensor, key: tf.Tensor, input_size: int,
                  augment: CropAugment) -> tf.Tensor:
  """uint8 (h, w, 3) -> uint8 (input_size, input_size, 3): random-resized crop, flip, colours."""
  crop_key, flip_key, color_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.constant([_WHOLE_IMAGE], tf.float32), seed=crop_key,
      min_object_covered=0.0, aspect_ratio_range=augment.aspect, area_range=augment.area,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, size)
  crop.set_shape((None, None, 3))  # tf.slice forgets the channels.
  crop = tf.image.resize(crop, (input_size, input_size), method="bilinear",
                         antialias=True)  # float32 (S, S, 3)
  flip = tf.random.stateless_uniform((), flip_key) < augment.flip_probability
  crop = tf.where(flip, tf.reverse(crop, axis=[1]), crop)
  jitter = augment.color_jitter
  factors = tf.random.stateless_uniform((3,), color_key, max(0.0, 1.0 - jitter), 1.0 + jitter)
  return _to_uint8(adjust_colors(crop, *tf.unstack(factors)))


def center_crop(image: tf.Tensor, input_size: int, crop_fraction: float) -> tf.Tensor:
  """uint8 (h, w, 3) -> uint8 (input_size, input_size, 3): the evaluation transform."""
  shape = tf.cast(tf.shape(image)[:2], tf.float64)
  short_side = int(input_size / crop_fraction)
  resized_shape = tf.cast(shape * short_side / tf.reduce_min(shape), tf.int32)
  resized = tf.image.resize(image, resized_shape, method="bilinear", antialias=True)
  top, left = tf.unstack(tf.cast(tf.round((resized_shape - input_size) / 2), tf.int32))
  return _to_uint8(tf.image.crop_to_bounding_box(resized, top, left, input_size, input_size))


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _decode(encoded: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)  # JPEG or PNG


def train_dataset(builder: tfds.core.DatasetBuilder, *, input_size: int, batch: int,
                  seed: int, start_step: int = 0, split: str = "train",
                  process_index: int | None = None, process_count: int | None = None,
                  shuffle_buffer: int = 2048, augment: CropAugment = CropAugment()
                  ) -> tf.data.Dataset:
  """Endless augmented training batches of this host, from step `start_step` on.

  Each element (B = `batch`, this host's share of the global batch; S input size): image uint8
  (B, S, S, 3) RGB, label int32 (B,).
  """
  process_index, process_count = pipeline.process_shard(process_index, process_count)
  host_split = pipeline.split_of_host(builder, split, process_index, process_count,
                                      drop_remainder=True)
  records = builder.as_dataset(split=host_split, shuffle_files=False, decoders={"image": _SKIP})
  epoch_size = builder.info.splits[host_split].num_examples
  if epoch_size == 0:
    raise UserError(f"data.split={split!r}: this host's share of {builder.name} is empty")
  def example(index, record):
    image = augment_image(_decode(record["image"]), element_key(seed, process_index, index),
                          input_size, augment)
    return {"image": image, "label": tf.cast(record["label"], tf.int32)}

  batches = pipeline.endless_batches(records, example, epoch_size=epoch_size, num_devices=1,
                                     per_device_batch=batch, seed=seed, start_step=start_step,
                                     shuffle_buffer=shuffle_buffer)
  return batches.map(lambda element: {k: v[0] for k, v in element.items()})  # (1, B) -> (B)


def train_iterator(builder: tfds.core.DatasetBuilder,
                   **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """`train_dataset(builder, **kwargs)` as NumPy batches (the loop makes them global arrays)."""
  return pipeline.NumpyIterator(train_dataset(builder, **kwargs))


def eval_dataset(builder: tfds.core.DatasetBuilder, *, input_size: int, batch_size: int,
                 split: str = "validation", crop_fraction: float = 0.875,
                 max_images: int = 0) -> tf.data.Dataset:
  """Batches of `split` in its stored order (the last one smaller): image uint8
  (N, S, S, 3) centre crops, label int32 (N,); the first `max_images` only when > 0."""
  split_size(builder, split, "run.eval_split")
  records = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": _SKIP})
  if max_images > 0:
    records = records.take(max_images)

  def example(record):
    return {"image": center_crop(_decode(record["image"]), input_size, crop_fraction),
            "label": tf.cast(record["label"], tf.int32)}

  return (records.map(example, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
