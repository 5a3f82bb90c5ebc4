"""The COCO training input: a Grain pipeline over the array_record build, without TensorFlow.

Records come from `tfds.data_source` (random access; TFDS's TF-less mode, image bytes left
undecoded); decoding and augmentation are the reference's, in OpenCV (`augment.py`), run as
Grain map transforms in `workers` worker processes (0: threads of the training process).

The stream is a pure function of the seed and the step (the determinism contract):
  global example k of step s, row r:  k = s * G + r            (G the global batch)
  its record:                         permutation(seed, k // N)[k % N]    (N the split size:
                                      a full shuffle of every epoch)
  its augmentation:                   keyed by (seed, k)
  process p of n reads rows [p * b, (p + 1) * b) of every global batch (b = G / n).
So the global batch of step s does not depend on the number of processes or workers, a process
of a 2-process run sees exactly its rows of the 1-process batches, and an iterator started at
step s yields what an uninterrupted one yields from there (random access: nothing is skipped).

`train_iterator` returns a `TrainBatches`, a Grain `DatasetIterator` whose state, the next step
(with the seed and global batch it belongs to), is what a training checkpoint saves: it does not
depend on the number of workers, so a run may resume with another `data.workers`.

A batch holds uint8 images and masks and integer target positions (host-local, flat: leading
dim b); `targets.prepare_batch` builds the trainer's float batch on device.
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import flags
import cv2
import grain
import numpy as np

from ehrnet_jax import images as images_lib
from ehrnet_jax.data import annotations
from ehrnet_jax.data import augment as augment_lib
from ehrnet_jax.errors import UserError

Batch = dict[str, np.ndarray]
_STEPS = 2**40  # Steps of the (practically endless) stream.
_PERMUTATION, _AUGMENTATION = 0, 1  # Separate random streams of one seed.


@dataclasses.dataclass(frozen=True)
class Stream:
  """Which examples each row of each step reads: the determinism contract's numbers."""
  seed: int
  global_batch: int  # G, all processes.
  num_records: int  # N, the split's size.
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise UserError(f"global batch {self.global_batch} is not divisible by the "
                      f"{self.process_count} processes")
    if self.num_records <= 0:
      raise UserError("the training split has no examples")

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def example(self, local_index: int) -> int:
    """Global example k of this process's `local_index`-th example (step-major)."""
    step, row = divmod(local_index, self.local_batch)
    return step * self.global_batch + self.process_index * self.local_batch + row

  def record(self, example: int) -> int:
    """Index in the split of global example `example`."""
    epoch, position = divmod(example, self.num_records)
    return int(epoch_order(self.seed, epoch, self.num_records)[position])


@functools.lru_cache(maxsize=2)  # The epochs of one batch: at most two.
def epoch_order(seed: int, epoch: int, num_records: int) -> np.ndarray:
  """(N,) the records of `epoch` in the order training visits them."""
  return np.random.default_rng([seed, _PERMUTATION, epoch]).permutation(num_records)


def augmentation_rng(seed: int, example: int) -> np.random.Generator:
  """The random draws of global example `example`'s augmentation."""
  return np.random.default_rng([seed, _AUGMENTATION, example])


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """What the host part of target building needs besides the record."""
  input_size: int
  flip_index: tuple[int, ...]
  config: augment_lib.AugmentConfig = augment_lib.AugmentConfig()


def augmented_example(record: dict[str, Any], rng: np.random.Generator,
                      augmentation: Augmentation) -> dict[str, np.ndarray]:
  """One training example from a data-source record: decode, ignore mask, random affine + flip.

  Returns image uint8 (S, S, 3) RGB; mask_4, mask_2 uint8; keypoints_4, keypoints_2 int32
  (P, J, 3); image_id int64 ().
  """
  image = images_lib.decode_image(record["image"])
  ignore = annotations.decode_mask(record["ignore_mask_rle"], image.shape[0], image.shape[1])
  num_joints = len(augmentation.flip_index)
  people = record["people"]
  keypoints = np.asarray(people["keypoints"], np.float32).reshape(-1, num_joints, 3)
  with_keypoints = np.asarray(people["num_keypoints"], np.int32).reshape(-1) > 0
  params = augment_lib.sample_params(rng, image.shape[0], image.shape[1], augmentation.config)
  out = augment_lib.augment(image, ignore, keypoints[with_keypoints], params,
                            augmentation.input_size, augmentation.flip_index,
                            annotations.MAX_PEOPLE)
  return {**out, "image_id": np.int64(record["image_id"])}


@dataclasses.dataclass(frozen=True)
class _Example:
  """The Grain map transform: this process's local example index -> augmented example."""
  source: Sequence[dict[str, Any]]
  stream: Stream
  augmentation: Augmentation

  def __call__(self, local_index: int) -> dict[str, np.ndarray]:
    k = self.stream.example(local_index)
    return augmented_example(self.source[self.stream.record(k)],
                             augmentation_rng(self.stream.seed, k), self.augmentation)


def train_dataset(source: Sequence[dict[str, Any]], stream: Stream,
                  augmentation: Augmentation) -> grain.MapDataset:
  """Element s: this process's batch of step s, a dict with leading dim b (S input size,
  P = 30, J joints): image uint8 (b, S, S, 3) RGB; mask_4 uint8 (b, S/4, S/4) and mask_2
  (b, S/2, S/2), 1 = valid; keypoints_4 / keypoints_2 int32 (b, P, J, 3): truncated (x, y) at
  1/4 and 1/2 of the input and a valid flag; image_id int64 (b,)."""
  if augmentation.input_size % 4:
    raise UserError(f"input size {augmentation.input_size} is not a multiple of 4")
  return (grain.MapDataset.range(_STEPS * stream.local_batch)
          .map(_Example(source, stream, augmentation))
          .batch(stream.local_batch, drop_remainder=True))


def _single_threaded_opencv(*_) -> None:
  """Grain's workers (and the threads) already run images in parallel: no nested pools."""
  cv2.setNumThreads(1)


def batch_iterator(dataset: grain.MapDataset, start_step: int, workers: int) -> Iterator[Batch]:
  """The batches of steps start_step, start_step + 1, ... of `train_dataset`'s `dataset`.

  Each batch is computed whole by one reader: with `workers` > 0 in worker processes (one
  thread each, batches round-robin), else by as many threads of this process as it has CPUs
  (OpenCV's decode and warps release the GIL).
  """
  if workers < 0:
    raise UserError(f"data.workers={workers}: expected 0 (threads of the training process) or "
                    f"a number of worker processes")
  _single_threaded_opencv()
  if workers and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain reads its absl flags (their defaults) to start workers.
  threads = 1 if workers else max(1, len(os.sched_getaffinity(0)))
  return (dataset[start_step:]
          .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads))
          .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                    per_worker_buffer_size=2),
                       worker_init_fn=_single_threaded_opencv)
          .__iter__())


class TrainBatches(grain.DatasetIterator):
  """Endless batches from a start step; the state is the next step, so restoring a state
  (`set_state`) and starting at that step give the same stream.

  `make(step)` returns an iterator over the batches from `step` on; it is called lazily (at the
  first batch after construction or `set_state`), so a restore right after construction starts
  the workers once.
  """

  def __init__(self, make: Callable[[int], Iterator[Batch]], start_step: int,
               identity: dict[str, int]):
    super().__init__()
    self._make, self._identity = make, dict(identity)
    self._step, self._batches = start_step, None

  def __next__(self) -> Batch:
    if self._batches is None:
      self._batches = self._make(self._step)
    batch = next(self._batches)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    """{"step": the step of the next batch, and the seed and global batch of the stream}."""
    return {"step": self._step, **self._identity}

  def set_state(self, state: dict[str, int]) -> None:
    saved = {k: state.get(k) for k in self._identity}
    if saved != self._identity:
      raise UserError(f"the checkpoint's input stream has {saved}, this run {self._identity}: "
                      f"resume with the same train.seed and data batch, or use another --workdir")
    self._close_batches()
    self._step = int(state["step"])

  def close(self) -> None:
    self._close_batches()
    super().close()

  def _close_batches(self) -> None:
    if self._batches is not None and hasattr(self._batches, "close"):
      self._batches.close()
    self._batches = None


def train_iterator(source: Sequence[dict[str, Any]], stream: Stream, augmentation: Augmentation,
                   *, start_step: int = 0, workers: int = 0) -> TrainBatches:
  """Endless batches of `train_dataset(source, stream, augmentation)` from `start_step` on."""
  dataset = train_dataset(source, stream, augmentation)
  return TrainBatches(lambda step: batch_iterator(dataset, step, workers), start_step,
                      {"seed": stream.seed, "global_batch": stream.global_batch})


def open_split(builder, split: str, field: str = "data.split") -> Sequence[dict[str, Any]]:
  """The records of `split` of a prepared `coco_tfds` build, image bytes undecoded (random
  access, no TensorFlow); a UserError naming `field` when the split was not built."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # Not in workers.
  if split not in builder.info.splits:
    raise UserError(f"{field}={split!r}: not built (built splits: "
                    f"{', '.join(builder.info.splits)})")
  return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
