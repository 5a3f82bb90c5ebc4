"""The classification input pipeline on mocked TFDS data and its transforms on known images."""

import numpy as np
import pytest
import tensorflow as tf

from ehrnet_jax.data import classification
from ehrnet_jax.errors import UserError
from support.tiny_classification import mock_classification_tfds

SIZE = 32
NO_CHANGE = classification.CropAugment(area=(1.0, 1.0), aspect=(0.5, 2.0), flip_probability=0.0,
                                       color_jitter=0.0)


@pytest.fixture(scope="module")
def mocked(tmp_path_factory):
  with mock_classification_tfds(tmp_path_factory.mktemp("tfds"), num_examples=6):
    yield


def _batches(builder, start_step, count, seed=0):
  it = classification.train_iterator(builder, input_size=SIZE, batch=2, seed=seed,
                                     start_step=start_step)
  return [next(it) for _ in range(count)]


@pytest.mark.parametrize("name, num_classes", [("imagenet2012", 1000), ("cifar100", 100)])
def test_train_batches_are_flat_and_keyed_by_step(mocked, name, num_classes):
  builder = classification.load_builder(name, manual_dir="/nonexistent")  # Mocked: not read.
  assert classification.split_size(builder, "train", "data.split") == 6
  stream = _batches(builder, start_step=0, count=4)  # 3 steps per epoch: crosses an epoch.
  for batch in stream:
    assert batch["image"].shape == (2, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (2,) and batch["label"].dtype == np.int32
    assert ((0 <= batch["label"]) & (batch["label"] < num_classes)).all()
  # A resumed stream sees the same batches as an uninterrupted one (augmentation included).
  for expected, resumed in zip(stream[2:], _batches(builder, start_step=2, count=2)):
    np.testing.assert_array_equal(resumed["image"], expected["image"])
    np.testing.assert_array_equal(resumed["label"], expected["label"])
  other_seed = _batches(builder, start_step=0, count=1, seed=1)[0]
  assert not np.array_equal(other_seed["image"], stream[0]["image"])


def test_eval_batches_keep_every_image_in_order(mocked):
  builder = classification.load_builder("cifar100")
  batches = list(classification.eval_dataset(builder, input_size=SIZE, batch_size=4,
                                             split="test", crop_fraction=1.0).as_numpy_iterator())
  assert [len(b["label"]) for b in batches] == [4, 2]
  assert batches[0]["image"].shape == (4, SIZE, SIZE, 3)
  # crop fraction 1 at the images' own 32x32: the stored images, unchanged.
  stored = [r["image"] for r in builder.as_dataset(split="test").as_numpy_iterator()]
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), np.stack(stored))
  with pytest.raises(UserError, match="run.eval_split='validation'"):
    classification.eval_dataset(builder, input_size=SIZE, batch_size=4, split="validation")


def test_whole_image_crop_is_identity_and_flip_mirrors():
  image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  key = classification.element_key(0, 0, tf.constant(5, tf.int64))
  same = classification.augment_image(tf.constant(image), key, SIZE, NO_CHANGE).numpy()
  np.testing.assert_array_equal(same, image)
  flipped = classification.augment_image(
      tf.constant(image), key, SIZE,
      classification.CropAugment(area=(1.0, 1.0), aspect=(0.5, 2.0), flip_probability=1.0,
                                 color_jitter=0.0)).numpy()
  np.testing.assert_array_equal(flipped, image[:, ::-1])


def test_random_crops_differ_per_element_and_stay_in_range():
  image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
  crops = [classification.augment_image(
      tf.constant(image), classification.element_key(0, 0, tf.constant(i, tf.int64)), SIZE,
      classification.CropAugment()).numpy() for i in range(3)]
  assert all(c.shape == (SIZE, SIZE, 3) and c.dtype == np.uint8 for c in crops)
  assert not np.array_equal(crops[0], crops[1]) and not np.array_equal(crops[1], crops[2])


def test_adjust_colors_follows_torchvision_formulas():
  image = np.array([[[200.0, 100.0, 50.0], [10.0, 20.0, 250.0]]], np.float32)  # (1, 2, 3)
  out = classification.adjust_colors(tf.constant(image), 1.2, 0.5, 0.0).numpy()
  # Brightness 1.2, clipped to 255.
  bright = np.minimum(image * 1.2, 255.0)  # [[240, 120, 60], [12, 24, 255]]
  # Contrast 0.5 towards the mean grey level (ITU-R 601-2 luma, as torchvision).
  grey = bright @ np.array([0.2989, 0.587, 0.114], np.float32)
  contrasted = 0.5 * bright + 0.5 * grey.mean()
  # Saturation 0: each pixel's own grey level on all channels.
  expected = np.repeat((contrasted @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None],
                       3, axis=-1)
  np.testing.assert_allclose(out, expected, rtol=1e-3)


def test_center_crop_takes_the_middle_after_resizing_the_short_side():
  image = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
  # Short side 16 / 0.5 = 32 is the image's own: no resize; the central 16x16 is [8:24, 16:32].
  crop = classification.center_crop(tf.constant(image), 16, 0.5).numpy()
  np.testing.assert_array_equal(crop, image[8:24, 16:32])
  # 0.875 at 28: short side int(32) -> the same image, crop offset round(2) and round(10).
  np.testing.assert_array_equal(classification.center_crop(tf.constant(image), 28, 0.875),
                                image[2:30, 10:38])
