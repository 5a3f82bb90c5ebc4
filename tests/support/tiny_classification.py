"""Helpers for the classification tests: mocked TFDS classification datasets and a tiny
classifier.

`mock_classification_tfds` runs `tfds.testing.mock_data` with real-looking metadata for
imagenet2012 and cifar100 (their features and class counts from TFDS's code, splits of
`num_examples` each, written to a temporary folder), so that builders report split sizes as
after `download_and_prepare` (which the mock turns into a no-op), and examples are random
images (imagenet2012: small random sizes; cifar100: 32x32) with random labels.

`TinyClassifier` has what the trainer relies on in `EfficientNetClassifier` (a `backbone`
collection with batch norm and drop-connect, dropout, logits) at a compile cost of about a
second instead of a minute and a half on 2 CPU cores.
"""

import contextlib
import pathlib

import flax.linen as nn
import tensorflow_datasets as tfds

from support.tiny_pose import TinyBackbone

SPLITS = {"imagenet2012": ("train", "validation"), "cifar100": ("train", "test")}


def _write_metadata(directory: pathlib.Path, num_examples: int) -> None:
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):
    for name, splits in SPLITS.items():
      builder = tfds.builder(name)
      builder.info.set_splits(tfds.core.SplitDict([
          tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0,
                              filename_template=tfds.core.ShardedFileTemplate(
                                  data_dir=directory, dataset_name=name, split=split,
                                  filetype_suffix="tfrecord"))
          for split in splits]))
      version_dir = directory / name / str(builder.version)
      version_dir.mkdir(parents=True, exist_ok=True)
      builder.info.write_to_directory(version_dir)


@contextlib.contextmanager
def mock_classification_tfds(directory: pathlib.Path, num_examples: int):
  """TFDS mocked with `num_examples` random examples in every split of both datasets."""
  _write_metadata(directory, num_examples)
  with tfds.testing.mock_data(num_examples=num_examples, data_dir=str(directory),
                              policy=tfds.testing.MockPolicy.USE_FILES):
    yield


class TinyClassifier(nn.Module):
  """Conv-BN backbone with drop-connect, global average pool, dropout, linear classifier."""
  num_classes: int

  @nn.compact
  def __call__(self, images, train):
    x = TinyBackbone(name="backbone")(images, train).mean(axis=(1, 2))  # (B, 8)
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="classifier")(x)
